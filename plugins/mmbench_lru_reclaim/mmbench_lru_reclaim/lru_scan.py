"""Policy ``lru-scan``: accessed bits from parent_ptes, a scan hand, bounded overscan."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.shadow.mmu import ShadowMmu


class LruScan:
    """LRU-ish reclaim: accessed bits, scan hand, bounded overscan, leaf pages first.

    "KVM: MMU: smarter shadow page reclaim" RFC (seed 004, Max Laier and Avi Kivity,
    2009): ``kvm_mmu_get_inactive_page()``.

    A clock over ``active_mmu_pages`` from ``kvm->arch.scan_hand``, oldest first: each sp
    looked at has its parent_pte accessed bit tested and cleared
    (``kvm_mmu_test_and_clear_pte_active``; a root counts as accessed while in use), and
    the first one not accessed since the last scan is zapped. Overscan is bounded: after
    ``n_used_mmu_pages / overscan`` accessed sps, zap one anyway, preferring a leaf
    (``PT_PAGE_TABLE_LEVEL``) page over directories. A root in use is never zapped.
    """

    name = "lru-scan"
    year = 2009  # seed 004
    archs = ("x86-shadow",)
    options = {"overscan": 4, "prefer_leaf": True}

    def __init__(self, overscan: int = 4, prefer_leaf: bool = True) -> None:
        self.overscan = max(1, overscan)
        self.prefer_leaf = prefer_leaf
        self.scan_hand = 0  # kvm->arch.scan_hand: the sp index the next scan starts at

    @hookimpl
    def mmbench_reclaim(self, kvm: Kvm[ShadowMmu], nr_to_zap: int) -> np.ndarray:
        mmu = kvm.mmu
        order = mmu.oldest_mmu_pages()  # every zappable sp, tail (oldest) first
        if not len(order):
            return order
        start = int(np.searchsorted(order, self.scan_hand))
        ring = np.concatenate([order[start:], order[:start]])
        lap = len(ring)
        in_use = mmu.root_in_use(ring)
        # bits as the scan finds them: this lap as set now, the next lap cleared by this one
        accessed = np.concatenate([mmu.test_accessed(ring), in_use])
        zappable = np.concatenate([~in_use, ~in_use])
        leaf = np.tile(mmu.is_leaf(ring), 2)
        budget = max(1, mmu.n_used_mmu_pages // self.overscan)
        victims: list[int] = []
        pos = 0
        while len(victims) < nr_to_zap and pos < 2 * lap:
            end = min(pos + budget, 2 * lap)
            idle = np.flatnonzero(~accessed[pos:end] & zappable[pos:end])
            if len(idle):
                pick, pos = pos + int(idle[0]), pos + int(idle[0]) + 1
            else:  # overscan: zap one anyway, a leaf page if there is one
                cands = np.flatnonzero(zappable[pos:end] & (leaf[pos:end] | ~self.prefer_leaf))
                if not len(cands):
                    cands = np.flatnonzero(zappable[pos:end])
                if not len(cands):
                    pos = end
                    continue
                pick, pos = pos + int(cands[0]), end
            victims.append(int(ring[pick % lap]))
            zappable[[pick % lap, pick % lap + lap]] = False
        mmu.test_and_clear_accessed(ring[: min(pos, lap)])
        if pos > lap:
            mmu.test_and_clear_accessed(ring[: pos - lap])
        self.scan_hand = int(ring[pos % lap])
        return np.array(victims, dtype=np.int64)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(LruScan)
