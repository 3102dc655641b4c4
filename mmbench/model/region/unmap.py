"""Unmap and zap of the region MMU: range zaps, zap-all, freeing the tables, arm64's
cache maintenance and TLBI options.

x86: ``kvm_tdp_mmu_zap_leafs``, ``kvm_tdp_mmu_zap_all``, ``kvm_tdp_mmu_put_root``.
arm64: ``unmap_stage2_range`` (CMO to the PoC, ``TLBI IPAS2E1IS`` per IPA) and
``kvm_free_stage2_pgd``. The caller holds mmu_lock.
"""

from __future__ import annotations

import numpy as np

from mmbench.model.memslots import Memslot
from mmbench.model.region.leaves import RegionLeaves
from mmbench.model.region.state import GIB_REGIONS, REGION_PAGES, REGION_SHIFT

CMO_LINE = 64  # bytes per DC CIVAC
PAGE_BYTES = 4096


class RegionUnmap(RegionLeaves):
    """Zap ranges, slots and the whole tree."""

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
        line = CMO_LINE
        page = PAGE_BYTES

        def cost(sl: slice) -> np.ndarray:
            huge = self.huge[sl]
            n = self.n4k[sl].astype(np.float64)
            leaves = huge + n
            gb = self.gib_per_region(self.gb, sl.start, sl.stop)
            leaves = leaves + gb / GIB_REGIONS  # a 1 GiB leaf's cost, spread over its regions
            out = self.table_walk(sl) + leaves * c.zap_leaf + self.pt[sl] * c.pt_free
            if cmo:
                nbytes = (huge + gb) * (REGION_PAGES * page) + n * page
                out = out + nbytes / line * c.cmo_line
            if tlbi_per_ipa:
                out = out + leaves * c.tlbi_ipa
            return out

        def apply(sl: slice) -> None:
            gs = self.gibs(sl)
            k = int(self.gb[gs].sum())
            if k:
                st["sptes_zapped"] += k
                if cmo:
                    st["cmo_bytes"] += k * (GIB_REGIONS * REGION_PAGES) * page
                if tlbi_per_ipa:
                    st["tlbi"] += k
                else:
                    self.tlbs_dirty = self.zapped_unflushed = True
                self.gb[gs] = False
                self.gb_wp[gs] = False
                self.huge_changed(-GIB_REGIONS * k)
                self.zapped(sl)
            nh, n, npt = self.zap_tables(sl, huge_leaves=True, flush=not tlbi_per_ipa)
            if not (nh or n or npt):
                return
            if cmo:
                st["cmo_bytes"] += (nh * REGION_PAGES + n) * page
            if tlbi_per_ipa:
                st["tlbi"] += nh + n

        self.walk(r0, r1, cost, apply, lock_break=lock_break)

    def kvm_unmap_gfn_range(
        self,
        start: int,
        end: int,
        may_block: bool,
        *,
        cmo: bool = False,
        tlbi_per_ipa: bool = False,
    ) -> bool:
        """``kvm_unmap_gfn_range`` for an MMU-notifier range of gfns ``[start, end)``
        (whole 2 MiB regions; mmu_lock held for write), yielding when ``may_block``.

        x86: ``kvm_tdp_mmu_unmap_gfn_range`` -> ``tdp_mmu_zap_leafs`` under the write lock
        (6.18; the model also frees the emptied 4 KiB tables, which the kernel leaves
        for a later zap). arm64: ``__unmap_stage2_range`` -> ``kvm_pgtable_stage2_unmap``,
        with ``cmo`` (``dcache_clean_inval_poc`` per unmapped page, unless the CPU has
        FWB) and ``tlbi_per_ipa``. Returns whether a remote flush is owed (x86: yes if
        anything was zapped; arm64 invalidated each IPA as it went)."""
        r0, r1 = start >> REGION_SHIFT, -(-end >> REGION_SHIFT)
        self.zap_range(r0, r1, lock_break=may_block, cmo=cmo, tlbi_per_ipa=tlbi_per_ipa)
        return bool(self.tlbs_dirty)

    def zap_slot(self, slot: Memslot, **kw: bool) -> None:
        """``kvm_tdp_mmu_unmap_gfn_range`` / ``unmap_stage2_range`` over a slot, then
        the remote flush it owes."""
        r0, r1 = self.slot_span(slot)  # partial end regions are the slot's alone
        self.zap_range(r0, r1, **kw)
        self.kvm.flush_remote_tlbs_if_dirty()

    def kvm_mmu_zap_all(self, *, lock_break: bool = False) -> None:
        """``kvm_tdp_mmu_zap_all`` (caller holds mmu_lock): zap every leaf, flush, free
        every table down from the roots. x86-tdp's default teardown and the zap-all
        policy both call this."""
        self.zap_range(0, self.nr_regions, lock_break=lock_break)
        self.kvm.flush_remote_tlbs_if_dirty()
        self.free_tables()

    def kvm_free_stage2_pgd(self) -> None:
        """arm64 ``kvm_free_stage2_pgd`` before "Help VMs dying quicker" (2019):
        ``unmap_stage2_range(0, KVM_PHYS_SIZE)`` cleaning every page to the PoC and
        invalidating each IPA, with ``cond_resched_lock``, then free the tables (caller
        holds mmu_lock). arm64's default teardown and the s2-unmap policy both call this."""
        self.zap_range(0, self.nr_regions, lock_break=True, cmo=True, tlbi_per_ipa=True)
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
        self.tlbs_dirty = self.zapped_unflushed = False
