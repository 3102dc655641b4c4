"""Policy ``s2-unmap``: arm64 stage-2 teardown with per-page CMO and per-IPA TLBI."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.notifier import KvmGfnRange
from mmbench.model.region.mmu import RegionMmu


class S2Unmap:
    """arm64 teardown before "KVM: arm/arm64: Help VMs dying quicker" (2019):
    ``kvm_free_stage2_pgd -> unmap_stage2_range(0, KVM_PHYS_SIZE)``, cleaning every mapped
    page to the PoC (``kvm_flush_dcache_pte/pmd``) and invalidating each IPA
    (``kvm_tlb_flush_vmid_ipa``), with ``cond_resched_lock`` between blocks.

    This is also the arm64 arch's default teardown (``Arm64.mmbench_flush_shadow_all``):
    both call the model's ``RegionMmu.kvm_free_stage2_pgd``; the policy names the
    baseline so it can be selected, compared and swept like the series that replaced it.

    On the MMU-notifier path (``kvm_unmap_hva_range`` then, ``kvm_unmap_gfn_range`` now)
    every invalidation, whatever its event, unmaps with ``kvm_flush_dcache_pte`` per
    page and a TLBI per IPA (``unmap_stage2_range``); mainline still does on a CPU
    without FWB. The arm64 arch's default for that path too.
    """

    name = "s2-unmap"
    year = 2013  # arm64 stage-2 unmap since KVM/arm's merge
    description = "arm64 teardown with per-page CMO and per-IPA TLBI (before 2019)"
    archs = ("arm64",)
    options = {}
    paths = ("teardown", "mmu-notifier")

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        with kvm.mmu_lock:
            kvm.mmu.kvm_free_stage2_pgd()
        return True

    @hookimpl
    def mmbench_unmap_gfn_range(self, kvm: Kvm[RegionMmu], range: KvmGfnRange) -> bool:
        return kvm.mmu.kvm_unmap_gfn_range(
            range.start, range.end, range.may_block, cmo=True, tlbi_per_ipa=True
        )


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(S2Unmap)
