"""Monitor ``invariants``: the correctness oracle, checked after every invalidation.

Each MMU family states its own invariants (``mmbench.model.shadow.invariants``,
``RegionMmu.check_invariants``); this monitor runs them after every memslot delete or
move, MMU-notifier invalidation (host unmap: nothing maps the range any more),
dirty-logging change, dirty-log clear, reclaim at ``n_max_mmu_pages`` and teardown,
and after every shadow fault batch (no more sps live than ``n_max_mmu_pages``); and
whenever mmu_lock is dropped (a lock-break or the unlock), that no zapped spte is left
unflushed.
"""

from __future__ import annotations

from mmbench.errors import InvariantViolation
from mmbench.host.hookspecs import hookimpl
from mmbench.model.memslots import KVM_MEM_LOG_DIRTY_PAGES


def check_mmu(kvm, when: str, gfns: tuple[int, int] | None = None) -> None:
    """The arch MMU's own oracle; it may check only the ``gfns`` an operation touched."""
    kvm.mmu.check_invariants(when, *(gfns or ()))


def check_lock_release(kvm) -> None:
    """Who drops mmu_lock (lock-break or unlock) flushes the leaf sptes it zapped first,
    while a vCPU can run.

    The thread that takes mmu_lock next finds them non-present, has nothing to flush, and
    may return (an MMU-notifier unmap, then the host frees the page) while a vCPU's TLB
    still maps it: hence ``slot_handle_level_range`` flushes before ``cond_resched_lock``
    when ``flush_on_yield``, ``tdp_mmu_iter_cond_resched`` before yielding ("KVM:
    x86/mmu: Ensure TLBs are flushed when yielding during GFN range zap", 5.13), and
    ``__kvm_handle_hva_range`` before ``KVM_MMU_UNLOCK``. Write-protection is exempt
    (``kvm_mmu_slot_remove_write_access`` flushes after the unlock: a stale writable
    entry only delays dirty logging until that flush). Sps the
    zapper unlinked onto its own ``invalid_list`` (``kvm_mmu_zap_all``,
    ``kvm_zap_obsolete_pages``) are flushed by ``kvm_mmu_commit_zap_page`` before they
    are freed, which the end-of-invalidation checks cover; with no vCPU left to run
    (teardown) no TLB can hold anything.
    """
    if not kvm.mmu.zapped_unflushed:
        return
    running = [v.id for v in kvm.vcpus if v.actor is not None and not v.actor.done]
    if running:
        raise InvariantViolation(
            "mmu_lock dropped with zapped sptes not yet flushed while vcpu"
            f" {running[0]} can run: flush remote TLBs before a lock-break or unlock"
        )


class Invariants:
    """Raises ``InvariantViolation`` the moment a policy leaves a stale mapping behind."""

    name = "invariants"
    description = "correctness oracle: no stale spte, sp or root after an invalidation"

    def __init__(self) -> None:
        self.checks = 0
        self.fault_checks = 0
        self.release_checks = 0

    @hookimpl
    def mmbench_vm_created(self, kvm):
        kvm.mmu_lock.before_release.append(lambda: self._check_release(kvm))

    def _check_release(self, kvm) -> None:
        check_lock_release(kvm)
        self.release_checks += 1

    @hookimpl
    def mmbench_memslot_deleted(self, kvm, slot, change):
        check_mmu(kvm, f"memslot {change} of {slot}")
        self.checks += 1

    @hookimpl
    def mmbench_memslot_flags_changed(self, kvm, slot, old):
        """After dirty logging starts or stops: no writable spte maps an unlogged page."""
        on = "on" if slot.flags & KVM_MEM_LOG_DIRTY_PAGES else "off"
        check_mmu(kvm, f"dirty logging {on} for {slot}")
        self.checks += 1

    @hookimpl
    def mmbench_dirty_log_cleared(self, kvm, slot, first_page, npages):
        gfn0 = slot.base_gfn + first_page
        check_mmu(
            kvm, f"dirty-log clear of {slot} pages {first_page}+{npages}", (gfn0, gfn0 + npages)
        )
        self.checks += 1

    @hookimpl
    def mmbench_page_fault(self, kvm, vcpu, gfn, npages, faults):
        """After every fault batch: within the page limit (a reclaim that frees nothing)."""
        kvm.mmu.check_after_fault(f"a fault batch of vcpu {vcpu.id} at gfn 0x{gfn:x}")
        self.fault_checks += 1  # apart: ``checks`` counts the checks after invalidations

    @hookimpl
    def mmbench_mmu_pages_reclaimed(self, kvm, zapped):
        flushing = any(s.invalid for s in kvm.memslots.slots.values())
        kvm.mmu.check_invariants(f"reclaim of {zapped} sps", memslots=not flushing)
        self.checks += 1

    @hookimpl
    def mmbench_mmu_notifier_invalidated(self, kvm, gfn0, gfn1, event):
        """After ``invalidate_range_end``: nothing maps the range (faults that raced it
        retried), TLBs flushed, and the MMU's own invariants over the range."""
        when = f"an MMU-notifier invalidation ({event}) of gfns [0x{gfn0:x}, 0x{gfn1:x})"
        kvm.mmu.check_host_unmapped(when, gfn0, gfn1)
        check_mmu(kvm, when, (gfn0, gfn1))
        self.checks += 1

    @hookimpl
    def mmbench_vm_destroyed(self, kvm):
        mmu = kvm.mmu
        left = mmu.nr_mapped()
        if left:
            raise InvariantViolation(f"after teardown: {left} mappings still live")
        if mmu.tlbs_dirty:
            raise InvariantViolation("after teardown: zapped sptes were never flushed")
        tables = mmu.nr_page_tables()
        if tables:
            raise InvariantViolation(f"after teardown: {tables} page-table pages never freed")
        self.checks += 1


@hookimpl
def mmbench_register_monitors(register):
    register(Invariants)
