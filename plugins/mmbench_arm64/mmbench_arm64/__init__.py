"""Arch backend ``arm64``: stage-2 page tables (non-VHE), with CMO and TLBI costs.

Like the TDP MMU, one radix tree per VM maps IPA to host memory, with 4 KiB pages and
2 MiB blocks where the backing allows. Unmapping a page may need cache maintenance
(``DC CIVAC`` to the PoC, cost per byte) and a ``TLBI IPAS2E1IS`` per IPA; a whole-VM
invalidation is one ``TLBI VMALLS12E1IS``. TLB maintenance is broadcast in hardware, so a
remote flush kicks no vCPU.
"""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.notifier import KvmGfnRange
from mmbench.model.region.arch import RegionArch
from mmbench.model.region.mmu import RegionMmu
from mmbench_arm64.costs import ARM64_STAGE2


class Arm64(RegionArch):
    """arm64 stage-2: unmap with or without CMO, per-IPA TLBI or one TLBI VMALL."""

    name = "arm64"
    description = "arm64 stage-2 (non-VHE): 4 KiB pages / 2 MiB blocks, CMO and TLBI costs"
    costs = ARM64_STAGE2
    flush_ipis = False

    @hookimpl(trylast=True)
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        """``kvm_arch_flush_shadow_memslot`` -> ``unmap_stage2_range`` (CMO + TLBI)."""
        with kvm.mmu_lock:
            kvm.mmu.zap_slot(slot, lock_break=True, cmo=True, tlbi_per_ipa=True)
        return True

    @hookimpl(trylast=True)
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        """Before the series: ``kvm_free_stage2_pgd`` unmaps everything with CMO + TLBI.
        The same code as the ``s2-unmap`` policy, which names this baseline."""
        with kvm.mmu_lock:
            kvm.mmu.kvm_free_stage2_pgd()
        return True

    @hookimpl(trylast=True)
    def mmbench_unmap_gfn_range(self, kvm: Kvm[RegionMmu], range: KvmGfnRange) -> bool:
        """arm64 ``kvm_unmap_gfn_range`` -> ``__unmap_stage2_range``: CMO and a TLBI per
        IPA whatever the notifier's event, as mainline on a CPU without FWB (the same
        code as the ``s2-unmap`` policy)."""
        return kvm.mmu.kvm_unmap_gfn_range(
            range.start, range.end, range.may_block, cmo=True, tlbi_per_ipa=True
        )

    @hookimpl(trylast=True)
    def mmbench_dirty_log_enable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        kvm.mmu.enable_dirty_logging(slot)
        return True

    @hookimpl(trylast=True)
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        """arm64 of the seeds' era does nothing when logging stops: the 4 KiB mappings
        stay until something unmaps them (no collapse policy exists here yet)."""
        return True


@hookimpl
def mmbench_register_archs(register: Callable[[type], None]) -> None:
    register(Arm64)
