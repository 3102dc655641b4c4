"""TDP MMU and arm64 stage-2 state aggregated per 2 MiB region, and their primitives.

At 4 TiB a per-gfn array has 1 G entries. What the kernel's cost depends on in the
dirty-log and teardown paths is counts: whether the level-2 entry of a 2 MiB region is a
huge leaf (and write-protected), whether a 4 KiB table hangs under it, how many of its 512
leaves are present and writable, and how many of its pages the dirty bitmap has set. So
the state is one row per region (2 M rows at 4 TiB, about 20 MB) plus flags per 1 GiB for
the level-2 table and a 1 GiB leaf (and its write protection); there is no per-gfn array.

The price is granularity: guest accesses, memslots and ``KVM_CLEAR_DIRTY_LOG`` ranges
are whole 2 MiB regions (the kernel allows 64-page clears). Within a region the counts
are exact because every operation covers the whole region.

Primitives charge the arch backend's cost table through mmu_lock (``MmuLock.work``) so
lock-break can cut in, and apply their state changes as they walk, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from mmbench.errors import ConfigError, InvariantViolation, ModelError
from mmbench.model.memslots import KVM_MEM_LOG_DIRTY_PAGES, Memslot

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm
    from mmbench.model.vcpu import Vcpu

REGION_SHIFT = 9
REGION_PAGES = 1 << REGION_SHIFT  # 4 KiB leaves per 2 MiB region
GIB_REGIONS = 512  # regions per 1 GiB (one level-2 table)
RUN_REGIONS = 4096  # regions a vCPU runs natively per engine step (8 GiB)
FAULT_HUGE_REGIONS = 512  # 2 MiB faults per mmu_lock acquisition
FAULT_4K_REGIONS = 256  # regions of 4 KiB faults per mmu_lock acquisition (512 MiB)
WALK_CHUNK = 512  # regions costed and applied per step of a host walk (1 GiB)
WALK_GROUP = 16  # regions between two cond_resched checks of a walk

U16 = np.uint16


class RegionMmu:
    """``kvm->arch.tdp_mmu`` / ``kvm->arch.mmu.pgt``: one radix tree, aggregated."""

    def __init__(
        self,
        kvm: Kvm,
        max_gfn: int,
        huge_ok: bool,
        flush_ipis: bool = True,
        read_faults: bool = False,
        huge_1g: bool = False,
    ) -> None:
        self.kvm = kvm
        self.read_faults = read_faults  # vCPU faults take mmu_lock for read
        self.max_gfn = max_gfn
        self.huge_ok = huge_ok  # the backing allows 2 MiB leaves
        self.flush_ipis = flush_ipis  # x86: IPIs; arm64: broadcast TLBI, no vCPU kick
        nr = (max_gfn + REGION_PAGES - 1) >> REGION_SHIFT
        self.nr_regions = nr
        self.huge = np.zeros(nr, dtype=bool)  # level-2 entry is a 2 MiB leaf
        self.huge_wp = np.zeros(nr, dtype=bool)  # ... and it is write-protected
        self.pt = np.zeros(nr, dtype=bool)  # a 4 KiB table hangs under the entry
        self.n4k = np.zeros(nr, dtype=U16)  # present 4 KiB leaves in that table
        self.w4k = np.zeros(nr, dtype=U16)  # writable 4 KiB leaves (<= n4k)
        self.dirty = np.zeros(nr, dtype=U16)  # pages set in the slot's dirty bitmap
        self.l2 = np.zeros(nr // GIB_REGIONS + 1, dtype=bool)  # level-2 table per GiB
        self.huge_1g = huge_1g  # the backing allows 1 GiB leaves (hugetlbfs 1G)
        self.gb = np.zeros(nr // GIB_REGIONS + 1, dtype=bool)  # level-3 entry is a 1 GiB leaf
        self.gb_wp = np.zeros(nr // GIB_REGIONS + 1, dtype=bool)  # ... write-protected
        self.nr_huge = 0
        self.huge_full_at = -1  # last time every huge-capable region was huge-mapped
        self.tlbs_dirty = False
        self.native: dict[int, tuple[int, int]] = {}  # vCPU id -> regions it runs over

    # -- lookups -----------------------------------------------------------------------------
    def slot_regions(self, slot: Memslot) -> tuple[int, int]:
        if slot.base_gfn % REGION_PAGES or slot.npages % REGION_PAGES:
            raise ConfigError("memslot", f"{slot}: the region model needs 2 MiB-aligned slots")
        return slot.base_gfn >> REGION_SHIFT, slot.end_gfn >> REGION_SHIFT

    def _flags(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """(backed by a valid slot, dirty-logged) for regions ``[r0, r1)``."""
        backed = np.zeros(r1 - r0, dtype=bool)
        logged = np.zeros(r1 - r0, dtype=bool)
        for slot in self.kvm.memslots.slots.values():
            s0, s1 = slot.base_gfn >> REGION_SHIFT, slot.end_gfn >> REGION_SHIFT
            lo, hi = max(s0, r0), min(s1, r1)
            if lo >= hi or slot.invalid:
                continue
            backed[lo - r0 : hi - r0] = True
            if slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
                logged[lo - r0 : hi - r0] = True
        return backed, logged

    def _gbv(self, arr: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """A per-GiB array seen per region over ``[r0, r1)``."""
        g0, g1 = r0 // GIB_REGIONS, (r1 - 1) // GIB_REGIONS + 1
        v = np.repeat(arr[g0:g1], GIB_REGIONS)
        off = r0 - g0 * GIB_REGIONS
        return v[off : off + r1 - r0]

    def _gibs(self, sl: slice) -> slice:
        return slice(sl.start // GIB_REGIONS, (sl.stop - 1) // GIB_REGIONS + 1)

    def huge_target(self) -> int:
        """Regions that could be huge-mapped: every backed region if the backing allows."""
        if not self.huge_ok:
            return 0
        return sum(s.npages >> REGION_SHIFT for s in self.kvm.memslots.slots.values())

    def _huge_changed(self, delta: int) -> None:
        if not delta:
            return
        self.nr_huge += delta
        if delta > 0 and self.nr_huge == self.huge_target():
            self.huge_full_at = self.kvm.now

    def _check_live(self, slot: Memslot) -> None:
        if not self.kvm.memslots.is_live(slot) or self.kvm.destroyed:
            raise ModelError(f"{slot} was deleted or changed, yet an MMU walk touched it")

    # -- TLB ---------------------------------------------------------------------------------
    def flush(self, count: int = 1) -> None:
        """``kvm_flush_remote_tlbs`` ``count`` times (batched faults each flush once)."""
        kvm, c = self.kvm, self.kvm.costs
        kvm.stats.vm["remote_tlb_flush_requests"] += count
        kvm.stats.vm["remote_tlb_flush"] += count
        per = c.remote_tlb_flush
        if self.flush_ipis:
            for vcpu in kvm.vcpus:
                vcpu.pending_flushes += 1
            kvm.kick_vcpus()
            per += len(kvm.vcpus) * c.kick_vcpu
        else:
            kvm.stats.vm["tlbi"] += count
        kvm.charge(count * per)
        self.tlbs_dirty = False

    def flush_if_dirty(self) -> None:
        if self.tlbs_dirty:
            self.flush()

    # -- guest accesses ----------------------------------------------------------------------
    def _need(self, r0: int, r1: int, write: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per region: 0 runs natively, 1 takes lockless fast faults, 2 faults under
        mmu_lock, 3 is not backed (MMIO exits). Also returns (backed, logged)."""
        backed, logged = self._flags(r0, r1)
        huge, pt, n4k = self.huge[r0:r1], self.pt[r0:r1], self.n4k[r0:r1]
        gb = self._gbv(self.gb, r0, r1)
        full = huge | gb | (pt & (n4k == REGION_PAGES))
        need = np.where(full, 0, 2).astype(np.int8)
        if write:
            gb_wp = gb & self._gbv(self.gb_wp, r0, r1)
            need[gb_wp & logged] = 2  # drop the 1 GiB leaf, map 4 KiB
            need[gb_wp & ~logged] = 1
            wp_huge = huge & self.huge_wp[r0:r1]
            need[wp_huge & logged] = 2  # a logged slot maps 4 KiB: drop the huge leaf
            need[wp_huge & ~logged] = 1  # fast_page_fault restores W on the huge spte
            need[pt & (n4k == REGION_PAGES) & (self.w4k[r0:r1] < n4k)] = 1
        need[~backed] = 3
        return need, backed, logged

    def access(self, vcpu: Vcpu, gfn0: int, gfn1: int, write: bool) -> None:
        """Touch one qword per 4 KiB page of ``[gfn0, gfn1)`` (whole 2 MiB regions)."""
        if gfn0 % REGION_PAGES or gfn1 % REGION_PAGES:
            raise ValueError(f"[0x{gfn0:x}, 0x{gfn1:x}): the region model touches 2 MiB runs")
        r, r_end = gfn0 >> REGION_SHIFT, gfn1 >> REGION_SHIFT
        while r < r_end:
            vcpu.check_requests()
            c1 = min(r_end, r + RUN_REGIONS)
            need, backed, logged = self._need(r, c1, write)
            kind = int(need[0])
            same = need != kind
            run = int(np.argmax(same)) if same.any() else len(need)
            if kind == 0:
                r = self._run_native(vcpu, r, r + run)
            elif kind == 1:
                self._fast_faults(vcpu, r, r + run, logged[:run])
                r += run
            elif kind == 2:
                r = self._locked_faults(vcpu, r, r + run, logged[:run])
            else:
                self._mmio(vcpu, run)
                r += run

    def _run_native(self, vcpu: Vcpu, r0: int, r1: int) -> int:
        """Run natively over mapped regions; a kick (IPI) cuts the run short."""
        kvm = self.kvm
        per_region = REGION_PAGES * kvm.costs.touch_page
        total = (r1 - r0) * per_region
        vcpu.in_guest = True
        self.native[vcpu.id] = (r0, r1)
        slept = kvm.engine.sleep_interruptible(total, lambda now: now)
        vcpu.in_guest = False
        del self.native[vcpu.id]
        if slept >= int(total):
            return r1
        return r0 + int(slept // per_region)

    def _zapped(self, sl: slice) -> None:
        """A walk removed mappings in ``sl``: a vCPU running over them faults there at
        its next access, so cut its native run short to let it see the change."""
        for vid, (r0, r1) in list(self.native.items()):
            if r0 < sl.stop and sl.start < r1:
                actor = self.kvm.vcpus[vid].actor
                if actor is not None:
                    self.kvm.engine.interrupt(actor)

    def _mmio(self, vcpu: Vcpu, regions: int) -> None:
        pages = regions * REGION_PAGES
        self.kvm.charge(pages * self.kvm.costs.mmio_exit)
        vcpu.stats["mmio_exits"] += pages
        vcpu.stats["exits"] += pages

    def _fast_faults(self, vcpu: Vcpu, r0: int, r1: int, logged: np.ndarray) -> None:
        """``fast_page_fault``: make write-protected leaves writable without mmu_lock
        (``mark_page_dirty_in_slot`` in a logged slot)."""
        kvm, c = self.kvm, self.kvm.costs
        sl = slice(r0, r1)
        huge = self.huge[sl]
        faults = int((huge & self.huge_wp[sl]).sum())
        faults += int((~huge * (self.n4k[sl].astype(np.int64) - self.w4k[sl])).sum())
        gs = self._gibs(sl)
        faults += int((self.gb[gs] & self.gb_wp[gs]).sum())
        self.gb_wp[gs] = False
        self.huge_wp[sl] = False
        self.w4k[sl] = self.n4k[sl]
        self.dirty[sl] = np.where(logged, REGION_PAGES, self.dirty[sl])
        pages = (r1 - r0) * REGION_PAGES
        kvm.charge(faults * (c.fault_exit + c.fast_page_fault) + pages * c.touch_page)
        self._count_faults(vcpu, faults)

    def _locked_faults(self, vcpu: Vcpu, r0: int, r1: int, logged: np.ndarray) -> int:
        """Page faults over ``[r0, r1)`` under mmu_lock, one lock section per batch.

        A logged slot maps 4 KiB leaves (``kvm_mmu_hugepage_adjust``): a huge leaf in the
        way is zapped (and its TLB entries flushed), a table allocated, every page faulted
        in, writable and marked dirty (``make_spte``). Otherwise, if the backing allows,
        one fault maps a 1 GiB leaf (``_fault_1g``) or a 2 MiB leaf, replacing the tables
        and leaves in the way.
        """
        kvm, c = self.kvm, self.kvm.costs
        if self.huge_1g and not logged[0]:
            done = self._fault_1g(vcpu, r0, r1)
            if done:
                return done
        goal_huge = self.huge_ok and not logged[0]
        span = FAULT_HUGE_REGIONS if goal_huge else FAULT_4K_REGIONS
        r1 = min(r1, r0 + span)
        logged = logged[: r1 - r0]
        differs = logged != logged[0]  # one kind per batch: stop at a slot boundary
        if differs.any():
            r1 = r0 + int(np.argmax(differs))
            logged = logged[: r1 - r0]
        sl = slice(r0, r1)
        n = r1 - r0
        with self._fault_lock():
            if goal_huge:
                old = self.n4k[sl].astype(np.int64)
                had_pt = self.pt[sl].copy()
                zapped = int(old.sum())
                freed = int(had_pt.sum())
                faults = n
                installs = n
                allocs = 0
                flushes = 1 if zapped else 0
                self.pt[sl] = False
                self.n4k[sl] = 0
                self.w4k[sl] = 0
                self.huge[sl] = True
                self.huge_wp[sl] = False
                self._huge_changed(n)
            else:
                gs = self._gibs(sl)
                gbs = np.flatnonzero(self.gb[gs]) + gs.start  # 1 GiB leaves in the way
                self.gb[gbs] = False
                self.gb_wp[gbs] = False
                self._huge_changed(-GIB_REGIONS * len(gbs))
                was_huge = self.huge[sl].copy()
                zapped = int(was_huge.sum()) + len(gbs)
                freed = 0
                flushes = zapped  # one kvm_flush_remote_tlbs_gfn per huge leaf dropped
                present = np.where(self.pt[sl], self.n4k[sl], 0).astype(np.int64)
                allocs = int((~self.pt[sl]).sum()) + len(gbs)
                faults = int((REGION_PAGES - present).sum())
                installs = faults
                self.huge[sl] = False
                self.huge_wp[sl] = False
                self._huge_changed(-int(was_huge.sum()))
                self.pt[sl] = True
                self.n4k[sl] = REGION_PAGES
                self.w4k[sl] = REGION_PAGES  # make_spte maps writable where the host allows
                self.dirty[sl] = np.where(logged, REGION_PAGES, self.dirty[sl])
            self.l2[r0 // GIB_REGIONS : (r1 - 1) // GIB_REGIONS + 1] = True
            st = kvm.stats.vm
            st["sptes_zapped"] += zapped
            st["pt_pages_freed"] += freed
            st["pt_pages_allocated"] += allocs
            kvm.mmu_lock.work(
                np.array(
                    [
                        faults * c.fault_locked
                        + installs * c.spte_install
                        + allocs * c.pt_alloc
                        + zapped * c.zap_leaf
                        + freed * c.pt_free
                    ]
                ),
                lock_break=False,
            )
            if flushes:
                self.tlbs_dirty = True
                self.flush(flushes)
        kvm.charge(faults * c.fault_exit + n * REGION_PAGES * c.touch_page)
        self._count_faults(vcpu, faults)
        return r1

    def _fault_1g(self, vcpu: Vcpu, r0: int, r1: int) -> int:
        """One fault maps the 1 GiB leaf over ``r0``'s GiB if one unlogged slot backs all
        of it, replacing its level-2 table and whatever hangs there. Returns the region
        after the ones touched, or 0 if a 1 GiB leaf cannot go there."""
        kvm, c = self.kvm, self.kvm.costs
        g = r0 // GIB_REGIONS
        sl = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
        if sl.stop > self.nr_regions:
            return 0
        backed, logged = self._flags(sl.start, sl.stop)
        if not backed.all() or logged.any():
            return 0
        end = min(r1, sl.stop)
        with self._fault_lock():
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
            self._huge_changed(GIB_REGIONS - nh)
            st = kvm.stats.vm
            st["sptes_zapped"] += zapped
            st["pt_pages_freed"] += freed
            cost = c.fault_locked + c.spte_install + zapped * c.zap_leaf + freed * c.pt_free
            kvm.mmu_lock.work(np.array([cost]), lock_break=False)
            if zapped:
                self.tlbs_dirty = True
                self.flush()
        kvm.charge(c.fault_exit + (end - r0) * REGION_PAGES * c.touch_page)
        self._count_faults(vcpu, 1)
        return end

    @contextmanager
    def _fault_lock(self) -> Iterator[None]:
        """mmu_lock for a fault batch: exclusive, or for read (``read_faults``), where a
        fault only waits for a writer (a zap, a walk) holding or queued for the lock and
        faults do not exclude each other (x86 TDP MMU since 5.12)."""
        lock = self.kvm.mmu_lock
        if not self.read_faults:
            with lock:
                yield
            return
        if lock.holder is not None or lock.waiters:
            lock.acquire()  # queue behind the writer; its lock-break lets us in
            lock.release()
        yield

    def _count_faults(self, vcpu: Vcpu, faults: int) -> None:
        st = vcpu.stats
        st["pf_taken"] += faults
        st["pf_fixed"] += faults
        st["exits"] += faults

    # -- host walks ---------------------------------------------------------------------------
    def walk(
        self,
        r0: int,
        r1: int,
        cost: Callable[[slice], np.ndarray],
        apply: Callable[[slice], None],
        *,
        lock_break: bool,
        alive: Callable[[], bool] | None = None,
    ) -> bool:
        """Walk regions ``[r0, r1)`` under mmu_lock (held by the caller), charging
        ``cost(slice)`` per region and applying ``apply(slice)`` as it goes. With
        lock-break it flushes (if it zapped) and yields every ``WALK_GROUP`` regions when
        someone waits (``tdp_mmu_iter_cond_resched``); after a yield ``alive()`` must still
        hold or the walk stops. Returns False if it stopped early."""
        lock = self.kvm.mmu_lock
        r = r0
        while r < r1:
            c1 = min(r1, r + WALK_CHUNK)
            per = cost(slice(r, c1))
            group = GIB_REGIONS if self.huge_1g else WALK_GROUP  # a 1 GiB zap is one item
            groups = np.add.reduceat(per, np.arange(0, len(per), group))
            done = lock.work(groups, lock_break)
            end = min(c1, r + done * group)
            apply(slice(r, end))
            r = end
            if r < r1 and lock_break and lock.needbreak():
                self.flush_if_dirty()
                lock.cond_resched()
                if alive is not None and not alive():
                    return False
        return True

    def _table_walk(self, sl: slice) -> np.ndarray:
        """ns to visit each region's level-2 entry and, under a table, its 512 entries."""
        c = self.kvm.costs
        return c.tdp_walk * (1 + self.pt[sl] * REGION_PAGES).astype(np.float64)

    # -- dirty logging -----------------------------------------------------------------------
    def dirty_log_start(self, slot: Memslot, initially_set: bool) -> None:
        """A new dirty bitmap: all ones with manual-protect's initially-set, else zeros."""
        r0, r1 = self.slot_regions(slot)
        self.dirty[r0:r1] = REGION_PAGES if initially_set else 0

    def dirty_log_stop(self, slot: Memslot) -> None:
        r0, r1 = self.slot_regions(slot)
        self.dirty[r0:r1] = 0

    def enable_dirty_logging(self, slot: Memslot) -> None:
        """``kvm_mmu_slot_apply_flags`` on enable, as the kernel does it: eager split if
        asked, then write-protect every leaf unless initially-set defers it to CLEAR."""
        kvm = self.kvm
        with kvm.mmu_lock:
            if kvm.eager_split:
                self.split_huge_pages(slot)
            if not (kvm.manual_protect and kvm.initially_set):
                self.write_protect_slot(slot)
            self.flush_if_dirty()

    def write_protect_slot(self, slot: Memslot) -> None:
        """``kvm_mmu_slot_remove_write_access(slot, PG_LEVEL_4K)``: clear W on every leaf."""
        c = self.kvm.costs
        r0, r1 = self.slot_regions(slot)

        def cost(sl: slice) -> np.ndarray:
            leaves = np.where(self.huge[sl], 1, self.n4k[sl]).astype(np.float64)
            leaves += self._gbv(self.gb, sl.start, sl.stop) / GIB_REGIONS
            return self._table_walk(sl) + leaves * c.wrprot_spte

        def apply(sl: slice) -> None:
            gs = self._gibs(sl)
            if (self.huge[sl] & ~self.huge_wp[sl]).any() or self.w4k[sl].any():
                self.tlbs_dirty = True
            if (self.gb[gs] & ~self.gb_wp[gs]).any():
                self.tlbs_dirty = True
            self.gb_wp[gs] |= self.gb[gs]
            self.huge_wp[sl] = self.huge[sl]
            self.w4k[sl] = 0

        self.walk(r0, r1, cost, apply, lock_break=True)

    def split_huge_pages(self, slot: Memslot) -> None:
        """Eager page splitting (``kvm_mmu_slot_try_split_huge_pages``): every 2 MiB leaf
        becomes a table of 512 leaves with the same permissions; no TLB flush needed."""
        c = self.kvm.costs
        st = self.kvm.stats.vm
        r0, r1 = self.slot_regions(slot)

        def cost(sl: slice) -> np.ndarray:
            huge = self.huge[sl] + self._gbv(self.gb, sl.start, sl.stop) * (1 + 1 / GIB_REGIONS)
            return c.tdp_walk + huge * (c.pt_alloc + REGION_PAGES * c.split_spte)

        def apply(sl: slice) -> None:
            gs = self._gibs(sl)
            for g in (np.flatnonzero(self.gb[gs]) + gs.start).tolist():  # 1G -> 2M -> 4K
                rs = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
                self.pt[rs] = True
                self.n4k[rs] = REGION_PAGES
                self.w4k[rs] = 0 if self.gb_wp[g] else REGION_PAGES
                self.gb[g] = self.gb_wp[g] = False
                self.l2[g] = True
                self._huge_changed(-GIB_REGIONS)
                st["pt_pages_allocated"] += GIB_REGIONS + 1
                st["huge_pages_split"] += 1
            huge = self.huge[sl].copy()
            k = int(huge.sum())
            if not k:
                return
            self.pt[sl] |= huge
            self.n4k[sl] = np.where(huge, REGION_PAGES, self.n4k[sl])
            self.w4k[sl] = np.where(huge & ~self.huge_wp[sl], REGION_PAGES, self.w4k[sl])
            self.huge[sl] = False
            self.huge_wp[sl] = False
            self._huge_changed(-k)
            st["pt_pages_allocated"] += k
            st["huge_pages_split"] += k

        self.walk(r0, r1, cost, apply, lock_break=True)

    def get_dirty_log(self, slot: Memslot, protect: bool) -> int:
        """``KVM_GET_DIRTY_LOG``: copy the bitmap; with ``protect`` (no manual protect)
        also clear it and write-protect the dirty pages, under mmu_lock."""
        r0, r1 = self.slot_regions(slot)
        dirty = int(self.dirty[r0:r1].sum(dtype=np.int64))
        self.kvm.charge((slot.npages / 64) * self.kvm.costs.dirty_bitmap_word)
        if protect:
            with self.kvm.mmu_lock:
                self._protect_dirty(r0, r1)
                self.flush_if_dirty()
        return dirty

    def clear_dirty_log(self, slot: Memslot, first_page: int, npages: int) -> int:
        """``KVM_CLEAR_DIRTY_LOG``: clear a range of the bitmap and write-protect it."""
        if first_page % REGION_PAGES or npages % REGION_PAGES:
            raise ConfigError(
                "clear_dirty_log",
                f"first_page {first_page} and npages {npages} must be multiples of"
                f" {REGION_PAGES}: the region model clears whole 2 MiB runs",
            )
        s0, _ = self.slot_regions(slot)
        r0 = s0 + (first_page >> REGION_SHIFT)
        r1 = r0 + (npages >> REGION_SHIFT)
        cleared = int(self.dirty[r0:r1].sum(dtype=np.int64))
        self.kvm.charge((npages / 64) * self.kvm.costs.dirty_bitmap_word)
        with self.kvm.mmu_lock:
            self._protect_dirty(r0, r1)
            self.flush_if_dirty()
        return cleared

    def _protect_dirty(self, r0: int, r1: int) -> None:
        """``kvm_arch_mmu_enable_log_dirty_pt_masked`` for every set bit: a writable huge
        leaf (initially-set) is split (eager split) or write-protected at 2 MiB first;
        then the dirty 4 KiB leaves lose W and the bits are cleared."""
        kvm, c = self.kvm, self.kvm.costs
        split = kvm.eager_split

        def cost(sl: slice) -> np.ndarray:
            d = self.dirty[sl].astype(np.float64)
            wr_huge = self.huge[sl] & ~self.huge_wp[sl] & (d > 0)
            huge_cost = (c.pt_alloc + REGION_PAGES * c.split_spte) if split else c.wrprot_spte
            return (d > 0) * c.tdp_walk + wr_huge * huge_cost + d * c.wrprot_spte

        def apply(sl: slice) -> None:
            d = self.dirty[sl]
            hit = d > 0
            gs = self._gibs(sl)
            hit_g = np.zeros(gs.stop - gs.start, dtype=bool)
            hit_g[np.unique(np.flatnonzero(hit) + sl.start) // GIB_REGIONS - gs.start] = True
            wr_gb = self.gb[gs] & ~self.gb_wp[gs] & hit_g  # write-protect 1 GiB leaves
            if wr_gb.any():
                self.gb_wp[gs] |= wr_gb
                self.tlbs_dirty = True
            wr_huge = self.huge[sl] & ~self.huge_wp[sl] & hit
            if split and wr_huge.any():
                k = int(wr_huge.sum())
                self.pt[sl] |= wr_huge
                self.n4k[sl] = np.where(wr_huge, REGION_PAGES, self.n4k[sl])
                self.huge[sl] &= ~wr_huge
                self._huge_changed(-k)
                kvm.stats.vm["pt_pages_allocated"] += k
                kvm.stats.vm["huge_pages_split"] += k
            elif wr_huge.any():
                self.huge_wp[sl] |= wr_huge
            if wr_huge.any() or (self.w4k[sl] * hit).any():
                self.tlbs_dirty = True
            self.w4k[sl] = np.where(hit, 0, self.w4k[sl])
            self.dirty[sl] = 0

        self.walk(r0, r1, cost, apply, lock_break=False)

    # -- collapse on dirty-log stop ------------------------------------------------------------
    def zap_collapsible_sptes(
        self, slot: Memslot, *, lock_break: bool, alive: Callable[[], bool] | None = None
    ) -> bool:
        """``kvm_tdp_mmu_zap_collapsible_sptes``: zap every 4 KiB table that a huge page
        could replace (host mapping level checked per table); the guest refaults 2 MiB
        leaves. Flushes before yielding and at the end. Returns False if stopped early."""
        self._check_live(slot)
        if not self.huge_ok:
            return True
        c = self.kvm.costs
        st = self.kvm.stats.vm
        r0, r1 = self.slot_regions(slot)

        gib = self.huge_1g  # 1 GiB backing: zap whole level-2 tables, 2 MiB leaves too

        def cost(sl: slice) -> np.ndarray:
            pt = self.pt[sl]
            n = self.n4k[sl].astype(np.float64)
            out = c.tdp_walk + pt * (c.host_level_lookup + c.pt_free) + n * c.zap_leaf
            if gib:
                l2 = self._gbv(self.l2, sl.start, sl.stop)
                out = out + self.huge[sl] * c.zap_leaf + l2 * (c.pt_free / GIB_REGIONS)
            return out

        def apply(sl: slice) -> None:
            pt = self.pt[sl]
            k = int(pt.sum())
            nh = int(self.huge[sl].sum()) if gib else 0
            if not k and not nh:
                return
            st["sptes_zapped"] += int(self.n4k[sl].sum(dtype=np.int64)) + nh
            st["pt_pages_freed"] += k
            st["mmu_shadow_zapped"] += k
            self.pt[sl] = False
            self.n4k[sl] = 0
            self.w4k[sl] = 0
            if gib:
                self.huge[sl] = False
                self.huge_wp[sl] = False
                self._huge_changed(-nh)
                self._free_empty_l2(sl)
            self.tlbs_dirty = True
            self._zapped(sl)

        done = self.walk(r0, r1, cost, apply, lock_break=lock_break, alive=alive)
        self.flush_if_dirty()
        return done

    def recover_huge_pages(
        self, slot: Memslot, *, lock_break: bool, alive: Callable[[], bool] | None = None
    ) -> bool:
        """``kvm_tdp_mmu_recover_huge_pages`` (2024): install a 2 MiB leaf over each 4 KiB
        table in place (``make_huge_spte`` from a child), freeing the table; no zap, no
        refault. Keeps the children's write protection. Flushes at the end."""
        self._check_live(slot)
        if not self.huge_ok:
            return True
        c = self.kvm.costs
        st = self.kvm.stats.vm
        r0, r1 = self.slot_regions(slot)

        gib = self.huge_1g

        def cost(sl: slice) -> np.ndarray:
            pt = self.pt[sl]
            n = self.n4k[sl].astype(np.float64)
            per_pt = c.host_level_lookup + c.pt_free + c.spte_install
            out = c.tdp_walk + pt * per_pt + n * c.zap_leaf
            if gib:
                l2 = self._gbv(self.l2, sl.start, sl.stop)
                out = out + self.huge[sl] * c.zap_leaf + l2 * (per_pt / GIB_REGIONS)
            return out

        def apply(sl: slice) -> None:
            if gib:
                self._recover_1g(sl, r0, r1)
            pt = self.pt[sl].copy()
            k = int(pt.sum())
            if not k:
                return
            st["pt_pages_freed"] += k
            st["huge_pages_recovered"] += k
            self.huge_wp[sl] = np.where(pt, self.w4k[sl] < self.n4k[sl], self.huge_wp[sl])
            self.huge[sl] |= pt
            self.pt[sl] = False
            self.n4k[sl] = 0
            self.w4k[sl] = 0
            self.tlbs_dirty = True
            self._huge_changed(k)

        done = self.walk(r0, r1, cost, apply, lock_break=lock_break, alive=alive)
        self.flush_if_dirty()
        return done

    def _recover_1g(self, sl: slice, s0: int, s1: int) -> None:
        """Install a 1 GiB leaf over each level-2 table wholly inside ``sl`` and the slot
        ``[s0, s1)``; it keeps any write protection of the leaves it replaces."""
        st = self.kvm.stats.vm
        g0 = -(-max(sl.start, s0) // GIB_REGIONS)
        g1 = min(sl.stop, s1) // GIB_REGIONS
        for g in range(g0, g1):
            rs = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
            huge, pt = self.huge[rs], self.pt[rs]
            if self.gb[g] or not (huge.any() or pt.any()):
                continue
            nh, npt = int(huge.sum()), int(pt.sum())
            wp = bool((self.huge_wp[rs] | (pt & (self.w4k[rs] < self.n4k[rs]))).any())
            self.huge[rs] = self.huge_wp[rs] = self.pt[rs] = False
            self.n4k[rs] = 0
            self.w4k[rs] = 0
            self.gb[g], self.gb_wp[g], self.l2[g] = True, wp, False
            st["pt_pages_freed"] += npt + 1
            st["huge_pages_recovered"] += 1
            self.tlbs_dirty = True
            self._huge_changed(GIB_REGIONS - nh)

    def _free_empty_l2(self, sl: slice) -> None:
        """Level-2 tables wholly inside ``sl`` with nothing left under them are freed."""
        g0 = -(-sl.start // GIB_REGIONS)
        g1 = sl.stop // GIB_REGIONS
        for g in range(g0, g1):
            rs = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
            if self.l2[g] and not (self.huge[rs].any() or self.pt[rs].any()):
                self.l2[g] = False
                self.kvm.stats.vm["pt_pages_freed"] += 1

    # -- zapping and teardown ------------------------------------------------------------------
    def zap_range(
        self,
        r0: int,
        r1: int,
        *,
        lock_break: bool,
        cmo: bool = False,
        tlbi_per_ipa: bool = False,
    ) -> None:
        """Unmap regions ``[r0, r1)``: zap every leaf and free the 4 KiB tables.

        x86 ``kvm_tdp_mmu_zap_leafs`` / ``zap_all``; arm64 ``unmap_stage2_range``, where
        ``cmo`` cleans each unmapped page to the PoC (``DC CIVAC`` per 64-byte line) and
        ``tlbi_per_ipa`` issues ``TLBI IPAS2E1IS`` + ``DSB`` per leaf.
        """
        kvm, c = self.kvm, self.kvm.costs
        st = kvm.stats.vm
        line = 64
        page = 4096

        def cost(sl: slice) -> np.ndarray:
            huge = self.huge[sl]
            n = self.n4k[sl].astype(np.float64)
            leaves = huge + n
            gb = self._gbv(self.gb, sl.start, sl.stop)
            leaves = leaves + gb / GIB_REGIONS  # a 1 GiB leaf's cost, spread over its regions
            out = self._table_walk(sl) + leaves * c.zap_leaf + self.pt[sl] * c.pt_free
            if cmo:
                nbytes = (huge + gb) * (REGION_PAGES * page) + n * page
                out = out + nbytes / line * c.cmo_line
            if tlbi_per_ipa:
                out = out + leaves * c.tlbi_ipa
            return out

        def apply(sl: slice) -> None:
            gs = self._gibs(sl)
            k = int(self.gb[gs].sum())
            if k:
                st["sptes_zapped"] += k
                if cmo:
                    st["cmo_bytes"] += k * (GIB_REGIONS * REGION_PAGES) * page
                if tlbi_per_ipa:
                    st["tlbi"] += k
                else:
                    self.tlbs_dirty = True
                self.gb[gs] = False
                self.gb_wp[gs] = False
                self._huge_changed(-GIB_REGIONS * k)
                self._zapped(sl)
            huge = self.huge[sl]
            nh = int(huge.sum())
            n = int(self.n4k[sl].sum(dtype=np.int64))
            if not nh and not n and not self.pt[sl].any():
                return
            npt = int(self.pt[sl].sum())
            st["sptes_zapped"] += nh + n
            st["pt_pages_freed"] += npt
            st["mmu_shadow_zapped"] += npt
            if cmo:
                st["cmo_bytes"] += (nh * REGION_PAGES + n) * page
            if tlbi_per_ipa:
                st["tlbi"] += nh + n
            self.huge[sl] = False
            self.huge_wp[sl] = False
            self.pt[sl] = False
            self.n4k[sl] = 0
            self.w4k[sl] = 0
            self._huge_changed(-nh)
            if not tlbi_per_ipa:
                self.tlbs_dirty = True
            self._zapped(sl)

        self.walk(r0, r1, cost, apply, lock_break=lock_break)

    def zap_slot(self, slot: Memslot, **kw: bool) -> None:
        r0, r1 = self.slot_regions(slot)
        self.zap_range(r0, r1, **kw)
        self.flush_if_dirty()

    def kvm_mmu_zap_all(self, *, lock_break: bool = False) -> None:
        """``kvm_tdp_mmu_zap_all`` (caller holds mmu_lock): zap every leaf, flush, free
        every table down from the roots."""
        self.zap_range(0, self.nr_regions, lock_break=lock_break)
        self.flush_if_dirty()
        self.free_tables()

    def free_tables(self) -> None:
        """Free the upper levels once every leaf is gone (``kvm_tdp_mmu_put_root`` /
        ``kvm_free_stage2_pgd``): level-2 tables, level-3 tables and the root."""
        c = self.kvm.costs
        n = int(self.l2.sum()) + (len(self.l2) + GIB_REGIONS - 1) // GIB_REGIONS + 1
        self.kvm.mmu_lock.work(np.array([n * (c.pt_free + GIB_REGIONS * c.tdp_walk)]), False)
        self.kvm.stats.vm["pt_pages_freed"] += n
        self.l2[:] = False

    def tlbi_vmall(self) -> None:
        """One ``TLBI VMALLS12E1IS`` + ``DSB ISH`` for the whole VMID (arm64)."""
        self.kvm.charge(self.kvm.costs.tlbi_vmall)
        self.kvm.stats.vm["tlbi"] += 1
        self.tlbs_dirty = False

    def kvm_mmu_unload(self, vcpu: int) -> int:
        """A vCPU drops its root reference; roots are freed with the tree."""
        return 0

    # -- figures and invariants ----------------------------------------------------------------
    def extra_stats(self) -> dict[str, float]:
        st = self.kvm.stats.vm
        out: dict[str, float] = {
            "pages_4k": float(self.n4k.sum(dtype=np.int64)),
            "pages_2m": float(self.huge.sum()),
            "pages_1g": float(self.gb.sum()),
            "huge_full_at_ns": float(self.huge_full_at),
            "huge_target": float(self.huge_target()),
            "huge_regions": float(self.nr_huge),  # 2 MiB regions under a 2 MiB or 1 GiB leaf
        }
        for key in (
            "cmo_bytes",
            "tlbi",
            "pt_pages_freed",
            "pt_pages_allocated",
            "huge_pages_split",
            "huge_pages_recovered",
        ):
            out[key] = float(st[key])
        return out

    def check_invariants(self, when: str, gfn0: int = 0, gfn1: int | None = None) -> None:
        """The oracle for this MMU, over the GiBs of ``[gfn0, gfn1)`` (default: all);
        raises ``InvariantViolation``."""

        def fail(msg: str) -> None:
            raise InvariantViolation(f"after {when}: {msg}")

        g0 = (gfn0 >> REGION_SHIFT) // GIB_REGIONS
        end = self.nr_regions if gfn1 is None else -(-gfn1 >> REGION_SHIFT)
        g1 = min(len(self.gb), -(-end // GIB_REGIONS))
        r0, r1 = g0 * GIB_REGIONS, min(self.nr_regions, g1 * GIB_REGIONS)
        sl = slice(r0, r1)
        huge, pt, n4k, w4k = self.huge[sl], self.pt[sl], self.n4k[sl], self.w4k[sl]
        huge_wp, dirty = self.huge_wp[sl], self.dirty[sl]

        def gfn(i: int) -> str:
            return f"gfn 0x{(r0 + i) << REGION_SHIFT:x}"

        gb = self._gbv(self.gb, r0, r1)
        if (gb & (huge | pt)).any():
            fail(f"{gfn(int(np.argmax(gb & (huge | pt))))} is under a 1 GiB leaf and mapped")
        if (self.gb_wp[g0:g1] & ~self.gb[g0:g1]).any():
            fail("a write-protect flag on a GiB without a 1 GiB leaf")
        if (huge & pt).any():
            fail(f"{gfn(int(np.argmax(huge & pt)))} has both a huge leaf and a table")
        if (~pt & (n4k > 0)).any() or (w4k > n4k).any() or (n4k > REGION_PAGES).any():
            fail("4 KiB leaf counts disagree with the tables")
        if (huge_wp & ~huge).any():
            fail("a write-protect flag on a region without a huge leaf")
        covered = int(self.huge.sum()) + GIB_REGIONS * int(self.gb.sum())
        if covered != self.nr_huge:
            fail(f"nr_huge {self.nr_huge} but huge leaves cover {covered} regions")
        backed, logged = self._flags(r0, r1)
        stale = (huge | pt | gb) & ~backed
        if stale.any():
            fail(f"{gfn(int(np.argmax(stale)))} is still mapped but no live memslot backs it")
        gb_w = gb & ~self._gbv(self.gb_wp, r0, r1)
        writable = np.where((huge & ~huge_wp) | gb_w, REGION_PAGES, w4k)
        unlogged = logged & (writable > dirty)
        if unlogged.any():
            r = int(np.argmax(unlogged))
            fail(
                f"a writable spte maps {gfn(r)} in a dirty-logged slot whose bitmap does not"
                f" have it set ({int(writable[r])} writable, {int(dirty[r])} dirty)"
            )
        if self.tlbs_dirty:
            fail("sptes were zapped or write-protected but remote TLBs were not flushed")

    def nr_mapped(self) -> int:
        return int(self.huge.sum()) + int(self.n4k.sum(dtype=np.int64)) + int(self.gb.sum())
