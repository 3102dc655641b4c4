"""The shadow MMU's sp table: one row per ``struct kvm_mmu_page``, and its lookups.

Rows are indexed by creation order, which is also ``active_mmu_pages`` order (the newest
sp sits at the list head). Leaf sptes are a ``[sp, 512]`` bitmap; the rmap is kept as a
per-gfn count of leaf sptes, and the sps that map a gfn are found from ``map_base`` (see
``mmbench.model.shadow.guest_tables``). ``parent_ptes`` is a single parent link, as each
guest table here has one parent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmbench.model.shadow.guest_tables import (
    LEVEL_SHIFT,
    PTES_PER_TABLE,
    GuestPageTables,
)

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm
    from mmbench.model.memslots import Memslot


def scatter_add(arr: np.ndarray, idx: np.ndarray, sign: int = 1) -> None:
    """``arr[idx] += sign`` counting repeated indices; ``np.add.at`` is slow, so pick a
    loop, a sort or a bincount by size."""
    n = len(idx)
    if n == 0:
        return
    if n <= 16:
        at = idx.tolist()
        first = at[0]
        if all(i == first for i in at):  # (a batch's sps mostly share their parent)
            arr[first] += sign * n
            return
        for i in at:
            arr[i] += sign
        return
    if n > len(arr) // 8:
        cnt = np.bincount(idx, minlength=len(arr))
        u = np.flatnonzero(cnt)
        cnt = cnt[u]
    else:
        u, cnt = np.unique(idx, return_counts=True)
    if sign > 0:
        arr[u] += cnt.astype(arr.dtype)
    else:
        arr[u] -= cnt.astype(arr.dtype)


class SpTable:
    """``kvm->arch`` for the shadow MMU: sps, sptes, rmaps, lpage_info, mmu_valid_gen.

    ``sp_sptes`` of a level-1 sp are its 4 KiB leaf sptes. An sp above level 1 holds leaf
    sptes only on an MMU with ``huge_leaves`` (the legacy MMU's direct maps with EPT,
    ``mmbench.model.shadow.direct``): bit i is a 2 MiB (level 2) or 1 GiB (level 3) leaf
    at entry i, counted in ``rmap_2m`` / ``rmap_1g`` (the rmaps of ``slot->arch.rmap[1]``
    and ``[2]``) and in ``sp_nr`` beside the linked children.
    """

    huge_leaves = False  # sps above level 1 may hold leaf sptes (direct maps)
    direct = False  # role.direct: sps map the GPA space, not guest tables

    def __init__(self, kvm: Kvm, gpt: GuestPageTables, max_gfn: int, nr_vcpus: int) -> None:
        self.kvm = kvm
        self.gpt = gpt
        self.max_gfn = max_gfn
        self.n = 0
        self._alloc_arrays(max(64, gpt.count * 2))
        self.gpt_sp = np.full(gpt.count, -1, dtype=np.int32)
        # the same counts as rmap_count, one 512-wide row per 2 MiB region (a leaf sp's
        # map_base is 512-aligned, so a leaf's rmap counts are one row); the store is
        # padded to whole regions
        regions = -(-max_gfn // PTES_PER_TABLE)
        self.rmap_rows = np.zeros((regions, PTES_PER_TABLE), dtype=np.uint16)
        self.rmap_count = self.rmap_rows.reshape(-1)[:max_gfn]
        self.rmap_2m = np.zeros((max_gfn >> LEVEL_SHIFT) + 1, dtype=np.int32)
        self.rmap_1g = np.zeros((max_gfn >> (2 * LEVEL_SHIFT)) + 1, dtype=np.int32)
        self.lpage_disallow = np.zeros((max_gfn >> LEVEL_SHIFT) + 1, dtype=np.int32)
        self.mmu_valid_gen = 0
        self.tlbs_dirty = False
        self.zapped_unflushed = False  # leaf sptes zapped by rmap walks, not yet flushed
        self.vcpu_root = np.full(nr_vcpus, -1, dtype=np.int32)
        # the guest process (CR3) each vCPU runs: vCPU v starts on process v
        self.vcpu_process = np.arange(nr_vcpus, dtype=np.int32)
        # kvm->arch.n_used_mmu_pages / n_max_mmu_pages; 0: no limit (set by the VM API)
        self.n_used_mmu_pages = 0
        self.n_max_mmu_pages = 0
        self.trace = False  # record the sp count over time (series "mmu_used_pages")
        self._alive_floor = 0  # no live sp below this row (``ShadowZap._oldest_alive``)

    # -- storage -------------------------------------------------------------------------
    def _alloc_arrays(self, cap: int) -> None:
        """Arrays have one extra row: index -1 is a sentinel sp that is never alive, so
        "no sp" (-1) needs no special case in vectorized lookups."""
        self.cap = cap
        cap += 1
        self.sp_gfn = np.zeros(cap, dtype=np.int64)
        self.sp_level = np.zeros(cap, dtype=np.int8)
        self.sp_gen = np.zeros(cap, dtype=np.int64)
        # sp_gen while alive and not role.invalid, else -1: ``valid`` in one compare
        self.sp_usable_gen = np.full(cap, -1, dtype=np.int64)
        self.sp_alive = np.zeros(cap, dtype=bool)
        self.sp_invalid = np.zeros(cap, dtype=bool)
        self.sp_root_count = np.zeros(cap, dtype=np.int32)
        self.sp_parent = np.full(cap, -1, dtype=np.int32)
        self.sp_map_base = np.full(cap, -1, dtype=np.int64)
        self.sp_nr = np.zeros(cap, dtype=np.int32)  # present sptes (leaf) or linked children
        self.sp_accounted = np.zeros(cap, dtype=bool)
        self.sp_accessed = np.zeros(cap, dtype=bool)
        self.sp_sptes = np.zeros((cap, PTES_PER_TABLE), dtype=bool)

    def _grow(self) -> None:
        """Four times the rows: sps are never renumbered (ids are list order), so a
        ROM-access run that zaps everything again and again grows the table to ~100 k
        rows; fewer, larger steps copy less (untouched rows cost no memory). A freed sp
        holds no sptes (its zap cleared them), so the 512-wide spte rows are copied
        only from the oldest live sp on: the rows below stay zero, and untouched."""
        old = {k: v for k, v in vars(self).items() if k.startswith("sp_")}
        n = self.cap
        lo = self._oldest_alive()
        self._alloc_arrays(self.cap * 4)
        for k, v in old.items():
            if k == "sp_sptes":
                self.sp_sptes[lo:n] = v[lo:n]
            else:
                getattr(self, k)[:n] = v[:n]

    def _oldest_alive(self) -> int:
        """The lowest row of a live sp (``n`` if none). Rows only become alive when
        allocated past ``n``, so the answer never decreases and is kept between calls;
        each call scans only from the last answer."""
        lo, n = self._alive_floor, self.n
        if lo < n and not self.sp_alive[lo]:
            rest = self.sp_alive[lo:n]
            lo = lo + int(np.argmax(rest)) if rest.any() else n
        self._alive_floor = lo
        return lo

    def _record_used(self) -> None:
        """Append ``n_used_mmu_pages`` to the "mmu_used_pages" series when tracing."""
        if self.trace:
            self.kvm.stats.series["mmu_used_pages"].append(
                (self.kvm.engine.now, self.n_used_mmu_pages)
            )

    # -- per-sp predicates ---------------------------------------------------------------
    def is_obsolete(self, sps: np.ndarray) -> np.ndarray:
        """``is_obsolete_sp``: created in an older ``mmu_valid_gen``."""
        return self.sp_gen[sps] != self.mmu_valid_gen

    def valid(self, sps: np.ndarray) -> np.ndarray:
        """Usable for new mappings: alive, not role.invalid, current generation."""
        return self.sp_usable_gen[sps] == self.mmu_valid_gen

    def valid1(self, sp: int) -> bool:
        """``valid`` for one sp, without array overhead (hot in the fault path)."""
        return sp >= 0 and int(self.sp_usable_gen[sp]) == self.mmu_valid_gen

    def zappable(self, sps: np.ndarray) -> np.ndarray:
        """On ``active_mmu_pages`` and not yet zapped: alive and not role.invalid."""
        return self.sp_alive[sps] & ~self.sp_invalid[sps]

    def root_in_use(self, sps: np.ndarray) -> np.ndarray:
        """``sp->root_count != 0``: a vCPU runs on it; zapping it only makes it invalid."""
        return self.sp_root_count[sps] > 0

    def is_leaf(self, sps: np.ndarray) -> np.ndarray:
        """``sp->role.level == PG_LEVEL_4K``: the sp holds leaf sptes."""
        return self.sp_level[sps] == 1

    def root_usable(self, vcpu: int) -> bool:
        """The vCPU's root is valid (``is_page_fault_stale`` would not reload it)."""
        return self.valid1(int(self.vcpu_root[vcpu]))

    # -- reachability: what a vCPU can run on natively -------------------------------------
    def reachable_leaves(self, vcpu: int, l1: np.ndarray) -> np.ndarray:
        """The leaf sp each level-1 gpt resolves to through vCPU ``vcpu``'s root, or -1."""
        root = int(self.vcpu_root[vcpu])
        if not self.valid1(root):
            return np.full(len(l1), -1, dtype=np.int32)
        sps = self.gpt_sp[l1]
        pg = self.gpt.parent[l1]
        psp = self.gpt_sp[pg]
        ok = self.valid(sps) & (self.sp_parent[sps] == psp)
        # the levels above: few distinct tables, checked one by one
        for g in set(pg[ok].tolist()):
            if not self._linked_to(int(self.gpt_sp[g]), g, root):
                ok &= pg != g
        return np.where(ok, sps, -1)

    def _linked_to(self, sp: int, gpt: int, root: int) -> bool:
        """Is ``sp`` (shadowing ``gpt``) valid and linked all the way up to ``root``?"""
        while True:
            if not self.valid1(sp):
                return False
            parent_gpt = int(self.gpt.parent[gpt])
            if parent_gpt < 0:
                return sp == root
            parent = int(self.sp_parent[sp])
            if parent != int(self.gpt_sp[parent_gpt]):
                return False
            sp, gpt = parent, parent_gpt

    # -- lists and hash lookups ----------------------------------------------------------
    def active_mmu_pages(self) -> np.ndarray:
        """Every sp on ``kvm->arch.active_mmu_pages``, from the head (newest) to the tail."""
        return np.flatnonzero(self.sp_alive[: self.n])[::-1]

    def created_since(self, since: int) -> np.ndarray:
        """sps allocated after index ``since``, newest first (what a restarted walk from
        the list head meets first)."""
        return since + np.flatnonzero(self.sp_alive[since : self.n])[::-1]

    def add_leaf_rmaps(self, leaves: np.ndarray | slice, sptes: np.ndarray, sign: int) -> None:
        """``rmap_add`` (``sign`` 1) or ``rmap_remove`` (-1) of the sptes set in ``sptes``
        (one 512-wide row per leaf sp of ``leaves``, which map distinct 2 MiB runs; or
        ``np.True_``: every spte of each)."""
        at = self.sp_map_base[leaves] >> LEVEL_SHIFT
        if sptes is np.True_:
            lo, hi = int(at.min()), int(at.max()) + 1
            if hi - lo == len(at):  # distinct runs spanning as many regions: a slice
                at = slice(lo, hi)
        if sign > 0:
            self.rmap_rows[at] += sptes
        else:
            self.rmap_rows[at] -= sptes

    def leaf_sps_mapping(self, gfn0: int, gfn1: int) -> np.ndarray:
        """Leaf sps with a spte slot in ``[gfn0, gfn1)`` (what the rmaps point to)."""
        n = self.n
        base = self.sp_map_base[:n]
        hit = self.sp_alive[:n] & (self.sp_level[:n] == 1)
        hit &= (base < gfn1) & (base + PTES_PER_TABLE > gfn0)
        return np.flatnonzero(hit)

    def huge_leaf_gfns(self, sps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The huge leaf sptes of upper-level ``sps``: (row in ``sps``, entry, first gfn
        mapped). Each maps ``512 ** (level - 1)`` gfns from that gfn."""
        rows, cols = np.nonzero(self.sp_sptes[sps])
        lv = self.sp_level[sps][rows].astype(np.int64)
        gfns = self.sp_map_base[sps][rows] + (cols.astype(np.int64) << (LEVEL_SHIFT * (lv - 1)))
        return rows, cols, gfns

    def drop_huge_rmaps(self, levels: np.ndarray, gfns: np.ndarray) -> None:
        """``rmap_remove`` for huge leaves at ``levels`` (2 or 3) mapping from ``gfns``."""
        two = levels == 2
        scatter_add(self.rmap_2m, gfns[two] >> LEVEL_SHIFT, -1)
        scatter_add(self.rmap_1g, gfns[~two] >> (2 * LEVEL_SHIFT), -1)

    def pages_with_gfn_in(self, slot: Memslot) -> np.ndarray:
        """sps that shadow a guest table inside ``slot``: ``for_each_valid_sp(gfn)`` for
        every gfn of the slot; charges one hash-bucket lookup per gfn."""
        self.kvm.charge(slot.npages * self.kvm.costs.rmap_walk)
        n = self.n
        hit = self.sp_alive[:n] & (self.sp_gfn[:n] >= slot.base_gfn)
        hit &= self.sp_gfn[:n] < slot.end_gfn
        return np.flatnonzero(hit)

    def kvm_clear_all_lpage_info(self) -> None:
        """``kvm_clear_all_lpage_info``: forget every disallow count; obsolete sps will not
        unaccount on zap."""
        self.lpage_disallow[:] = 0
        self.sp_accounted[: self.n] = False

    def nr_live_sps(self) -> int:
        """sps not yet freed (on the list, or invalid roots still in use)."""
        return int(self.sp_alive[: self.n].sum())
