"""Policy ``zap-all``: kvm_mmu_zap_all on memslot delete, optionally with lock-break."""

from mmbench import hookimpl


class ZapAll:
    """Legacy ``kvm_mmu_zap_all`` on memslot delete: the "big hammer" (before 2013).

    Models ``kvm_arch_flush_shadow_memslot() -> kvm_mmu_zap_all()``: walk
    ``active_mmu_pages`` and zap every sp under mmu_lock, roots in use becoming invalid and
    their vCPUs reloading. ``lock_break=true`` models "KVM: x86/mmu: Voluntarily reschedule as
    needed when zapping all sptes" (Sean Christopherson, 2019, in "Remove fast invalidate
    mechanism"): drop mmu_lock when someone waits and restart the walk from the list head,
    which also meets the sps vCPUs built meanwhile.

    On VM teardown (``kvm_arch_flush_shadow_all``) the same zap frees everything; on
    ``x86-tdp`` it is ``kvm_tdp_mmu_zap_all``.
    """

    name = "zap-all"
    year = 2008  # kvm_mmu_zap_all on memslot removal, 2008
    archs = ("x86-shadow", "x86-tdp")
    options = {"lock_break": False}

    def __init__(self, lock_break: bool = False) -> None:
        self.lock_break = lock_break

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        with kvm.mmu_lock:
            kvm.mmu.kvm_mmu_zap_all(lock_break=self.lock_break)
        return True

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm):
        with kvm.mmu_lock:
            kvm.mmu.kvm_mmu_zap_all(lock_break=self.lock_break)
        return True


@hookimpl
def mmbench_register_policies(register):
    register(ZapAll)
