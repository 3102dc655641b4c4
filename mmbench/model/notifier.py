"""KVM's MMU notifier: the host unmaps, zaps or protects guest memory while vCPUs run.

What ``virt/kvm/kvm_main.c`` does (Linux 6.18) when the host mm changes a range of a
VMA that backs a memslot (``munmap``, ``madvise(MADV_DONTNEED)``, ``mprotect``,
migration, THP split...):

* ``kvm_mmu_notifier_invalidate_range_start`` -> ``kvm_handle_hva_range``: for every
  memslot the range overlaps, under ``KVM_MMU_LOCK`` (the write side of mmu_lock on x86
  and arm64), ``kvm_mmu_invalidate_begin`` once (``mmu_invalidate_in_progress++``), then
  per slot ``kvm_mmu_unmap_gfn_range`` = ``kvm_mmu_invalidate_range_add`` (grow
  ``mmu_invalidate_range_start/end``) + the arch's ``kvm_unmap_gfn_range`` (the
  ``mmbench_unmap_gfn_range`` hook here); if any returned true, one
  ``kvm_flush_remote_tlbs`` before the unlock (``flush_on_ret``);
* the host mm frees or protects its ptes (``zap_pte_range``, ``change_pte_range``);
* ``kvm_mmu_notifier_invalidate_range_end``: under mmu_lock again,
  ``kvm_mmu_invalidate_end``: ``mmu_invalidate_seq++`` then ``in_progress--``.

A vCPU fault reads ``mmu_invalidate_seq`` before it translates the gfn
(``kvm_faultin_pfn``) and, under mmu_lock, gives up with ``RET_PF_RETRY`` if
``mmu_invalidate_retry_gfn`` says the gfn is being invalidated or the sequence moved
(``is_page_fault_stale``; arm64 ``user_mem_abort``: ``mmu_invalidate_retry``). Retried
faults re-enter the guest and fault again, spinning until the invalidation ends
(``mmu_invalidate_retry_gfn_unsafe`` checks before mmu_lock, so they spin without it).
The gfn range form is "KVM: Use gfn instead of hva for mmu_notifier_retry" (6.7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmbench.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from mmbench.model.engine import Actor
    from mmbench.model.kvm import Kvm
    from mmbench.model.memslots import Memslot
    from mmbench.model.vcpu import Vcpu

INVALID_GPA = -1

# enum mmu_notifier_event (include/linux/mmu_notifier.h), lower case without the prefix
MMU_NOTIFY_EVENTS = (
    "unmap",  # MMU_NOTIFY_UNMAP: the range's VMA goes away (munmap, mmap MAP_FIXED over it)
    "clear",  # MMU_NOTIFY_CLEAR: ptes cleared, VMA stays (MADV_DONTNEED, reclaim)
    "protection_vma",  # MMU_NOTIFY_PROTECTION_VMA: mprotect() of the VMA
    "protection_page",  # MMU_NOTIFY_PROTECTION_PAGE: one page's protection (KSM, wp)
    "soft_dirty",  # MMU_NOTIFY_SOFT_DIRTY
    "release",  # MMU_NOTIFY_RELEASE: the mm is going away (exit_mmap)
    "migrate",  # MMU_NOTIFY_MIGRATE: page migration (NUMA balancing, compaction)
    "exclusive",  # MMU_NOTIFY_EXCLUSIVE: device-exclusive access
)
# the host calls of VmApi.host_unmap and the event each raises (mm/ in 6.18):
# munmap -> unmap_vmas() MMU_NOTIFY_UNMAP; madvise(MADV_DONTNEED) ->
# zap_page_range_single() MMU_NOTIFY_CLEAR; mprotect -> change_pud_range()
# MMU_NOTIFY_PROTECTION_VMA
HOST_UNMAP_EVENT = {"munmap": "unmap", "dontneed": "clear", "mprotect": "protection_vma"}

# The host mm's own work between invalidate_range_start and _end, per page of the range:
# measured on the development host (Linux 6.18.44, nested, 2 CPUs) without KVM, on 64 MiB
# of populated private anonymous memory, 7 repetitions, median (min-max), ns per 4 KiB:
#   4 KiB pages: munmap (mmap MAP_FIXED over it) 304 (270-372), MADV_DONTNEED 317
#   (295-361), mprotect(PROT_READ) 155 (125-192);
#   THP 2 MiB pages, per 4 KiB of range: 13 (11-21), 12 (10-14), 3.3 (2.8-4.5).
HOST_MM_NS_4K = {"munmap": 304.0, "dontneed": 317.0, "mprotect": 155.0}
HOST_MM_NS_THP = {"munmap": 13.0, "dontneed": 12.0, "mprotect": 3.3}


@dataclass(frozen=True)
class KvmGfnRange:
    """``struct kvm_gfn_range`` as ``kvm_handle_hva_range`` fills it for one memslot:
    ``[start, end)`` gfns of ``slot`` and ``may_block`` (``mmu_notifier_range_blockable``,
    so the handler may yield: "KVM: Pass MMU notifier range flags to
    kvm_unmap_hva_range()", 5.9, which is what mainline kept of patch 1 of seed 003's
    series).

    ``event`` is the notifier's ``enum mmu_notifier_event``: seed 003's series ("KVM:
    Pass mmu_notifier_range down to kvm_unmap_hva_range()", Marc Zyngier, 2019) passed
    the whole ``mmu_notifier_range`` down so that arm64 could test
    ``range->event == MMU_NOTIFY_UNMAP``; mainline's ``struct kvm_gfn_range`` (6.18) does
    not carry it, so a policy modelling mainline must not read it.
    """

    slot: Memslot
    start: int
    end: int
    may_block: bool
    event: str


class MmuNotifier:
    """``kvm->mmu_invalidate_*`` and the invalidate_range_start/end pair (``kvm_main.c``)."""

    def __init__(self, kvm: Kvm) -> None:
        self.kvm = kvm
        self.mmu_invalidate_seq = 0
        self.mmu_invalidate_in_progress = 0
        self.mmu_invalidate_range_start = INVALID_GPA
        self.mmu_invalidate_range_end = INVALID_GPA
        self.mn_active_invalidate_count = 0
        self._spinning: list[tuple[Vcpu, Actor, int]] = []  # retried faults, since when
        # figures: invalidations that found a memslot, time vCPUs spent re-faulting
        self.invalidations = 0
        self.retry_wait_ns: dict[int, int] = {}  # vCPU id -> ns spent re-faulting

    # -- the host side -------------------------------------------------------------------
    def invalidate_range_start(
        self, gfn0: int, gfn1: int, event: str, blockable: bool = True
    ) -> list[Memslot]:
        """``kvm_mmu_notifier_invalidate_range_start`` over gfns ``[gfn0, gfn1)`` (the
        model's hva is the gpa). Returns the memslots found (the end needs them)."""
        if event not in MMU_NOTIFY_EVENTS:
            raise ConfigError("event", f"{event!r}; allowed: {', '.join(MMU_NOTIFY_EVENTS)}")
        kvm = self.kvm
        self.mn_active_invalidate_count += 1
        slots = [s for s in kvm.memslots.slots.values() if s.overlaps(gfn0, gfn1 - gfn0)]
        if not slots:  # no memslot in range: KVM takes no lock at all
            return slots
        self.invalidations += 1
        flush = False
        with kvm.mmu_lock:  # KVM_MMU_LOCK: write_lock(&kvm->mmu_lock)
            self.invalidate_begin()
            for slot in slots:
                r = KvmGfnRange(
                    slot,
                    max(gfn0, slot.base_gfn),
                    min(gfn1, slot.base_gfn + slot.npages),
                    blockable,
                    event,
                )
                self.invalidate_range_add(r.start, r.end)
                handled = kvm.hook.mmbench_unmap_gfn_range(kvm=kvm, range=r)
                if handled is None:
                    raise ModelError(f"no policy or arch handled kvm_unmap_gfn_range for {slot}")
                flush |= bool(handled)
            if flush:  # flush_on_ret: before the unlock, so the host may free the pages
                kvm.flush_remote_tlbs()
        kvm.stats.vm["mmu_notifier_invalidations"] += 1
        return slots

    def invalidate_range_end(self, gfn0: int, gfn1: int, event: str, slots: list) -> None:
        """``kvm_mmu_notifier_invalidate_range_end``: ``kvm_mmu_invalidate_end`` under
        mmu_lock (if a memslot was found), then retried faults may map the range anew."""
        kvm = self.kvm
        if slots:
            with kvm.mmu_lock:
                self.invalidate_end()
            kvm.hook.mmbench_mmu_notifier_invalidated(kvm=kvm, gfn0=gfn0, gfn1=gfn1, event=event)
        self.mn_active_invalidate_count -= 1

    def invalidate_begin(self) -> None:
        """``kvm_mmu_invalidate_begin`` (mmu_lock held for write)."""
        self.mmu_invalidate_in_progress += 1
        if self.mmu_invalidate_in_progress == 1:
            self.mmu_invalidate_range_start = INVALID_GPA
            self.mmu_invalidate_range_end = INVALID_GPA

    def invalidate_range_add(self, start: int, end: int) -> None:
        """``kvm_mmu_invalidate_range_add``: one range, or the smallest covering all the
        ranges invalidated concurrently."""
        if self.mmu_invalidate_range_start == INVALID_GPA:
            self.mmu_invalidate_range_start, self.mmu_invalidate_range_end = start, end
        else:
            self.mmu_invalidate_range_start = min(self.mmu_invalidate_range_start, start)
            self.mmu_invalidate_range_end = max(self.mmu_invalidate_range_end, end)

    def invalidate_end(self) -> None:
        """``kvm_mmu_invalidate_end``: ``seq++`` (smp_wmb) then ``in_progress--``; the
        faults spinning on the range stop retrying."""
        if self.mmu_invalidate_in_progress <= 0:
            raise ModelError("kvm_mmu_invalidate_end without a begin")
        self.mmu_invalidate_seq += 1
        self.mmu_invalidate_in_progress -= 1
        if self.mmu_invalidate_in_progress == 0:
            self._wake_spinning()

    # -- the vCPU side -------------------------------------------------------------------
    def fault_seq(self) -> int:
        """``mmu_seq = kvm->mmu_invalidate_seq; smp_rmb();`` before the gfn's pfn is
        looked up (``kvm_faultin_pfn``, ``user_mem_abort``)."""
        return self.mmu_invalidate_seq

    def in_range(self, gfn0: int, gfn1: int) -> bool:
        """``mmu_invalidate_retry_gfn``'s range test for a batch of gfns ``[gfn0, gfn1)``."""
        return (
            self.mmu_invalidate_in_progress > 0
            and self.mmu_invalidate_range_start < gfn1
            and gfn0 < self.mmu_invalidate_range_end
        )

    def retry_gfn(self, mmu_seq: int, gfn0: int, gfn1: int) -> bool:
        """``mmu_invalidate_retry_gfn`` (mmu_lock held): the batch's gfns are being
        invalidated, or an invalidation ended since ``mmu_seq`` was read."""
        return self.in_range(gfn0, gfn1) or self.mmu_invalidate_seq != mmu_seq

    def retry(self, vcpu: Vcpu, gfn0: int, gfn1: int) -> None:
        """``RET_PF_RETRY`` (mmu_lock dropped) for the fault a vCPU has in flight on
        ``[gfn0, gfn1)`` (a batch of the model is faults the vCPU takes one at a time, so
        one is in flight): it re-enters the guest and faults again until the
        invalidation of its gfns has ended, each round an exit and a re-entry
        (``fault_exit``). Every round counts in ``pf_taken`` but not in ``pf_fixed``, as
        ``kvm_mmu_do_page_fault`` counts; ``faults_retried`` is their number."""
        kvm = self.kvm
        c = kvm.costs
        kvm.charge(c.fault_exit)
        rounds = 1
        waited = 0
        if self.in_range(gfn0, gfn1):  # else the sequence moved: refault at once
            t0 = kvm.now
            self._spinning.append((vcpu, kvm.engine.current, t0))
            kvm.engine.block()  # spinning on mmu_invalidate_retry_gfn_unsafe, off mmu_lock
            waited = kvm.now - t0
            rounds += int(waited // max(c.fault_exit, 1.0))
        st = vcpu.stats
        st["pf_taken"] += rounds
        st["faults_retried"] += rounds
        st["exits"] += rounds
        self.retry_wait_ns[vcpu.id] = self.retry_wait_ns.get(vcpu.id, 0) + waited

    def _wake_spinning(self) -> None:
        spinning, self._spinning = self._spinning, []
        for _, actor, _ in spinning:
            self.kvm.engine.wake(actor)
