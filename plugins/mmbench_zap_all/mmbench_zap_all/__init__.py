"""Policy ``zap-all``: kvm_mmu_zap_all on memslot delete, optionally with lock-break."""

from mmbench.hookspecs import hookimpl


class ZapAll:
    """Legacy ``kvm_mmu_zap_all`` on memslot delete: the "big hammer" (before 2013).

    Models ``kvm_arch_flush_shadow_memslot() -> kvm_mmu_zap_all()``: walk
    ``active_mmu_pages`` and zap every sp under mmu_lock, roots in use becoming invalid and
    their vCPUs reloading. ``lock_break=true`` models "KVM: x86/mmu: Voluntarily reschedule as
    needed when zapping all sptes" (Sean Christopherson, 2019, in "Remove fast invalidate
    mechanism"): drop mmu_lock when someone waits and restart the walk from the list head,
    which also meets the sps vCPUs built meanwhile.
    """

    name = "zap-all"
    archs = ("x86-shadow",)
    options = {"lock_break": False}

    def __init__(self, lock_break: bool = False) -> None:
        self.lock_break = lock_break

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_pages(
                mmu.active_mmu_pages(), lock_break=self.lock_break, rescan=mmu.created_since
            )
            mmu.commit_zap_page()
        return True


@hookimpl
def mmbench_register_policies(register):
    register(ZapAll)
