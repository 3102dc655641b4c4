"""Policy ``s2-elide``: arm64 teardown without CMOs and with one TLBI VMALL."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.region.mmu import RegionMmu


class S2Elide:
    """ "KVM: arm/arm64: Help VMs dying quicker" (Marc Zyngier, 2019, seed 003): when the
    whole stage-2 goes away (``kvm_arch_flush_shadow_all``) no page needs cleaning to the
    PoC and no IPA needs its own TLBI: unmap without CMO or per-IPA TLBI, then one
    ``TLBI VMALLS12E1IS`` for the VMID."""

    name = "s2-elide"
    year = 2019  # seed 003
    description = "arm64 teardown without CMO, one TLBI VMALL (seed 003)"
    archs = ("arm64",)
    options = {}

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_range(0, mmu.nr_regions, lock_break=True, cmo=False, tlbi_per_ipa=False)
            mmu.tlbi_vmall()
            mmu.free_tables()
        return True


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(S2Elide)
