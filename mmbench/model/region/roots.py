"""Roots of the x86 TDP MMU and what memslot-delete policies compose on the region MMU.

``kvm_tdp_mmu_invalidate_all_roots`` (v6.12) marks every root invalid: vCPUs asked to
reload (``KVM_REQ_MMU_FREE_OBSOLETE_ROOTS``) drop theirs and load a new, empty root, while
the invalid tree is kept aside until ``kvm_tdp_mmu_zap_invalidated_roots`` tears it down
under the read lock. In the model the tree as it stood is moved into ``invalid_roots``
(copies of the per-region arrays, so a lock-break leaves it exactly half zapped) and the
live arrays start empty; ``root_gen`` is the current roots' generation and
``vcpu_root_gen`` the one each vCPU runs on.

The same module gives the region MMU the names the memslot policies of the legacy MMU
compose, as ``kvm_unmap_gfn_range`` does for both MMUs in the kernel: ``zap_gfn_range``
is ``kvm_tdp_mmu_unmap_gfn_range``, and there are no shadow pages to zap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench.model.memslots import Memslot
from mmbench.model.region.state import GIB_REGIONS, REGION_PAGES, REGION_SHIFT
from mmbench.model.region.unmap import RegionUnmap

TREE = ("huge", "pt", "n4k", "gb", "l2")  # what an invalid root still holds


class RegionRoots(RegionUnmap):
    """Root generations, invalid roots, and the legacy MMU's zap names."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.root_gen = 0
        self.vcpu_root_gen = np.zeros(len(self.kvm.vcpus), dtype=np.int64)
        self.invalid_roots: list[dict[str, np.ndarray]] = []

    # -- roots -------------------------------------------------------------------------------
    def kvm_mmu_unload(self, vcpu: int) -> int:
        """``kvm_mmu_free_obsolete_roots`` + ``kvm_mmu_load``: the vCPU lets go of an
        invalid root and runs on a current one. Returns 0 (roots are freed by the zap)."""
        self.vcpu_root_gen[vcpu] = self.root_gen
        return 0

    def root_usable(self, vcpu: int) -> bool:
        """The vCPU runs on a root of the current generation."""
        return bool(self.vcpu_root_gen[vcpu] == self.root_gen)

    def kvm_tdp_mmu_invalidate_all_roots(self) -> None:
        """Mark every root invalid (caller holds mmu_lock for write): the tree is set
        aside for ``kvm_tdp_mmu_zap_invalidated_roots``; new roots start empty. vCPUs must
        be asked to reload (``kvm.reload_remote_mmus``): the caller's job, as in
        ``kvm_mmu_zap_all_fast``."""
        self.root_gen += 1
        if any(getattr(self, k).any() for k in TREE):
            self.invalid_roots.append({k: getattr(self, k).copy() for k in TREE})
        for k in ("huge", "huge_wp", "pt", "gb", "gb_wp", "l2"):
            getattr(self, k)[:] = False
        self.n4k[:] = 0
        self.w4k[:] = 0
        self.huge_changed(-self.nr_huge)
        self.kvm.charge(self.kvm.costs.tdp_walk)  # list walk: a few roots

    def kvm_tdp_mmu_zap_invalidated_roots(self, *, lock_break: bool = True) -> int:
        """Tear down every invalid root (caller holds mmu_lock for read): zap each leaf,
        free each table, yielding at ``tdp_mmu_iter_cond_resched``. No remote flush: the
        reload request made every vCPU leave the invalid roots (``KVM_REQUEST_WAIT``)
        and each flushes its TLB as it loads a new root. Returns the leaves zapped."""
        c = self.kvm.costs
        st = self.kvm.stats.vm
        total = 0
        while self.invalid_roots:
            root = self.invalid_roots[0]

            def cost(sl: slice, t: dict[str, np.ndarray] = root) -> np.ndarray:
                n = t["n4k"][sl].astype(np.float64)
                gb = np.repeat(t["gb"], GIB_REGIONS)[sl.start : sl.stop]
                walk = c.tdp_walk * (1 + t["pt"][sl] * REGION_PAGES)
                leaves = t["huge"][sl] + n + gb / GIB_REGIONS
                return walk + leaves * c.zap_leaf + t["pt"][sl] * c.pt_free

            def apply(sl: slice, t: dict[str, np.ndarray] = root) -> None:
                nonlocal total
                gs = self.gibs(sl)
                k = int(t["huge"][sl].sum()) + int(t["n4k"][sl].sum(dtype=np.int64))
                k += int(t["gb"][gs].sum())
                tables = int(t["pt"][sl].sum())
                st["sptes_zapped"] += k
                st["pt_pages_freed"] += tables
                st["mmu_shadow_zapped"] += tables
                total += k
                t["huge"][sl] = t["pt"][sl] = False
                t["n4k"][sl] = 0
                t["gb"][gs] = False

            self.walk(0, self.nr_regions, cost, apply, lock_break=lock_break)
            uppers = int(root["l2"].sum()) + (len(root["l2"]) + GIB_REGIONS - 1) // GIB_REGIONS
            self.kvm.mmu_lock.work(np.array([(uppers + 1) * c.pt_free]), False)
            st["pt_pages_freed"] += uppers + 1
            self.invalid_roots.pop(0)
        return total

    def invalid_root_leaves(self) -> int:
        """Leaves the invalid roots still hold (0 once torn down)."""
        return sum(
            int(t["huge"].sum()) + int(t["n4k"].sum(dtype=np.int64)) + int(t["gb"].sum())
            for t in self.invalid_roots
        )

    # -- the legacy MMU's names, for policies that compose them on both MMUs -----------------
    def zap_gfn_range(
        self, gfn0: int, gfn1: int, *, lock_break: bool = False, flush_on_break: bool = True
    ) -> int:
        """``kvm_tdp_mmu_unmap_gfn_range`` over ``[gfn0, gfn1)`` (caller holds mmu_lock):
        every region the range touches (a partial region holds only its slot's leaves),
        flushing before each yield. Returns leaves zapped; the final flush is the
        caller's (``commit_zap_page``)."""
        before = self.kvm.stats.vm["sptes_zapped"]
        r0, r1 = gfn0 >> REGION_SHIFT, -(-gfn1 // REGION_PAGES)
        self.zap_range(r0, r1, lock_break=lock_break)
        return int(self.kvm.stats.vm["sptes_zapped"] - before)

    def pages_with_gfn_in(self, slot: Memslot) -> np.ndarray:
        """Shadow pages with a gfn in the slot: none, the TDP MMU has no shadow pages
        (``kvm_memslots_have_rmaps`` is false, so no hash is walked)."""
        return np.empty(0, dtype=np.int64)

    def zap_pages(
        self,
        candidates: np.ndarray,
        where: Callable[[np.ndarray], np.ndarray] | None = None,
        **kw: object,
    ) -> int:
        """Zap shadow pages: there are none to zap on the TDP MMU."""
        if len(candidates):
            raise ValueError("the TDP MMU has no shadow pages")
        return 0

    def commit_zap_page(self) -> None:
        """``kvm_mmu_remote_flush_or_zap``: the remote flush the zaps owe."""
        self.kvm.flush_remote_tlbs_if_dirty()
