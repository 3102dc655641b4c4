"""Primitives a walk's ``apply`` step composes: zap the tables of a range, install huge
leaves over tables in place, free emptied level-2 tables.

The unmap paths of the model and the collapse and recovery policies
(``mmbench_collapse_sync``, ``mmbench_recover_in_place``) are walks built of these. Each
keeps the counts (``sptes_zapped``, ``pt_pages_freed``, ``nr_huge``) and marks TLBs dirty;
the flush is the caller's (``kvm.flush_remote_tlbs_if_dirty``), as in the kernel.
"""

from __future__ import annotations

import numpy as np

from mmbench.model.region.state import GIB_REGIONS
from mmbench.model.region.walk import RegionWalk


class RegionLeaves(RegionWalk):
    """Zap and install leaves of regions ``sl`` (state only; the walk charged the cost)."""

    def zap_tables(
        self, sl: slice, *, huge_leaves: bool, flush: bool = True
    ) -> tuple[int, int, int]:
        """Zap every 4 KiB table in ``sl`` with its leaves and, with ``huge_leaves``, every
        2 MiB leaf (``tdp_mmu_zap_spte_atomic`` + ``handle_removed_pt``; arm64
        ``stage2_unmap_walker``). ``flush=False`` when the caller invalidated each IPA
        itself (``TLBI IPAS2E1IS``), so no remote flush is owed. Returns the 2 MiB leaves,
        4 KiB leaves and tables zapped."""
        st = self.kvm.stats.vm
        nh = int(self.huge[sl].sum()) if huge_leaves else 0
        n = int(self.n4k[sl].sum(dtype=np.int64))
        npt = int(self.pt[sl].sum())
        if not (nh or n or npt):
            return 0, 0, 0
        st["sptes_zapped"] += nh + n
        st["pt_pages_freed"] += npt
        st["mmu_shadow_zapped"] += npt
        self.pt[sl] = False
        self.n4k[sl] = 0
        self.w4k[sl] = 0
        if huge_leaves:
            self.huge[sl] = False
            self.huge_wp[sl] = False
            self.huge_changed(-nh)
        if flush:
            self.tlbs_dirty = self.zapped_unflushed = True
        self.zapped(sl)
        return nh, n, npt

    def free_empty_l2_tables(self, sl: slice) -> None:
        """Level-2 tables wholly inside ``sl`` with nothing left under them are freed
        (``handle_removed_pt`` of the level-3 entry)."""
        g0 = -(-sl.start // GIB_REGIONS)
        g1 = sl.stop // GIB_REGIONS
        for g in range(g0, g1):
            rs = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
            if self.l2[g] and not (self.huge[rs].any() or self.pt[rs].any()):
                self.l2[g] = False
                self.kvm.stats.vm["pt_pages_freed"] += 1

    def make_huge_sptes(self, sl: slice) -> int:
        """Replace each 4 KiB table in ``sl`` by a 2 MiB leaf built from one of its
        children (``make_huge_spte``), freeing the table; the leaf keeps the children's
        write protection. Returns how many leaves were installed."""
        pt = self.pt[sl].copy()
        k = int(pt.sum())
        if not k:
            return 0
        self.kvm.stats.vm["pt_pages_freed"] += k
        self.huge_wp[sl] = np.where(pt, self.w4k[sl] < self.n4k[sl], self.huge_wp[sl])
        self.huge[sl] |= pt
        self.pt[sl] = False
        self.n4k[sl] = 0
        self.w4k[sl] = 0
        self.tlbs_dirty = True
        self.huge_changed(k)
        return k

    def make_huge_spte_1g(self, g: int) -> bool:
        """Replace GiB ``g``'s level-2 table by a 1 GiB leaf (``make_huge_spte`` at
        ``PG_LEVEL_1G``), freeing it and the tables under it; the leaf keeps any write
        protection of the leaves it replaces. False if ``g`` is unmapped or already one
        leaf."""
        rs = slice(g * GIB_REGIONS, (g + 1) * GIB_REGIONS)
        huge, pt = self.huge[rs], self.pt[rs]
        if self.gb[g] or not (huge.any() or pt.any()):
            return False
        nh, npt = int(huge.sum()), int(pt.sum())
        wp = bool((self.huge_wp[rs] | (pt & (self.w4k[rs] < self.n4k[rs]))).any())
        self.huge[rs] = self.huge_wp[rs] = self.pt[rs] = False
        self.n4k[rs] = 0
        self.w4k[rs] = 0
        self.gb[g], self.gb_wp[g], self.l2[g] = True, wp, False
        self.kvm.stats.vm["pt_pages_freed"] += npt + 1
        self.tlbs_dirty = True
        self.huge_changed(GIB_REGIONS - nh)
        return True
