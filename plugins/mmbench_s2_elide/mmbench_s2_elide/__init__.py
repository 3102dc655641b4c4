"""Policy ``s2-elide``: arm64 teardown without CMOs and with one TLBI VMALL."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.notifier import KvmGfnRange
from mmbench.model.region.mmu import RegionMmu


class S2Elide:
    """ "KVM: arm/arm64: Help VMs dying quicker" (Marc Zyngier, 2019, seed 003): when the
    whole stage-2 goes away (``kvm_arch_flush_shadow_all``) no page needs cleaning to the
    PoC and no IPA needs its own TLBI: unmap without CMO or per-IPA TLBI, then one
    ``TLBI VMALLS12E1IS`` for the VMID.

    On the MMU-notifier path, patch 7 ("KVM: arm/arm64: Elide CMOs when unmapping a
    range") skips the CMO when ``range->event == MMU_NOTIFY_UNMAP``: the VMA goes away,
    so no non-coherent device will read the page back; patches 1-3 ("KVM: Pass
    mmu_notifier_range down to kvm_unmap_hva_range()", "Pass flags along Stage-2
    unmapping functions", "Condition cache maintenance on unmap with a flag") carry the
    event down as ``KVM_UNMAP_ELIDE_CMO``. Every other event (``MADV_DONTNEED``'s clear,
    migration, mprotect) still cleans to the PoC, and each IPA still gets its TLBI. The
    series was posted in 2019 (seed 003) and not merged in that form: mainline took only
    the blockable flag of patch 1 (5.9) and avoids the CMO with FWB instead.
    """

    name = "s2-elide"
    year = 2019  # seed 003
    description = "arm64 teardown without CMO, one TLBI VMALL (seed 003)"
    archs = ("arm64",)
    options = {}
    paths = ("teardown", "mmu-notifier")

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_range(0, mmu.nr_regions, lock_break=True, cmo=False, tlbi_per_ipa=False)
            mmu.tlbi_vmall()
            mmu.free_tables()
        return True

    @hookimpl
    def mmbench_unmap_gfn_range(self, kvm: Kvm[RegionMmu], range: KvmGfnRange) -> bool:
        elide_cmo = range.event == "unmap"  # MMU_NOTIFY_UNMAP
        return kvm.mmu.kvm_unmap_gfn_range(
            range.start, range.end, range.may_block, cmo=not elide_cmo, tlbi_per_ipa=True
        )


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(S2Elide)
