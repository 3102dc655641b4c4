"""Policy ``recover-in-place``: install huge sptes over 4 KiB tables on dirty-log stop."""

from mmbench import hookimpl


class RecoverInPlace:
    """ "KVM: x86/mmu: Recover TDP MMU huge page mappings in-place instead of zapping"
    (David Matlack, 2024, merged for 6.13): ``kvm_tdp_mmu_recover_huge_pages``.

    Each 4 KiB table that a huge page could replace becomes a 2 MiB leaf built from one of
    its children; the table is freed. Nothing is zapped, so the guest never refaults.
    Yields mmu_lock when someone waits.
    """

    name = "recover-in-place"
    year = 2022  # in-place huge page recovery in the TDP MMU, 2022
    description = "install huge sptes over 4 KiB tables in place, no refault (6.13)"
    archs = ("x86-tdp",)
    options = {}

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm, slot):
        with kvm.mmu_lock:
            kvm.mmu.recover_huge_pages(slot, lock_break=True)
        return True


@hookimpl
def mmbench_register_policies(register):
    register(RecoverInPlace)
