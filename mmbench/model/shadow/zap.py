"""Zap primitives of the shadow MMU: what a memslot or teardown policy composes.

They charge the arch backend's cost table to the calling actor's clock through mmu_lock
(``MmuLock.work``), so lock-break can cut in between items. Walks over many pages take
``lock_break`` and give mmu_lock away at item boundaries when someone waits
(``cond_resched_rwlock_write``), then restart as the kernel's ``goto restart`` does. State
changes land as a walk goes, so vCPUs see their sptes vanish during a long zap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench.model.shadow.guest_tables import LEVEL_SHIFT, PTES_PER_TABLE
from mmbench.model.shadow.sps import SpTable, scatter_add

Predicate = Callable[[np.ndarray], np.ndarray]

WALK_WINDOW = 64  # sps costed and applied per step of a walk


class ShadowZap(SpTable):
    """``kvm_mmu_prepare_zap_page`` / ``kvm_mmu_commit_zap_page`` and the walks built on
    them (``kvm_mmu_zap_all``, ``kvm_zap_obsolete_pages``, ``kvm_zap_rmapp``)."""

    def zap_cost(self, sps: np.ndarray) -> np.ndarray:
        """ns to zap each sp: unlink it, and drop each spte/child link it holds."""
        c = self.kvm.costs
        return c.zap_sp + self.sp_nr[sps] * c.zap_spte

    def prepare_zap_page(self, sps: np.ndarray) -> int:
        """``kvm_mmu_prepare_zap_page`` for each sp: unlink children and parents, drop
        rmaps; a root still in use becomes role.invalid and stays until its last user
        lets go. Returns the number of leaf sptes dropped. Charges nothing: callers
        charge ``zap_cost`` through the lock so lock-break can cut in."""
        sps = np.asarray(sps, dtype=np.int64)
        sps = sps[self.zappable(sps)]
        if not len(sps):
            return 0
        is_leaf = self.sp_level[sps] == 1
        leaves = sps[is_leaf]
        uppers = sps[~is_leaf]
        dropped = 0
        if len(leaves):
            sptes = self.sp_sptes[leaves]
            dropped = int(np.count_nonzero(sptes))
            if dropped:
                bases = self.sp_map_base[leaves]
                if len(set(bases.tolist())) == len(bases):  # distinct runs: one row each
                    self.add_leaf_rmaps(leaves, sptes, -1)
                else:
                    rows, cols = np.nonzero(sptes)
                    scatter_add(self.rmap_count, bases[rows] + cols, -1)
            self.sp_sptes[leaves] = False
        if self.huge_leaves:
            dropped += self._drop_huge_leaves(uppers)
        # unlink children: they stay on the list, unreachable, until zapped or relinked
        # (only a table above level 1 has children)
        if len(uppers):
            # a linked sp is alive, and so is its parent (a zap unlinks both ways), so
            # only rows from the oldest live sp on can be children: sps are never
            # renumbered, and after a few zap-alls most rows are long dead
            n = self.n
            lo = self._oldest_alive()
            zapped = np.zeros(n - lo, dtype=bool)
            zapped[uppers - lo] = True
            par = self.sp_parent[lo:n]
            orphans = lo + np.flatnonzero((par >= 0) & zapped[np.maximum(par - lo, 0)])
            self.sp_parent[orphans] = -1
        # unlink from parents
        parents = self.sp_parent[sps]
        linked = parents >= 0
        scatter_add(self.sp_nr, parents[linked], -1)
        self.sp_parent[sps] = -1
        self.sp_nr[sps] = 0
        # unaccount_shadowed()
        acc = sps[self.sp_accounted[sps]]
        scatter_add(self.lpage_disallow, self.sp_gfn[acc] >> LEVEL_SHIFT, -1)
        self.sp_accounted[sps] = False
        in_use = self.root_in_use(sps)
        self.sp_invalid[sps[in_use]] = True
        self.sp_alive[sps[~in_use]] = False
        self.sp_usable_gen[sps] = -1
        self.n_used_mmu_pages -= int((~in_use).sum())
        self._record_used()
        self.tlbs_dirty = True
        # a current root in use: its vCPUs must reload before they run again. An obsolete
        # one asks for nothing here: whoever made it obsolete (kvm_mmu_zap_all_fast) has
        # requested the reload ("!is_obsolete_sp()" in __kvm_mmu_prepare_zap_page)
        if (in_use & ~self.is_obsolete(sps)).any():
            self.kvm.reload_remote_mmus()
        st = self.kvm.stats.vm
        st["mmu_shadow_zapped"] += len(sps)
        st["sptes_zapped"] += dropped
        return dropped

    def _drop_huge_leaves(self, uppers: np.ndarray) -> int:
        """The 2 MiB / 1 GiB leaf sptes of zapped upper-level sps leave their rmaps
        (``mmu_page_zap_pte`` -> ``drop_spte``). Returns how many."""
        rows, _, gfns = self.huge_leaf_gfns(uppers)
        if len(rows):
            self.drop_huge_rmaps(self.sp_level[uppers][rows], gfns)
            self.sp_sptes[uppers] = False
        return len(rows)

    def commit_zap_page(self) -> None:
        """``kvm_mmu_commit_zap_page``: flush remote TLBs, then the zapped sps are free."""
        self.kvm.flush_remote_tlbs_if_dirty()

    def zap_pages(
        self,
        candidates: np.ndarray,
        where: Predicate | None = None,
        *,
        lock_break: bool = False,
        min_batch: int = 1,
        flush_on_break: bool = False,
        rescan: Callable[[int], np.ndarray] | None = None,
    ) -> int:
        """Walk ``candidates`` (list order) and prepare-zap each, under mmu_lock: the loop
        of ``kvm_mmu_zap_all`` / ``kvm_zap_obsolete_pages``.

        Skips invalid roots still in use. With ``lock_break`` the walk gives the lock away
        when a vCPU waits (after at least ``min_batch`` zaps, as ``BATCH_ZAP_PAGES``),
        optionally flushing remote TLBs first, and restarts: ``rescan(since)`` returns sps
        created since index ``since`` that the walk must also visit (a walk from the list
        head meets them). Returns the number of sps zapped.
        """
        lock = self.kvm.mmu_lock
        todo = np.asarray(candidates, dtype=np.int64)
        zapped = 0
        seen_n = self.n
        while len(todo):
            # windows even without lock-break: state changes land as the walk goes, so
            # vCPUs see their sptes vanish (and stall on the lock) during a long zap
            s, todo = todo[:WALK_WINDOW], todo[WALK_WINDOW:]
            keep = self.zappable(s)
            if where is not None:
                keep &= where(s)
            s = s[keep]
            if len(s):
                costs = self.zap_cost(s)
                k = min(min_batch, len(s))
                if k > 1:  # no lock-break before min_batch zaps (BATCH_ZAP_PAGES)
                    costs = np.concatenate([[costs[:k].sum()], costs[k:]])
                done = lock.work(costs, lock_break)
                done = len(s) if done == len(costs) else done - 1 + k
                self.prepare_zap_page(s[:done])
                zapped += done
                todo = np.concatenate([s[done:], todo])
            if lock_break and lock.needbreak():
                if flush_on_break:
                    self.kvm.flush_remote_tlbs_if_dirty()
                lock.cond_resched()
                if rescan is not None and self.n > seen_n:
                    todo = np.concatenate([rescan(seen_n), todo])
                    seen_n = self.n
        return zapped

    def kvm_mmu_zap_all(self, *, lock_break: bool = False) -> None:
        """``kvm_mmu_zap_all`` (caller holds mmu_lock): every sp from the list head; with
        lock-break the walk restarts and meets the sps vCPUs built meanwhile."""
        self.zap_pages(self.active_mmu_pages(), lock_break=lock_break, rescan=self.created_since)
        self.commit_zap_page()

    def zap_gfn_range(
        self, gfn0: int, gfn1: int, *, lock_break: bool = False, flush_on_break: bool = True
    ) -> int:
        """``slot_handle_all_level(kvm_zap_rmapp)``: walk the rmaps of every gfn at every
        level and zap the sptes found. Charges a walk per rmap head (4 KiB, 2 MiB and
        1 GiB levels) and a zap per spte. Returns sptes zapped."""
        c = self.kvm.costs
        lock = self.kvm.mmu_lock
        total = 0
        gfn = gfn0
        while gfn < gfn1:
            # items: one per 4 KiB rmap head, plus the 2 MiB/1 GiB heads in the range
            counts = self.rmap_count[gfn:gfn1].astype(np.float64)
            item_ns = c.rmap_walk + counts * c.zap_spte
            upper = ((gfn1 - 1) >> LEVEL_SHIFT) - (gfn >> LEVEL_SHIFT) + 1
            upper += ((gfn1 - 1) >> (2 * LEVEL_SHIFT)) - (gfn >> (2 * LEVEL_SHIFT)) + 1
            item_ns[-1] += upper * c.rmap_walk
            done = lock.work(item_ns, lock_break)
            total += self._zap_rmapp(gfn, gfn + done)
            gfn += done
            if gfn < gfn1 and lock.needbreak():
                if flush_on_break:
                    self.kvm.flush_remote_tlbs_if_dirty()
                lock.cond_resched()
        if self.huge_leaves:
            total += self._zap_huge_rmapp(gfn0, gfn1)
        return total

    def _zap_huge_rmapp(self, gfn0: int, gfn1: int) -> int:
        """``kvm_zap_rmapp`` on the 2 MiB and 1 GiB rmap heads of ``[gfn0, gfn1)`` (their
        walk was charged with the 4 KiB heads): drop every huge leaf found, one
        ``zap_spte`` each. Returns sptes dropped."""
        n = self.n
        up = np.flatnonzero(self.sp_alive[:n] & (self.sp_level[:n] > 1))
        rows, cols, gfns = self.huge_leaf_gfns(up)
        if not len(rows):
            return 0
        lv = self.sp_level[up][rows].astype(np.int64)
        hit = (gfns < gfn1) & (gfns + (1 << (LEVEL_SHIFT * (lv - 1))) > gfn0)
        if not hit.any():
            return 0
        self.kvm.mmu_lock.work(np.full(int(hit.sum()), self.kvm.costs.zap_spte), False)
        sps, cols = up[rows[hit]], cols[hit]
        self.drop_huge_rmaps(lv[hit], gfns[hit])
        self.sp_sptes[sps, cols] = False
        scatter_add(self.sp_nr, sps, -1)
        dropped = len(sps)
        self.tlbs_dirty = True
        self.zapped_unflushed = True
        self.kvm.stats.vm["sptes_zapped"] += dropped
        return dropped

    def _zap_rmapp(self, gfn0: int, gfn1: int) -> int:
        """``kvm_zap_rmapp`` for the 4 KiB rmap heads of ``[gfn0, gfn1)``: drop every
        leaf spte found (costs were charged by the caller). Returns sptes dropped."""
        sps = self.leaf_sps_mapping(gfn0, gfn1)
        dropped = 0
        for sp in sps:  # one or two leaf sps per 2 MiB region
            base = int(self.sp_map_base[sp])
            lo, hi = max(gfn0, base) - base, min(gfn1, base + PTES_PER_TABLE) - base
            row = self.sp_sptes[sp, lo:hi]
            k = int(row.sum())
            if k:
                gfns = base + lo + np.flatnonzero(row)
                self.rmap_count[gfns] -= 1
                row[:] = False
                self.sp_nr[sp] -= k
                dropped += k
        if dropped:
            self.tlbs_dirty = True
            self.zapped_unflushed = True
            self.kvm.stats.vm["sptes_zapped"] += dropped
        return dropped

    def kvm_unmap_gfn_range(self, start: int, end: int, may_block: bool) -> bool:
        """The rmap half of x86 ``kvm_unmap_gfn_range`` for an MMU-notifier range
        (mmu_lock held for write): ``__kvm_rmap_zap_gfn_range`` walks the rmaps of
        ``[start, end)`` at every level with ``kvm_zap_rmap``, yielding (and flushing
        first) when ``may_block`` and someone waits ("KVM: x86/mmu: Honor NEED_RESCHED
        when zapping rmaps and blocking is allowed", 6.13). Returns whether a remote
        TLB flush is owed (``kvm_handle_hva_range`` flushes once, before unlocking)."""
        self.zap_gfn_range(start, end, lock_break=may_block, flush_on_break=True)
        return bool(self.tlbs_dirty)
