"""Dirty logging on the region MMU: enable (eager split, write-protect),
``KVM_GET_DIRTY_LOG``, ``KVM_CLEAR_DIRTY_LOG``.

``kvm_mmu_slot_apply_flags``, ``kvm_mmu_slot_remove_write_access``,
``kvm_mmu_slot_try_split_huge_pages``, ``kvm_arch_mmu_enable_log_dirty_pt_masked``;
what happens when logging stops is a policy's (collapse, recovery). The dirty bitmap is
a count per region (``RegionState.dirty``).
"""

from __future__ import annotations

import numpy as np

from mmbench.errors import ConfigError
from mmbench.model.memslots import Memslot
from mmbench.model.region.state import GIB_REGIONS, REGION_PAGES, REGION_SHIFT
from mmbench.model.region.walk import RegionWalk


class RegionDirtyLog(RegionWalk):
    """Dirty-log bitmap and write protection of the region MMU."""

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
            self.kvm.flush_remote_tlbs_if_dirty()

    def collapsible_zap_cost(self, sl: slice) -> np.ndarray:
        """ns per region of a collapsible-SPTE zap walk (``kvm_tdp_mmu_zap_collapsible_sptes``
        in every era): the walk, a host mapping-level lookup and a free per 4 KiB table,
        a zap per leaf; with 1 GiB backing also the 2 MiB leaves and level-2 tables."""
        c = self.kvm.costs
        pt = self.pt[sl]
        n = self.n4k[sl].astype(np.float64)
        out = c.tdp_walk + pt * (c.host_level_lookup + c.pt_free) + n * c.zap_leaf
        if self.huge_1g:
            l2 = self.gib_per_region(self.l2, sl.start, sl.stop)
            out = out + self.huge[sl] * c.zap_leaf + l2 * (c.pt_free / GIB_REGIONS)
        return out

    def write_protect_slot(self, slot: Memslot) -> None:
        """``kvm_mmu_slot_remove_write_access(slot, PG_LEVEL_4K)``: clear W on every leaf."""
        c = self.kvm.costs
        r0, r1 = self.slot_regions(slot)

        def cost(sl: slice) -> np.ndarray:
            leaves = np.where(self.huge[sl], 1, self.n4k[sl]).astype(np.float64)
            leaves += self.gib_per_region(self.gb, sl.start, sl.stop) / GIB_REGIONS
            return self.table_walk(sl) + leaves * c.wrprot_spte

        def apply(sl: slice) -> None:
            gs = self.gibs(sl)
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
            gb = self.gib_per_region(self.gb, sl.start, sl.stop)
            huge = self.huge[sl] + gb * (1 + 1 / GIB_REGIONS)
            return c.tdp_walk + huge * (c.pt_alloc + REGION_PAGES * c.split_spte)

        def apply(sl: slice) -> None:
            gs = self.gibs(sl)
            for g in (np.flatnonzero(self.gb[gs]) + gs.start).tolist():  # 1G -> 2M -> 4K
                rs = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
                self.pt[rs] = True
                self.n4k[rs] = REGION_PAGES
                self.w4k[rs] = 0 if self.gb_wp[g] else REGION_PAGES
                self.gb[g] = self.gb_wp[g] = False
                self.l2[g] = True
                self.huge_changed(-GIB_REGIONS)
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
            self.huge_changed(-k)
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
                self.kvm.flush_remote_tlbs_if_dirty()
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
            self.kvm.flush_remote_tlbs_if_dirty()
        return cleared

    def _protect_dirty(self, r0: int, r1: int) -> None:
        """``kvm_arch_mmu_enable_log_dirty_pt_masked`` for every set bit: a writable huge
        leaf (initially-set) is split (eager split) or write-protected at 2 MiB first;
        then the dirty 4 KiB leaves lose W and the bits are cleared."""
        kvm, c = self.kvm, self.kvm.costs
        split = kvm.eager_split

        huge_cost = (c.pt_alloc + REGION_PAGES * c.split_spte) if split else c.wrprot_spte
        walk, wrprot = c.tdp_walk, c.wrprot_spte

        def cost(sl: slice) -> np.ndarray:
            d = self.dirty[sl]
            hit = d > 0
            wr_huge = self.huge[sl] & ~self.huge_wp[sl] & hit
            return hit * walk + wr_huge * huge_cost + d * wrprot

        def apply(sl: slice) -> None:
            hit = self.dirty[sl] > 0
            if not hit.any():  # nothing set: no leaf to protect, no bit to clear
                return
            gs = self.gibs(sl)
            gb = self.gb[gs]
            if gb.any():  # write-protect the 1 GiB leaves with a dirty page under them
                starts = np.maximum(np.arange(gs.start, gs.stop) * GIB_REGIONS - sl.start, 0)
                wr_gb = gb & ~self.gb_wp[gs] & np.logical_or.reduceat(hit, starts)
                if wr_gb.any():
                    self.gb_wp[gs] |= wr_gb
                    self.tlbs_dirty = True
            wr_huge = self.huge[sl] & ~self.huge_wp[sl] & hit
            any_huge = bool(wr_huge.any())
            if split and any_huge:
                k = int(wr_huge.sum())
                self.pt[sl] |= wr_huge
                self.n4k[sl][wr_huge] = REGION_PAGES
                self.huge[sl] &= ~wr_huge
                self.huge_changed(-k)
                kvm.stats.vm["pt_pages_allocated"] += k
                kvm.stats.vm["huge_pages_split"] += k
            elif any_huge:
                self.huge_wp[sl] |= wr_huge
            w4k = self.w4k[sl]
            if any_huge or (w4k * hit).any():
                self.tlbs_dirty = True
            w4k[hit] = 0
            self.dirty[sl] = 0

        self.walk(r0, r1, cost, apply, lock_break=False)
