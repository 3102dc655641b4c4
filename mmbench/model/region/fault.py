"""The region MMU's vCPU side: guest accesses, native runs, and page faults.

x86: ``kvm_tdp_mmu_map`` (under ``read_lock(&kvm->mmu_lock)`` since 5.12),
``fast_page_fault`` (lockless W restore), ``kvm_mmu_hugepage_adjust`` (a dirty-logged slot
maps 4 KiB). arm64: ``user_mem_abort`` (under the lock, exclusively). Faults are batched
per mmu_lock section; a batch's TLB flushes go out as one ``kvm_flush_remote_tlbs`` call.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import numpy as np

from mmbench.model.memslots import KVM_MEM_LOG_DIRTY_PAGES
from mmbench.model.region.state import GIB_REGIONS, REGION_PAGES, REGION_SHIFT, RegionState

if TYPE_CHECKING:
    from mmbench.model.vcpu import Vcpu

RUN_REGIONS = 4096  # regions a vCPU runs natively per engine step (8 GiB)
FAULT_HUGE_REGIONS = 512  # 2 MiB faults per mmu_lock acquisition
FAULT_4K_REGIONS = 256  # regions of 4 KiB faults per mmu_lock acquisition (512 MiB)
# the most regions one fault batch maps (a 1 GiB leaf spans GIB_REGIONS): the need of the
# regions beyond cannot change what the batch does
FAULT_WINDOW = max(FAULT_HUGE_REGIONS, FAULT_4K_REGIONS, GIB_REGIONS)
_NO_PAGES = np.zeros(0, np.int32)
_NO_LOG = np.zeros(0, bool)


class RegionFaults(RegionState):
    """What a vCPU does to the tree: run over mappings, fault them in."""

    def _need(
        self, r0: int, r1: int, write: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Per region: 0 runs natively, 1 takes lockless fast faults, 2 faults under
        mmu_lock, 3 is not backed (MMIO exits). Also returns (pages backed, logged): a
        partial region is fully mapped when its table holds every page its slot backs;
        and whether one valid slot backs every page (then pages are all 512)."""
        slot = self.one_slot(r0, r1)
        huge, pt, n4k = self.huge[r0:r1], self.pt[r0:r1], self.n4k[r0:r1]
        if slot is not None:
            log_all = bool(slot.flags & KVM_MEM_LOG_DIRTY_PAGES)
            pages = np.full(r1 - r0, REGION_PAGES, np.int32)
            logged = np.full(r1 - r0, log_all)
            table_full = pt & (n4k == REGION_PAGES)
        else:
            pages, logged = self._backing(r0, r1)
            table_full = pt & (n4k == pages)
        full = huge | table_full
        gs = slice(r0 // GIB_REGIONS, (r1 - 1) // GIB_REGIONS + 1)
        any_gb = bool(np.count_nonzero(self.gb[gs]))  # 1 GiB leaves only with 1 GiB backing
        if any_gb:
            gb = self.gib_per_region(self.gb, r0, r1)
            full |= gb
        need = (~full).view(np.int8) * np.int8(2)  # 0 where mapped, else 2
        if write:
            if any_gb and np.count_nonzero(self.gb_wp[gs]):
                gb_wp = gb & self.gib_per_region(self.gb_wp, r0, r1)
                need[gb_wp & logged] = 2  # drop the 1 GiB leaf, map 4 KiB
                need[gb_wp & ~logged] = 1
            wp_huge = huge & self.huge_wp[r0:r1]
            if np.count_nonzero(wp_huge):
                need[wp_huge & logged] = 2  # a logged slot maps 4 KiB: drop the huge leaf
                need[wp_huge & ~logged] = 1  # fast_page_fault restores W on the huge spte
            need[table_full & (self.w4k[r0:r1] < n4k)] = 1
        if slot is None:
            need[pages == 0] = 3
        return need, pages, logged, slot is not None

    def _next_run(
        self, r0: int, r1: int, write: bool
    ) -> tuple[int, int, np.ndarray, np.ndarray, bool]:
        """The need of region ``r0`` (see ``_need``) and how many regions from it share it
        within ``[r0, r1)``, with ``_need``'s (pages, logged, whole). A read over one
        valid slot without 1 GiB leaves needs only "mapped or not" (0 or 2), so it is
        found without building the need array (a vCPU kicked by every remote flush
        looks ahead 4096 regions each time)."""
        gs = slice(r0 // GIB_REGIONS, (r1 - 1) // GIB_REGIONS + 1)
        slot = None if write or np.count_nonzero(self.gb[gs]) else self.one_slot(r0, r1)
        if slot is not None:
            n4k = self.n4k[r0:r1]
            full = self.huge[r0:r1] | (self.pt[r0:r1] & (n4k == REGION_PAGES))
            mapped = bool(full[0])
            i = int(np.argmin(full) if mapped else np.argmax(full))
            run = i if bool(full[i]) != mapped else r1 - r0
            if mapped:  # a native run reads neither (whole: every page backed)
                return 0, run, _NO_PAGES, _NO_LOG, True
            pages = np.full(r1 - r0, REGION_PAGES, np.int32)
            logged = np.full(r1 - r0, bool(slot.flags & KVM_MEM_LOG_DIRTY_PAGES))
            return 2, run, pages, logged, True
        need, pages, logged, whole = self._need(r0, r1, write)
        kind = int(need[0])
        same = need != kind
        run = int(np.argmax(same))
        if not same[run]:
            run = len(need)
        return kind, run, pages, logged, whole

    def access(self, vcpu: Vcpu, gfn0: int, gfn1: int, write: bool) -> None:
        """Touch one qword per 4 KiB page of ``[gfn0, gfn1)``. A fault maps whole regions
        (a partial region: every page its slot backs there); pages of the range that no
        slot backs are MMIO exits."""
        r, r_end = gfn0 >> REGION_SHIFT, -(-gfn1 // REGION_PAGES)
        exact = not (gfn0 % REGION_PAGES or gfn1 % REGION_PAGES)
        kind = 2
        while r < r_end:
            vcpu.check_requests()
            c1 = min(r_end, r + RUN_REGIONS)
            # a fault batch covers at most FAULT_WINDOW regions: after a batch, look that
            # far first, and over RUN_REGIONS only if what follows is not another batch
            w1 = min(c1, r + FAULT_WINDOW) if kind == 2 else c1
            kind, run, pages, logged, whole = self._next_run(r, w1, write)
            if kind != 2 and w1 < c1:
                kind, run, pages, logged, whole = self._next_run(r, c1, write)
            backed = touched = None  # the fast path: whole regions, all backed
            if not (exact and (whole or bool((pages[:run] == REGION_PAGES).all()))):
                backed = self._backing(r, r + run, gfn0, gfn1)[0]
                touched = np.full(run, REGION_PAGES, dtype=np.int32)
                touched[0] -= max(0, gfn0 - (r << REGION_SHIFT))
                touched[-1] -= max(0, ((r + run) << REGION_SHIFT) - gfn1)
            start = r
            if kind == 0:
                r = self._run_native(vcpu, r, r + run, backed)
            elif kind == 1:
                self._fast_faults(vcpu, r, r + run, logged[:run], backed)
                r += run
            elif kind == 2:
                uniform = whole and backed is None
                r = self._locked_faults(
                    vcpu, r, r + run, logged[:run], pages[:run], backed, uniform
                )
            else:
                r += run
            if touched is not None:  # the unbacked pages of partial regions: MMIO exits
                done = r - start
                self._mmio(vcpu, int((touched[:done] - backed[:done]).sum()))
            elif kind == 3:
                self._mmio(vcpu, run * REGION_PAGES)

    def _run_native(self, vcpu: Vcpu, r0: int, r1: int, backed: np.ndarray | None = None) -> int:
        """Run natively over mapped regions (``backed``: the pages touched in each, if not
        all 512); a kick (IPI) cuts the run short."""
        kvm = self.kvm
        per_region = REGION_PAGES * kvm.costs.touch_page
        if backed is None:
            total = (r1 - r0) * per_region
        else:
            total = int(backed.sum()) * kvm.costs.touch_page
        vcpu.in_guest = True
        self.native[vcpu.id] = (r0, r1)
        slept = kvm.engine.sleep_interruptible(total, lambda now: now)
        vcpu.in_guest = False
        del self.native[vcpu.id]
        if slept >= int(total):
            return r1
        if backed is None:
            return r0 + int(slept // per_region)
        return r0 + int((r1 - r0) * slept // max(total, 1))

    def _mmio(self, vcpu: Vcpu, pages: int) -> None:
        """``pages`` accesses that no memslot backs: each an exit to user space."""
        if not pages:
            return
        self.kvm.charge(pages * self.kvm.costs.mmio_exit)
        vcpu.stats["mmio_exits"] += pages
        vcpu.stats["exits"] += pages

    @staticmethod
    def _touched(n: int, backed: np.ndarray | None) -> int:
        """Backed pages the access touches in the first ``n`` regions of a run."""
        return n * REGION_PAGES if backed is None else int(backed[:n].sum())

    def _fast_faults(
        self, vcpu: Vcpu, r0: int, r1: int, logged: np.ndarray, backed: np.ndarray | None
    ) -> None:
        """``fast_page_fault``: make write-protected leaves writable without mmu_lock
        (``mark_page_dirty_in_slot`` in a logged slot)."""
        kvm, c = self.kvm, self.kvm.costs
        sl = slice(r0, r1)
        huge = self.huge[sl]
        faults = int((huge & self.huge_wp[sl]).sum())
        faults += int((~huge * (self.n4k[sl].astype(np.int64) - self.w4k[sl])).sum())
        gs = self.gibs(sl)
        faults += int((self.gb[gs] & self.gb_wp[gs]).sum())
        self.gb_wp[gs] = False
        self.huge_wp[sl] = False
        self.w4k[sl] = self.n4k[sl]
        self.dirty[sl] = np.where(logged, REGION_PAGES, self.dirty[sl])
        pages = self._touched(r1 - r0, backed)
        kvm.charge(faults * (c.fault_exit + c.fast_page_fault) + pages * c.touch_page)
        self._count_faults(vcpu, faults)

    def _locked_faults(
        self,
        vcpu: Vcpu,
        r0: int,
        r1: int,
        logged: np.ndarray,
        cap: np.ndarray,
        backed: np.ndarray | None,
        uniform: bool = False,
    ) -> int:
        """Page faults over ``[r0, r1)`` under mmu_lock, one lock section per batch
        (x86 ``kvm_tdp_mmu_map``, arm64 ``user_mem_abort``).

        A logged slot maps 4 KiB leaves (``kvm_mmu_hugepage_adjust``): a huge leaf in the
        way is zapped (and its TLB entries flushed), a table allocated, every page faulted
        in, writable and marked dirty (``make_spte``). Otherwise, if the backing allows,
        one fault maps a 1 GiB leaf (``_fault_1g``) or a 2 MiB leaf, replacing the tables
        and leaves in the way. A partial region (``cap`` < 512 pages backed) is never huge
        (lpage_info of a frame the slot covers in part): its table gets ``cap`` leaves.
        ``uniform``: one valid slot backs every page of the run (all whole, one logged
        state), so the batch needs no check for a slot boundary.
        """
        kvm = self.kvm
        whole = None if uniform else cap == REGION_PAGES
        whole0 = uniform or bool(whole[0])
        log0 = bool(logged[0])
        if self.huge_1g and not log0 and whole0:
            done = self._fault_1g(vcpu, r0, r1, backed)
            if done:
                return done
        goal_huge = self.huge_ok and not log0 and whole0
        span = FAULT_HUGE_REGIONS if goal_huge else FAULT_4K_REGIONS
        r1 = min(r1, r0 + span)
        logged, cap = logged[: r1 - r0], cap[: r1 - r0]
        if whole is not None:  # one kind per batch: stop at a slot boundary or a partial region
            whole = whole[: r1 - r0]
            differs = (logged != log0) | (whole != whole0)
            if differs.any():
                r1 = r0 + int(np.argmax(differs))
                logged, cap = logged[: r1 - r0], cap[: r1 - r0]
        sl = slice(r0, r1)
        n = r1 - r0
        g0, g1 = r0 << REGION_SHIFT, r1 << REGION_SHIFT
        mn = kvm.notifier
        mmu_seq = mn.fault_seq()  # before the pfn lookup (kvm_faultin_pfn)
        if mn.in_range(g0, g1):  # mmu_invalidate_retry_gfn_unsafe: no mmu_lock
            mn.retry(vcpu, g0, g1)
            return r0
        lock = kvm.mmu_lock  # _fault_lock(), without a generator per batch
        take, drop = (
            (lock.read_acquire, lock.read_release)
            if self.read_faults
            else (lock.acquire, lock.release)
        )
        take()
        try:
            stale = mn.retry_gfn(mmu_seq, g0, g1)  # is_page_fault_stale: RET_PF_RETRY
            if not stale:
                if goal_huge:
                    zapped = int(self.n4k[sl].sum(dtype=np.int64))
                    freed = int(np.count_nonzero(self.pt[sl]))
                    faults = n
                    installs = n
                    allocs = 0
                    flushes = 1 if zapped else 0
                    self.pt[sl] = False
                    self.n4k[sl] = 0
                    self.w4k[sl] = 0
                    self.huge[sl] = True
                    self.huge_wp[sl] = False
                    self.huge_changed(n)
                else:
                    gs = self.gibs(sl)
                    n_gb = 0
                    if np.count_nonzero(self.gb[gs]):  # 1 GiB leaves in the way
                        gbs = np.flatnonzero(self.gb[gs]) + gs.start
                        n_gb = len(gbs)
                        self.gb[gbs] = False
                        self.gb_wp[gbs] = False
                        self.huge_changed(-GIB_REGIONS * n_gb)
                    pt = self.pt[sl]
                    nh = int(np.count_nonzero(self.huge[sl]))
                    zapped = nh + n_gb
                    freed = 0
                    flushes = zapped  # one kvm_flush_remote_tlbs_gfn per huge leaf dropped
                    present = int(self.n4k[sl].sum(where=pt, dtype=np.int64))
                    allocs = n - int(np.count_nonzero(pt)) + n_gb
                    faults = int(cap.sum(dtype=np.int64)) - present
                    installs = faults
                    self.huge[sl] = False
                    self.huge_wp[sl] = False
                    self.huge_changed(-nh)
                    self.pt[sl] = True
                    self.n4k[sl] = cap
                    self.w4k[sl] = cap  # make_spte maps writable where the host allows
                    self.dirty[sl] = np.where(logged, cap, self.dirty[sl])
                self.l2[r0 // GIB_REGIONS : (r1 - 1) // GIB_REGIONS + 1] = True
                st = kvm.stats.vm
                st["sptes_zapped"] += zapped
                st["pt_pages_freed"] += freed
                st["pt_pages_allocated"] += allocs
                f_locked, f_install, f_alloc, f_zap, f_free = self._fault_costs()[:5]
                kvm.mmu_lock.work(
                    np.array(
                        [
                            faults * f_locked
                            + installs * f_install
                            + allocs * f_alloc
                            + zapped * f_zap
                            + freed * f_free
                        ]
                    ),
                    lock_break=False,
                )
                if flushes:
                    self.tlbs_dirty = True
                    kvm.flush_remote_tlbs(flushes)
        finally:
            drop()
        if stale:
            mn.retry(vcpu, g0, g1)
            return r0
        f_exit, f_touch = self._fault_costs()[5:]
        kvm.charge(faults * f_exit + self._touched(n, backed) * f_touch)
        self._count_faults(vcpu, faults)
        return r1

    def _fault_costs(self) -> tuple[float, ...]:
        """The fault batch's cost constants, read once per cost table rather than seven
        lookups per batch: fault_locked, spte_install, pt_alloc, zap_leaf, pt_free,
        fault_exit, touch_page."""
        c = self.kvm.costs
        cached = self.__dict__.get("_fault_costs_of")
        if cached is None or cached[0] is not c:
            names = ("fault_locked", "spte_install", "pt_alloc", "zap_leaf", "pt_free")
            vals = tuple(getattr(c, k) for k in (*names, "fault_exit", "touch_page"))
            self._fault_costs_of = cached = (c, vals)
        return cached[1]

    def _fault_1g(self, vcpu: Vcpu, r0: int, r1: int, backed: np.ndarray | None) -> int:
        """One fault maps the 1 GiB leaf over ``r0``'s GiB if one unlogged slot backs all
        of it, replacing its level-2 table and whatever hangs there. Returns the region
        after the ones touched, or 0 if a 1 GiB leaf cannot go there."""
        kvm, c = self.kvm, self.kvm.costs
        g = r0 // GIB_REGIONS
        sl = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
        if sl.stop > self.nr_regions:
            return 0
        pages, logged = self._backing(sl.start, sl.stop)
        if not (pages == REGION_PAGES).all() or logged.any():
            return 0
        end = min(r1, sl.stop)
        g0, g1 = sl.start << REGION_SHIFT, sl.stop << REGION_SHIFT
        mn = kvm.notifier
        mmu_seq = mn.fault_seq()  # before the pfn lookup (kvm_faultin_pfn)
        if mn.in_range(g0, g1):  # mmu_invalidate_retry_gfn_unsafe: no mmu_lock
            mn.retry(vcpu, g0, g1)
            return r0
        with self._fault_lock():
            stale = mn.retry_gfn(mmu_seq, g0, g1)  # is_page_fault_stale: RET_PF_RETRY
            if not stale:
                nh = int(self.huge[sl].sum())
                zapped = nh + int(self.n4k[sl].sum(dtype=np.int64))
                freed = int(self.pt[sl].sum()) + int(self.l2[g])
                self.huge[sl] = False
                self.huge_wp[sl] = False
                self.pt[sl] = False
                self.n4k[sl] = 0
                self.w4k[sl] = 0
                self.gb[g] = True
                self.gb_wp[g] = False
                self.l2[g] = False
                self.huge_changed(GIB_REGIONS - nh)
                st = kvm.stats.vm
                st["sptes_zapped"] += zapped
                st["pt_pages_freed"] += freed
                cost = c.fault_locked + c.spte_install + zapped * c.zap_leaf + freed * c.pt_free
                kvm.mmu_lock.work(np.array([cost]), lock_break=False)
                if zapped:
                    self.tlbs_dirty = True
                    kvm.flush_remote_tlbs()
        if stale:
            mn.retry(vcpu, g0, g1)
            return r0
        kvm.charge(c.fault_exit + self._touched(end - r0, backed) * c.touch_page)
        self._count_faults(vcpu, 1)
        return end

    def _count_faults(self, vcpu: Vcpu, faults: int) -> None:
        st = vcpu.stats
        st["pf_taken"] += faults
        st["pf_fixed"] += faults
        st["exits"] += faults

    def _fault_lock(self) -> AbstractContextManager[object]:
        """mmu_lock for a fault batch: exclusive, or for read (``read_faults``, x86 TDP
        MMU since 5.12: ``MmuLock.read_lock``)."""
        lock = self.kvm.mmu_lock
        return lock.read_lock() if self.read_faults else lock
