"""Host-side table walks of the region MMU: chunked, charged through mmu_lock, with
lock-break (``tdp_mmu_iter_cond_resched`` / ``stage2_apply_range``'s ``cond_resched_lock``).

A walk takes the cost of each region from a ``cost`` function and applies the state
change of the regions it finished with an ``apply`` function, chunk by chunk, so a
lock-break leaves the tree exactly as far changed as the kernel's walk would have got.
Every range operation of the region MMU and of its policies (collapse, in-place recovery)
is one walk.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench.model.region.state import GIB_REGIONS, REGION_PAGES, RegionState

WALK_CHUNK = 512  # regions costed and applied per step of a host walk (1 GiB)
WALK_GROUP = 16  # regions between two cond_resched checks of a walk


class RegionWalk(RegionState):
    """The walk primitive and the cost of visiting tables."""

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
        kvm = self.kvm
        lock = kvm.mmu_lock
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
                kvm.flush_remote_tlbs_if_dirty()
                lock.cond_resched()
                if alive is not None and not alive():
                    return False
        return True

    def table_walk(self, sl: slice) -> np.ndarray:
        """ns to visit each region's level-2 entry and, under a table, its 512 entries."""
        c = self.kvm.costs
        return c.tdp_walk * (1 + self.pt[sl] * REGION_PAGES).astype(np.float64)
