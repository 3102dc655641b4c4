"""The x86 shadow MMU's state in NumPy arrays, and the primitives policies compose.

One row per shadow page (``struct kvm_mmu_page``), indexed by creation order, which is
also ``active_mmu_pages`` order (the newest sp sits at the list head). Leaf sptes are a
``[sp, 512]`` bitmap; the rmap is kept as a per-gfn count of leaf sptes, and the sps that
map a gfn are found from ``map_base`` (see ``mmbench.model.shadow.guest_tables``).
``parent_ptes`` is a single parent link, as each guest table here has one parent.

Primitives charge the arch backend's cost table to the calling actor's clock; the ones
that walk many pages take ``lock_break`` and give mmu_lock away at item boundaries when a
vCPU waits, then restart their walk as the kernel's ``goto restart`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from mmbench.model.shadow.guest_tables import LEVEL_SHIFT, PTES_PER_TABLE, GuestPageTables

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm
    from mmbench.model.memslots import Memslot

Predicate = Callable[[np.ndarray], np.ndarray]


def scatter_add(arr: np.ndarray, idx: np.ndarray, sign: int = 1) -> None:
    """``arr[idx] += sign`` counting repeated indices; ``np.add.at`` is slow, so pick a
    loop, a sort or a bincount by size."""
    n = len(idx)
    if n == 0:
        return
    if n <= 16:
        for i in idx.tolist():
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


WALK_WINDOW = 64  # sps costed and applied per step of a walk

# make_mmu_pages_available(): below KVM_MIN_FREE_MMU_PAGES free, reclaim up to
# KVM_REFILL_PAGES free (arch/x86/include/asm/kvm_host.h).
KVM_MIN_FREE_MMU_PAGES = 5
KVM_REFILL_PAGES = 25
# kvm_mmu_calculate_default_mmu_pages(): 20 sps per mille of memslot pages, at least 64.
KVM_PERMILLE_MMU_PAGES = 20
KVM_MIN_ALLOC_MMU_PAGES = 64


class ShadowMmu:
    """``kvm->arch`` for the shadow MMU: sps, sptes, rmaps, lpage_info, mmu_valid_gen."""

    def __init__(self, kvm: Kvm, gpt: GuestPageTables, max_gfn: int, nr_vcpus: int) -> None:
        self.kvm = kvm
        self.gpt = gpt
        self.max_gfn = max_gfn
        self.n = 0
        self._alloc_arrays(max(64, gpt.count * 2))
        self.gpt_sp = np.full(gpt.count, -1, dtype=np.int32)
        self.rmap_count = np.zeros(max_gfn, dtype=np.uint16)
        self.lpage_disallow = np.zeros((max_gfn >> LEVEL_SHIFT) + 1, dtype=np.int32)
        self.mmu_valid_gen = 0
        self.tlbs_dirty = False
        self.vcpu_root = np.full(nr_vcpus, -1, dtype=np.int32)
        # the guest process (CR3) each vCPU runs: vCPU v starts on process v
        self.vcpu_process = np.arange(nr_vcpus, dtype=np.int32)
        # kvm->arch.n_used_mmu_pages / n_max_mmu_pages; 0: no limit (set by the VM API)
        self.n_used_mmu_pages = 0
        self.n_max_mmu_pages = 0
        self.trace = False  # record the sp count over time (series "mmu_used_pages")

    # -- storage -------------------------------------------------------------------------
    def _alloc_arrays(self, cap: int) -> None:
        """Arrays have one extra row: index -1 is a sentinel sp that is never alive, so
        "no sp" (-1) needs no special case in vectorized lookups."""
        self.cap = cap
        cap += 1
        self.sp_gpt = np.full(cap, -1, dtype=np.int32)
        self.sp_gfn = np.zeros(cap, dtype=np.int64)
        self.sp_level = np.zeros(cap, dtype=np.int8)
        self.sp_gen = np.zeros(cap, dtype=np.int64)
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
        old = {k: v for k, v in vars(self).items() if k.startswith("sp_")}
        n = self.cap
        self._alloc_arrays(self.cap * 2)
        for k, v in old.items():
            getattr(self, k)[:n] = v[:n]

    # -- lookups -------------------------------------------------------------------------
    def is_obsolete(self, sps: np.ndarray) -> np.ndarray:
        return self.sp_gen[sps] != self.mmu_valid_gen

    def valid(self, sps: np.ndarray) -> np.ndarray:
        """Usable for new mappings: alive, not role.invalid, current generation."""
        return self.sp_alive[sps] & ~self.sp_invalid[sps] & (self.sp_gen[sps] == self.mmu_valid_gen)

    def valid1(self, sp: int) -> bool:
        """``valid`` for one sp, without array overhead (hot in the fault path)."""
        return bool(
            sp >= 0
            and self.sp_alive[sp]
            and not self.sp_invalid[sp]
            and self.sp_gen[sp] == self.mmu_valid_gen
        )

    def root_usable(self, vcpu: int) -> bool:
        return self.valid1(int(self.vcpu_root[vcpu]))

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

    def active_mmu_pages(self) -> np.ndarray:
        """Every sp on ``kvm->arch.active_mmu_pages``, from the head (newest) to the tail."""
        return np.flatnonzero(self.sp_alive[: self.n])[::-1]

    def leaf_sps_mapping(self, gfn0: int, gfn1: int) -> np.ndarray:
        """Leaf sps with a spte slot in ``[gfn0, gfn1)`` (what the rmaps point to)."""
        n = self.n
        base = self.sp_map_base[:n]
        hit = self.sp_alive[:n] & (self.sp_level[:n] == 1)
        hit &= (base < gfn1) & (base + PTES_PER_TABLE > gfn0)
        return np.flatnonzero(hit)

    # -- building: what a page fault does --------------------------------------------------
    def kvm_mmu_get_pages(self, gpts: np.ndarray) -> tuple[np.ndarray, int]:
        """``kvm_mmu_get_page`` for each gpt: the valid sp shadowing it, allocating the
        missing ones (``mmu_cache_miss``); obsolete and invalid sps are never reused.
        Returns (sps, number allocated)."""
        sps = self.gpt_sp[gpts]
        need = ~self.valid(sps)
        k = int(need.sum())
        if not k:
            return sps, 0
        while self.n + k > self.cap:
            self._grow()
        new = np.arange(self.n, self.n + k, dtype=np.int32)
        self.n += k
        g = gpts[need]
        self.sp_gpt[new] = g
        self.sp_gfn[new] = self.gpt.gfn[g]
        self.sp_level[new] = self.gpt.level[g]
        self.sp_gen[new] = self.mmu_valid_gen
        self.sp_alive[new] = True
        self.n_used_mmu_pages += k
        self._record_used()
        self.sp_map_base[new] = self.gpt.map_base[g]
        self.sp_accessed[new] = True
        self.gpt_sp[g] = new
        # account_shadowed(): the guest table is write-protected; no huge page over it
        scatter_add(self.lpage_disallow, self.sp_gfn[new] >> LEVEL_SHIFT)
        self.sp_accounted[new] = True
        self.kvm.stats.vm["mmu_cache_miss"] += k
        sps = sps.copy()
        sps[need] = new
        return sps, k

    def kvm_mmu_get_page(self, gpt: int) -> tuple[int, bool]:
        sp = int(self.gpt_sp[gpt])
        if self.valid1(sp):
            return sp, False
        sps, k = self.kvm_mmu_get_pages(np.array([gpt]))
        return int(sps[0]), bool(k)

    def link_shadow_pages(self, sps: np.ndarray, parents: np.ndarray) -> None:
        """Point each parent's spte at its child sp (``link_shadow_page``)."""
        old = self.sp_parent[sps]
        moved = old != parents
        if not moved.any():
            return
        scatter_add(self.sp_nr, old[moved & (old >= 0)], -1)
        self.sp_parent[sps[moved]] = parents[moved]
        scatter_add(self.sp_nr, parents[moved])

    def link_shadow_page(self, sp: int, parent: int) -> None:
        old = int(self.sp_parent[sp])
        if old == parent:
            return
        if old >= 0:
            self.sp_nr[old] -= 1
        self.sp_parent[sp] = parent
        self.sp_nr[parent] += 1

    def ensure_path(self, vcpu: int, gpt: int) -> tuple[int, int]:
        """Find or build, and link, the sps from the vCPU's root down to ``gpt``.
        Returns (sp of gpt, sps allocated)."""
        parent, allocated = int(self.vcpu_root[vcpu]), 0
        for g in self.gpt.path(gpt)[1:]:
            sp, new = self.kvm_mmu_get_page(g)
            allocated += new
            self.link_shadow_page(sp, parent)
            parent = sp
        return parent, allocated

    def mmu_alloc_root(self, vcpu: int) -> int:
        """``mmu_alloc_roots``: load (or build) the root for the vCPU's CR3."""
        sp, new = self.kvm_mmu_get_page(int(self.gpt.roots[self.vcpu_process[vcpu]]))
        self.sp_root_count[sp] += 1
        self.sp_accessed[sp] = True  # a root has no parent_pte: loading CR3 is its access
        self.vcpu_root[vcpu] = sp
        return int(new)

    def kvm_mmu_unload(self, vcpu: int) -> int:
        """Drop the vCPU's root reference; free it if it was zapped while in use."""
        root = int(self.vcpu_root[vcpu])
        self.vcpu_root[vcpu] = -1
        if root < 0:
            return 0
        self.sp_root_count[root] -= 1
        if self.sp_root_count[root] == 0 and self.sp_invalid[root] and self.sp_alive[root]:
            self.sp_alive[root] = False
            self.n_used_mmu_pages -= 1
            self._record_used()
            return 1
        return 0

    def map_leaf_sptes(self, leaves: np.ndarray, fill: np.ndarray) -> int:
        """Install the sptes set in ``fill`` (one 512-wide row per leaf sp) and add them
        to the rmaps. Returns how many were new."""
        rows = self.sp_sptes[leaves]
        new = fill & ~rows
        r, col = np.nonzero(new)
        if not len(r):
            return 0
        self.sp_sptes[leaves] = rows | fill
        # distinct leaves map distinct 2 MiB runs, so these gfns and leaves are unique
        self.rmap_count[self.sp_map_base[leaves][r] + col] += 1
        self.sp_nr[leaves] += new.sum(axis=1, dtype=np.int32)
        return len(r)

    # -- zapping -------------------------------------------------------------------------
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
        sps = sps[self.sp_alive[sps] & ~self.sp_invalid[sps]]
        if not len(sps):
            return 0
        leaves = sps[self.sp_level[sps] == 1]
        dropped = 0
        if len(leaves):
            rows, cols = np.nonzero(self.sp_sptes[leaves])
            gfns = self.sp_map_base[leaves][rows] + cols
            dropped = len(gfns)
            if dropped:
                bases = self.sp_map_base[leaves]
                if len(np.unique(bases)) == len(bases):  # distinct runs: gfns are unique
                    self.rmap_count[gfns] -= 1
                else:
                    scatter_add(self.rmap_count, gfns, -1)
            self.sp_sptes[leaves] = False
        # unlink children: they stay on the list, unreachable, until zapped or relinked
        n = self.n
        zapped = np.zeros(n, dtype=bool)
        zapped[sps] = True
        par = self.sp_parent[:n]
        orphans = np.flatnonzero((par >= 0) & zapped[np.maximum(par, 0)])
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
        in_use = self.sp_root_count[sps] > 0
        self.sp_invalid[sps[in_use]] = True
        self.sp_alive[sps[~in_use]] = False
        self.n_used_mmu_pages -= int((~in_use).sum())
        self._record_used()
        self.tlbs_dirty = True
        if in_use.any():  # a root in use: its vCPUs must reload before they run again
            self.kvm.reload_remote_mmus()
        st = self.kvm.stats.vm
        st["mmu_shadow_zapped"] += len(sps)
        st["sptes_zapped"] += dropped
        return dropped

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
        """Walk ``candidates`` (list order) and prepare-zap each, under mmu_lock.

        Skips invalid roots still in use. With ``lock_break`` the walk gives the lock away
        when a vCPU waits (after at least ``min_batch`` zaps), optionally flushing remote
        TLBs first, and restarts: ``rescan(since)`` returns sps created since index
        ``since`` that the walk must also visit (a walk from the list head meets them).
        Returns the number of sps zapped.
        """
        lock = self.kvm.mmu_lock
        todo = np.asarray(candidates, dtype=np.int64)
        zapped = 0
        seen_n = self.n
        while len(todo):
            # windows even without lock-break: state changes land as the walk goes, so
            # vCPUs see their sptes vanish (and stall on the lock) during a long zap
            s, todo = todo[:WALK_WINDOW], todo[WALK_WINDOW:]
            keep = self.sp_alive[s] & ~self.sp_invalid[s]
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

    def commit_zap_page(self) -> None:
        """``kvm_mmu_commit_zap_page``: flush remote TLBs, then the zapped sps are free."""
        self.kvm.flush_remote_tlbs_if_dirty()

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
            total += self._zap_leaf_sptes(gfn, gfn + done)
            gfn += done
            if gfn < gfn1 and lock.needbreak():
                if flush_on_break:
                    self.kvm.flush_remote_tlbs_if_dirty()
                lock.cond_resched()
        return total

    def _zap_leaf_sptes(self, gfn0: int, gfn1: int) -> int:
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
            self.kvm.stats.vm["sptes_zapped"] += dropped
        return dropped

    def created_since(self, since: int) -> np.ndarray:
        """sps allocated after index ``since``, newest first (what a restarted walk from
        the list head meets first)."""
        return since + np.flatnonzero(self.sp_alive[since : self.n])[::-1]

    def pages_with_gfn_in(self, slot: Memslot) -> np.ndarray:
        """sps that shadow a guest table inside ``slot``: ``for_each_valid_sp(gfn)`` for
        every gfn of the slot; charges one hash-bucket lookup per gfn."""
        self.kvm.charge(slot.npages * self.kvm.costs.rmap_walk)
        n = self.n
        hit = self.sp_alive[:n] & (self.sp_gfn[:n] >= slot.base_gfn)
        hit &= self.sp_gfn[:n] < slot.end_gfn
        return np.flatnonzero(hit)

    def kvm_clear_all_lpage_info(self) -> None:
        """Forget every disallow count; obsolete sps will not unaccount on zap."""
        self.lpage_disallow[:] = 0
        self.sp_accounted[: self.n] = False

    # -- reclaim at n_max_mmu_pages -------------------------------------------------------
    @staticmethod
    def default_mmu_pages(nr_memslot_pages: int) -> int:
        """``kvm_mmu_calculate_default_mmu_pages()``: what KVM allows without
        ``KVM_SET_NR_MMU_PAGES``."""
        return max(nr_memslot_pages * KVM_PERMILLE_MMU_PAGES // 1000, KVM_MIN_ALLOC_MMU_PAGES)

    def kvm_mmu_change_mmu_pages(self, nr: int) -> None:
        """``KVM_SET_NR_MMU_PAGES``: set the limit, reclaiming down to it if it is exceeded
        (the caller holds mmu_lock if sps exist)."""
        self.n_max_mmu_pages = nr
        if self.n_used_mmu_pages > nr:
            self.free_some_pages(self.n_used_mmu_pages - nr)

    def make_mmu_pages_available(self, need: int = 1) -> int:
        """``make_mmu_pages_available()``, called under mmu_lock before a fault allocates:
        with fewer than ``KVM_MIN_FREE_MMU_PAGES`` free (or fewer than the ``need`` sps a
        fault batch will allocate), reclaim until ``KVM_REFILL_PAGES`` are free. Returns
        the sps zapped."""
        if not self.n_max_mmu_pages:
            return 0
        avail = self.n_max_mmu_pages - self.n_used_mmu_pages
        if avail >= max(KVM_MIN_FREE_MMU_PAGES, need):
            return 0
        return self.free_some_pages(max(KVM_REFILL_PAGES, need) - avail)

    def free_some_pages(self, nr_to_zap: int) -> int:
        """The reclaim loop (``__kvm_mmu_free_some_pages`` in 2009,
        ``kvm_mmu_zap_oldest_mmu_pages`` today): the run's reclaim policy picks victims
        (``mmbench_reclaim``; the arch's FIFO is the default), they are zapped and counted
        in ``mmu_recycled``, until ``nr_to_zap`` pages are free or nothing is left to pick.
        A root in use is only made invalid (freed when its last vCPU unloads it), so it
        frees nothing now: ``mmu_recycled_roots`` counts those. Caller holds mmu_lock."""
        kvm = self.kvm
        st = kvm.stats.vm
        goal = self.n_used_mmu_pages - nr_to_zap
        zapped = 0
        while self.n_used_mmu_pages > goal:
            victims = kvm.hook.mmbench_reclaim(kvm=kvm, nr_to_zap=self.n_used_mmu_pages - goal)
            if victims is None:
                break
            victims = np.asarray(victims, dtype=np.int64)
            victims = victims[self.sp_alive[victims] & ~self.sp_invalid[victims]]
            _, first = np.unique(victims, return_index=True)
            victims = victims[np.sort(first)]
            if not len(victims):
                break
            in_use = int((self.sp_root_count[victims] > 0).sum())
            done = self.zap_pages(victims)
            zapped += done
            st["mmu_recycled"] += done
            st["mmu_recycled_roots"] += in_use
        if zapped:
            self.commit_zap_page()
            if self.trace:
                kvm.stats.series["mmu_recycled"].append((kvm.engine.now, st["mmu_recycled"]))
            kvm.hook.mmbench_mmu_pages_reclaimed(kvm=kvm, zapped=zapped)
        return zapped

    def oldest_mmu_pages(self, nr: int, skip_roots: bool = False) -> np.ndarray:
        """The ``nr`` zappable sps nearest the tail of ``active_mmu_pages`` (oldest first);
        with ``skip_roots``, none with ``root_count != 0``."""
        n = self.n
        ok = self.sp_alive[:n] & ~self.sp_invalid[:n]
        if skip_roots:
            ok &= self.sp_root_count[:n] == 0
        return np.flatnonzero(ok)[:nr]

    def mark_accessed(self, sps: np.ndarray) -> None:
        """The CPU's page walk sets the accessed bit of every parent_pte on the way down:
        ``sp_accessed`` of the sps ``sps`` and of their ancestors below the root."""
        sps = np.asarray(sps)
        while len(sps):
            self.sp_accessed[sps] = True
            up = self.sp_parent[sps]
            sps = np.unique(up[up >= 0])

    def test_and_clear_accessed(self, sps: np.ndarray) -> np.ndarray:
        """``kvm_mmu_test_and_clear_pte_active()`` of the seed 004 RFC, for each sp: was it
        accessed since the last scan (parent_pte accessed bit; a root counts as accessed
        while in use)? Clears the bits; charges one scan step per sp."""
        sps = np.asarray(sps, dtype=np.int64)
        accessed = self.sp_accessed[sps] | (self.sp_root_count[sps] > 0)
        self.sp_accessed[sps] = False
        self.kvm.charge(len(sps) * self.kvm.costs.sp_scan)
        return accessed

    def kvm_mmu_new_cr3(self, vcpu: int, process: int) -> int:
        """The guest switched the vCPU to ``process``'s page tables (a CR3 load):
        ``kvm_mmu_new_cr3`` drops the current root; the next entry loads the new one.
        Returns the sps freed."""
        self.vcpu_process[vcpu] = process
        return self.kvm_mmu_unload(vcpu)

    def _record_used(self) -> None:
        if self.trace:
            self.kvm.stats.series["mmu_used_pages"].append(
                (self.kvm.engine.now, self.n_used_mmu_pages)
            )

    # -- figures ---------------------------------------------------------------------------
    def nr_live_sps(self) -> int:
        return int(self.sp_alive[: self.n].sum())
