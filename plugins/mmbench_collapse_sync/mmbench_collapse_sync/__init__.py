"""Policy ``collapse-sync``: zap collapsible sptes synchronously on dirty-log stop."""

from mmbench import hookimpl


class CollapseSync:
    """``kvm_mmu_zap_collapsible_sptes`` under mmu_lock when logging stops (the 2018
    baseline of seed 002: "KVM: MMU: Introduce single thread to zap collapsible sptes").

    ``KVM_SET_USER_MEMORY_REGION`` does not return until every 4 KiB table that a huge
    page could replace is zapped; vCPUs that fault meanwhile spin on mmu_lock and then
    refault 2 MiB leaves. ``lock_break=true`` yields when someone waits (later kernels).
    """

    name = "collapse-sync"
    year = 2015  # kvm_mmu_zap_collapsible_sptes, 2015
    description = "zap collapsible sptes under mmu_lock on dirty-log stop (2018 baseline)"
    archs = ("x86-tdp", "x86-shadow")  # x86-shadow: on --backend kvm (tdp_mmu=N)
    options = {"lock_break": False}

    def __init__(self, lock_break: bool = False) -> None:
        self.lock_break = lock_break

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm, slot):
        with kvm.mmu_lock:
            kvm.mmu.zap_collapsible_sptes(slot, lock_break=self.lock_break)
        return True


@hookimpl
def mmbench_register_policies(register):
    register(CollapseSync)
