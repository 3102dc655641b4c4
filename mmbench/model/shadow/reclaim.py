"""Reclaim at ``n_max_mmu_pages``: the core's accounting, and the views a policy chooses from.

As in cachetools, the core keeps the accounting (``n_used_mmu_pages``, the limit, the
refill goal, zapping the victims, ``mmu_recycled``) and a reclaim policy makes one choice:
which sps to zap (``mmbench_reclaim``). It chooses from views of the list
(``oldest_mmu_pages``) and of the accessed bits (``test_accessed``,
``test_and_clear_accessed``), and the per-sp predicates of ``SpTable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmbench.model.shadow.zap import ShadowZap

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm

# make_mmu_pages_available(): below KVM_MIN_FREE_MMU_PAGES free, reclaim up to
# KVM_REFILL_PAGES free (arch/x86/include/asm/kvm_host.h).
KVM_MIN_FREE_MMU_PAGES = 5
KVM_REFILL_PAGES = 25
# kvm_mmu_calculate_default_mmu_pages(): 20 sps per mille of memslot pages, at least 64.
KVM_PERMILLE_MMU_PAGES = 20
KVM_MIN_ALLOC_MMU_PAGES = 64


def fifo_reclaim(kvm: Kvm[ShadowReclaim], nr_to_zap: int) -> np.ndarray:
    """FIFO reclaim, KVM's from 2007 to 2009 (``__kvm_mmu_free_some_pages`` before seed
    004's RFC): the ``nr_to_zap`` sps at the tail of ``active_mmu_pages``, whatever they
    are, roots in use included (those are only made invalid, and every vCPU reloads).
    The x86-shadow arch's default, and the ``fifo`` policy by name."""
    return kvm.mmu.oldest_mmu_pages(nr_to_zap)


class ShadowReclaim(ShadowZap):
    """``make_mmu_pages_available`` and ``kvm_mmu_zap_oldest_mmu_pages`` over the sp table."""

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
            victims = victims[self.zappable(victims)]
            _, first = np.unique(victims, return_index=True)
            victims = victims[np.sort(first)]
            if not len(victims):
                break
            in_use = int(self.root_in_use(victims).sum())
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

    # -- views for reclaim policies --------------------------------------------------------
    def oldest_mmu_pages(self, nr: int | None = None, skip_roots: bool = False) -> np.ndarray:
        """The ``nr`` (default: all) zappable sps nearest the tail of ``active_mmu_pages``,
        oldest first; with ``skip_roots``, none with ``root_count != 0``."""
        n = self.n
        ok = self.sp_alive[:n] & ~self.sp_invalid[:n]
        if skip_roots:
            ok &= self.sp_root_count[:n] == 0
        return np.flatnonzero(ok)[:nr]

    def mark_accessed(self, sps: np.ndarray) -> None:
        """The CPU's page walk sets the accessed bit of every parent_pte on the way down:
        ``sp_accessed`` of the sps ``sps`` and of their ancestors below the root."""
        sps = np.asarray(sps)
        if not len(sps):
            return
        self.sp_accessed[sps] = True
        # the levels above: a few distinct tables, each walked up once
        parent = self.sp_parent
        seen: set[int] = set()
        for p in set(parent[sps].tolist()):
            while p >= 0 and p not in seen:
                seen.add(p)
                p = int(parent[p])
        if seen:
            self.sp_accessed[list(seen)] = True

    def test_accessed(self, sps: np.ndarray) -> np.ndarray:
        """For each sp, the bit a scan would find: its parent_pte was accessed since the
        last scan, or it is a root in use (which counts as accessed). Charges nothing and
        clears nothing: a policy plans its scan with it."""
        return self.sp_accessed[sps] | self.root_in_use(sps)

    def test_and_clear_accessed(self, sps: np.ndarray) -> np.ndarray:
        """``kvm_mmu_test_and_clear_pte_active()`` of the seed 004 RFC, for each sp:
        ``test_accessed``, then clear the bits; charges one scan step per sp."""
        sps = np.asarray(sps, dtype=np.int64)
        accessed = self.test_accessed(sps)
        self.sp_accessed[sps] = False
        self.kvm.charge(len(sps) * self.kvm.costs.sp_scan)
        return accessed
