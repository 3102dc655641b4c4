"""Policy ``s2-unmap``: arm64 stage-2 teardown with per-page CMO and per-IPA TLBI."""

from mmbench import hookimpl


class S2Unmap:
    """arm64 teardown before "KVM: arm/arm64: Help VMs dying quicker" (2019):
    ``kvm_free_stage2_pgd -> unmap_stage2_range(0, KVM_PHYS_SIZE)``, cleaning every mapped
    page to the PoC (``kvm_flush_dcache_pte/pmd``) and invalidating each IPA
    (``kvm_tlb_flush_vmid_ipa``), with ``cond_resched_lock`` between blocks."""

    name = "s2-unmap"
    year = 2013  # arm64 stage-2 unmap since KVM/arm's merge
    description = "arm64 teardown with per-page CMO and per-IPA TLBI (before 2019)"
    archs = ("arm64",)
    options = {}

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm):
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_range(0, mmu.nr_regions, lock_break=True, cmo=True, tlbi_per_ipa=True)
            mmu.free_tables()
        return True


@hookimpl
def mmbench_register_policies(register):
    register(S2Unmap)
