"""The legacy MMU with TDP hardware (EPT/NPT, ``tdp_mmu=N``): direct sps over the GPA space.

Modelled kernel: the legacy MMU's direct path of v5.10 (the TDP MMU was off by default
until 5.15; with ``tdp_mmu=N`` the same path runs today). With EPT there are no guest page
tables to shadow: ``__direct_map`` walks the GPA from the root and, where an entry is
missing, allocates a *direct* sp (``kvm_mmu_get_page(vcpu, base_gfn, ..., level, direct=1,
ACC_ALL)``: role.direct, ``sp->gfn`` the first gfn it maps) shared by every vCPU through the
sp hash; leaves go into the rmaps as with shadow paging. Leaf size per fault is
``kvm_mmu_hugepage_adjust``: the largest of 4 KiB / 2 MiB / 1 GiB that lpage_info allows
(a frame only part of one memslot is disallowed, ``kvm_alloc_memslot_metadata``; a
dirty-logged slot gets none) and the host backing maps (``host_pfn_mapping_level``); then
``disallowed_hugepage_adjust`` (``nx_huge_pages=on``, the default on CPUs with iTLB
multihit) goes one level down where a lower table is already linked. A 4 KiB fault also
fetches its aligned group of ``PTE_PREFETCH_NUM`` (``direct_pte_prefetch``, 4 KiB sps only).

The tables are a ``GuestPageTables`` of the GPA space (one tree, every vCPU's root the same
sp), so ``SpTable``'s hash lookups, links, zaps and reclaim work unchanged on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmbench.model.shadow.guest_tables import LEVEL_SHIFT, PTES_PER_TABLE, Area, GuestPageTables
from mmbench.model.shadow.mmu import ShadowMmu
from mmbench.model.vcpu import Vcpu

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm

FAST_REGIONS = 64  # fault-free regions run per engine step (as the shadow fault path)
FAULT_REGIONS = 8  # regions faulted per mmu_lock acquisition
GIB_REGIONS = 1 << LEVEL_SHIFT  # 2 MiB regions per 1 GiB frame


def build_direct_tables(
    areas_per_vcpu: list[list[tuple[int, int]]], levels: int, pt_gfn_base: int = 0
) -> GuestPageTables:
    """The GPA-space tree of the 2 MiB regions any vCPU touches: one level-1 table per
    region (consecutive ids in region order, so an area's tables are arithmetic), the
    levels above keyed by the range they map, one root shared by every vCPU. ``gfn`` and
    ``map_base`` of each table are the first gfn it maps (a direct sp's ``sp->gfn``).
    ``pt_gfn_base`` is unused: direct sps live in no guest page."""
    regions = sorted({r for areas in areas_per_vcpu for g0, g1 in areas for r in _regions(g0, g1)})
    level: list[int] = [levels]
    base: list[int] = [0]
    parent: list[int] = [-1]
    l1_id: dict[int, int] = {}
    for r in regions:
        l1_id[r] = len(level)
        level.append(1)
        base.append(r << LEVEL_SHIFT)
        parent.append(-1)
    uppers: dict[tuple[int, int], int] = {}
    for r in regions:
        child = l1_id[r]
        for lvl in range(2, levels):
            key = (lvl, r >> (LEVEL_SHIFT * (lvl - 1)))
            new = key not in uppers
            if new:
                uppers[key] = len(level)
                level.append(lvl)
                base.append(key[1] << (LEVEL_SHIFT * lvl))
                parent.append(-1)
            parent[child] = uppers[key]
            child = uppers[key]
            if not new:
                break
        else:
            parent[child] = 0
    areas = [[Area(g0, g1, l1_id[g0 >> LEVEL_SHIFT]) for g0, g1 in a] for a in areas_per_vcpu]
    arr = np.array(base, dtype=np.int64)
    return GuestPageTables(
        level=np.array(level, dtype=np.int8),
        gfn=arr,
        parent=np.array(parent, dtype=np.int32),
        map_base=arr.copy(),
        roots=np.zeros(len(areas_per_vcpu), dtype=np.int32),
        levels=levels,
        areas=areas,
    )


def _regions(gfn0: int, gfn1: int) -> range:
    return range(gfn0 >> LEVEL_SHIFT, ((gfn1 - 1) >> LEVEL_SHIFT) + 1)


class DirectMmu(ShadowMmu):
    """``kvm->arch`` of the legacy MMU on EPT: direct sps, rmaps at three levels, the
    fault path of ``__direct_map``; zaps, reclaim and ``mmu_valid_gen`` are the shadow
    MMU's own (``kvm_mmu_prepare_zap_page``, ``kvm_zap_obsolete_pages``, ...)."""

    huge_leaves = True
    direct = True

    def __init__(
        self,
        kvm: Kvm,
        tables: GuestPageTables,
        max_gfn: int,
        nr_vcpus: int,
        *,
        pte_prefetch_num: int,
        host_level: int,
    ) -> None:
        super().__init__(kvm, tables, max_gfn, nr_vcpus, pte_prefetch_num=pte_prefetch_num)
        self.vcpu_process[:] = 0  # one tree: every vCPU's root is the same direct sp
        self.host_level = host_level  # 1, 2, 3: the largest page of the host backing

    # -- kvm_mmu_hugepage_adjust ---------------------------------------------------------
    def max_mapping_level(self, r0: int, r1: int) -> np.ndarray:
        """Per 2 MiB region of ``[r0, r1)``: the leaf level a fault may map (1, 2, 3).

        lpage_info: a 2 MiB (1 GiB) frame allows a huge leaf only if one valid,
        not dirty-logged memslot covers all of it (``kvm_alloc_memslot_metadata`` marks
        the partial frames at a slot's ends) and no shadowed page is in it
        (``lpage_disallow``; direct sps shadow none). Then ``host_level`` caps it."""
        lvl = np.ones(r1 - r0, dtype=np.int8)
        if self.host_level < 2:
            return lvl
        g0 = r0 >> LEVEL_SHIFT
        for slot in self.kvm.memslots.slots.values():
            if slot.invalid or slot.flags & 1:  # KVM_MEM_LOG_DIRTY_PAGES: 4 KiB only
                continue
            s0 = -(-slot.base_gfn // PTES_PER_TABLE)
            s1 = slot.end_gfn // PTES_PER_TABLE
            lo, hi = max(s0, r0), min(s1, r1)
            if lo < hi:
                lvl[lo - r0 : hi - r0] = 2
            if self.host_level >= 3:
                f0 = -(-slot.base_gfn // (PTES_PER_TABLE * GIB_REGIONS))
                f1 = slot.end_gfn // (PTES_PER_TABLE * GIB_REGIONS)
                for f in range(max(f0, g0), min(f1, ((r1 - 1) >> LEVEL_SHIFT) + 1)):
                    a, b = max(f * GIB_REGIONS, r0), min((f + 1) * GIB_REGIONS, r1)
                    lvl[a - r0 : b - r0] = 3
        lvl[(self.lpage_disallow[r0:r1] > 0) & (lvl > 1)] = 1
        return lvl

    # -- what a vCPU runs on natively ----------------------------------------------------
    def _upper(self, gpts: np.ndarray) -> np.ndarray:
        """The valid sp of each table, or -1."""
        sps = self.gpt_sp[gpts]
        return np.where(self.valid(sps), sps, -1)

    def mapped_regions(self, vcpu: int, area: Area, regions: np.ndarray) -> np.ndarray:
        """Per region: every page reachable from the vCPU's root, through a 1 GiB leaf,
        a 2 MiB leaf or a full 4 KiB sp."""
        root = int(self.vcpu_root[vcpu])
        if not self.valid1(root):
            return np.zeros(len(regions), dtype=bool)
        l1 = area.first_l1 + regions - area.region0
        l2 = self.gpt.parent[l1]
        l3 = self.gpt.parent[l2]
        sp3 = self._upper(l3)
        ok3 = (sp3 >= 0) & (self.sp_parent[np.maximum(sp3, 0)] == root)
        e3 = (regions >> LEVEL_SHIFT) & (PTES_PER_TABLE - 1)
        gb = ok3 & self.sp_sptes[np.maximum(sp3, 0), e3]
        sp2 = self._upper(l2)
        ok2 = ok3 & (sp2 >= 0) & (self.sp_parent[np.maximum(sp2, 0)] == sp3)
        huge = ok2 & self.sp_sptes[np.maximum(sp2, 0), regions & (PTES_PER_TABLE - 1)]
        sp1 = self._upper(l1)
        ok1 = ok2 & (sp1 >= 0) & (self.sp_parent[np.maximum(sp1, 0)] == sp2)
        full = ok1 & (self.sp_nr[np.maximum(sp1, 0)] == PTES_PER_TABLE)
        return gb | huge | full

    def access(self, vcpu: Vcpu, gfn0: int, gfn1: int, write: bool) -> None:
        """Touch one qword per 4 KiB page of ``[gfn0, gfn1)``: natively where mapped,
        EPT violations (``kvm_tdp_page_fault`` -> ``direct_page_fault``) elsewhere."""
        area = self.gpt.area_of(vcpu.id, gfn0)
        if gfn1 > area.gfn1:
            raise ValueError(f"vcpu {vcpu.id}: [0x{gfn0:x}, 0x{gfn1:x}) leaves its mapped area")
        g = gfn0
        last_region = ((gfn1 - 1) >> LEVEL_SHIFT) + 1
        while g < gfn1:
            vcpu.check_requests()
            r0 = g >> LEVEL_SHIFT
            regions = np.arange(r0, min(last_region, r0 + FAST_REGIONS))
            full = self.mapped_regions(vcpu.id, area, regions)
            nfull = len(full) if full.all() else int(np.argmin(full))
            if nfull:
                end = min(int(regions[nfull - 1] + 1) << LEVEL_SHIFT, gfn1)
                g = self._run_native(vcpu, g, end, np.empty(0, dtype=np.int32))
            else:
                end = min((r0 + FAULT_REGIONS) << LEVEL_SHIFT, gfn1)
                g = self.page_fault(vcpu, area, g, end)

    def _walk_guest_tables(self, vcpu: Vcpu, l1: np.ndarray) -> None:
        """With EPT, KVM walks no guest page tables (``mmu_alloc_direct_roots`` has no
        ``mmu_check_root``): the guest's own tables are its business."""

    # -- __direct_map --------------------------------------------------------------------
    def page_fault(self, vcpu: Vcpu, area: Area, g: int, end: int) -> int:
        """``direct_page_fault`` for every unmapped page of ``[g, end)``: one mmu_lock
        section for the batch; gfns no memslot backs are MMIO exits. Returns ``end``."""
        kvm = self.kvm
        c = kvm.costs
        b = self._fault_batch(g, end)
        regions, want = b.regions, b.want
        level = self.max_mapping_level(b.r0, b.gfn1 >> LEVEL_SHIFT)[regions - b.r0]
        mn = kvm.notifier
        mmu_seq = mn.fault_seq()  # kvm_faultin_pfn: before the pfn lookup
        if mn.in_range(g, end):  # mmu_invalidate_retry_gfn_unsafe: retry without the lock
            mn.retry(vcpu, g, end)
            return g
        # hva_to_pfn's slow path for host pages not yet present (before mmu_lock)
        self._faultin_host_pages(b)
        new_sps = faults = installed = lookups = 0
        with kvm.mmu_lock:
            stale = mn.retry_gfn(mmu_seq, g, end)  # is_page_fault_stale: RET_PF_RETRY
            if not stale:
                if self.n_max_mmu_pages:
                    regions_l1 = area.first_l1 + regions - area.region0
                    self._make_pages_available_for(vcpu.id, regions_l1)
                new_sps = self.kvm_mmu_reload(vcpu.id)
                if len(regions):
                    faults, installed, allocated, lookups = self._direct_map(
                        vcpu.id, area, regions, want, level
                    )
                    new_sps += allocated
            kvm.charge(
                faults * c.fault_locked
                + installed * c.spte_install
                + new_sps * c.sp_alloc
                + lookups * c.host_level_lookup
            )
        if stale:
            mn.retry(vcpu, g, end)
            return g
        return self._fault_exit(vcpu, faults, b.nbacked(), end - g, g, end)

    def _direct_map(
        self, vcpu: int, area: Area, regions: np.ndarray, want: np.ndarray, level: np.ndarray
    ) -> tuple[int, int, int, int]:
        """``__direct_map`` for each region (mmu_lock held): from the root down to the
        goal level, allocating and linking direct sps, then the leaf.
        Returns (faults, sptes installed, sps allocated, host level lookups)."""
        faults = installed = allocated = lookups = 0
        l1s = area.first_l1 + regions - area.region0
        small: list[int] = []
        for i, (r, l1, lvl) in enumerate(
            zip(regions.tolist(), l1s.tolist(), level.tolist(), strict=True)
        ):
            if lvl > 1:
                lookups += 1  # host_pfn_mapping_level: lpage_info allows a huge leaf
            l2 = int(self.gpt.parent[l1])
            if lvl == 3:
                sp3, new = self.ensure_path(vcpu, int(self.gpt.parent[l2]))
                allocated += new
                e3 = (r >> LEVEL_SHIFT) & (PTES_PER_TABLE - 1)
                if self.sp_sptes[sp3, e3]:
                    continue  # an earlier region of the batch mapped this GiB
                if not self._child_linked(l2, sp3):  # else disallowed_hugepage_adjust
                    installed += self._set_huge_spte(sp3, e3)
                    faults += 1
                    continue
                lvl = 2
            if lvl == 2:
                sp2, new = self.ensure_path(vcpu, l2)
                allocated += new
                if not self._child_linked(l1, sp2):
                    installed += self._set_huge_spte(sp2, r & (PTES_PER_TABLE - 1))
                    faults += 1
                    continue
            small.append(i)
        if small:
            idx = np.array(small)
            f, n, a = self._fetch(vcpu, l1s[idx], want[idx])
            faults, installed, allocated = faults + f, installed + n, allocated + a
        return faults, installed, allocated, lookups

    def _child_linked(self, gpt: int, parent: int) -> bool:
        """The entry for ``gpt`` in ``parent`` links a valid lower sp (a non-leaf spte)."""
        sp = int(self.gpt_sp[gpt])
        return self.valid1(sp) and int(self.sp_parent[sp]) == parent

    def _set_huge_spte(self, sp: int, entry: int) -> int:
        """``mmu_set_spte`` of a 2 MiB / 1 GiB leaf at ``entry`` of ``sp`` and its
        ``rmap_add``. Returns 1 if it was new."""
        if self.sp_sptes[sp, entry]:
            return 0
        lvl = int(self.sp_level[sp])
        gfn = int(self.sp_map_base[sp]) + (entry << (LEVEL_SHIFT * (lvl - 1)))
        self.sp_sptes[sp, entry] = True
        self.sp_nr[sp] += 1
        if lvl == 2:
            self.rmap_2m[gfn >> LEVEL_SHIFT] += 1
        else:
            self.rmap_1g[gfn >> (2 * LEVEL_SHIFT)] += 1
        return 1

    def extra_stats(self) -> dict[str, float]:
        """Live leaf sptes per size, as the kernel's ``pages_4k/2m/1g`` stats."""
        return {
            "pages_4k": float(self.rmap_count.sum(dtype=np.int64)),
            "pages_2m": float(self.rmap_2m.sum(dtype=np.int64)),
            "pages_1g": float(self.rmap_1g.sum(dtype=np.int64)),
        }
