"""TDP MMU and arm64 stage-2 state aggregated per 2 MiB region, and its lookups.

At 4 TiB a per-gfn array has 1 G entries. What the kernel's cost depends on in the
dirty-log and teardown paths is counts: whether the level-2 entry of a 2 MiB region is a
huge leaf (and write-protected), whether a 4 KiB table hangs under it, how many of its 512
leaves are present and writable, and how many of its pages the dirty bitmap has set. So
the state is one row per region (2 M rows at 4 TiB, about 20 MB) plus flags per 1 GiB for
the level-2 table and a 1 GiB leaf (and its write protection); there is no per-gfn array.

The price is granularity: guest accesses, memslots and ``KVM_CLEAR_DIRTY_LOG`` ranges
are whole 2 MiB regions (the kernel allows 64-page clears). Within a region the counts
are exact because every operation covers the whole region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmbench.errors import ConfigError, InvariantViolation
from mmbench.model.memslots import KVM_MEM_LOG_DIRTY_PAGES, Memslot

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm

REGION_SHIFT = 9
REGION_PAGES = 1 << REGION_SHIFT  # 4 KiB leaves per 2 MiB region
GIB_REGIONS = 512  # regions per 1 GiB (one level-2 table)

U16 = np.uint16


class RegionState:
    """``kvm->arch.tdp_mmu`` / ``kvm->arch.mmu.pgt``: one radix tree, aggregated."""

    def __init__(
        self,
        kvm: Kvm,
        max_gfn: int,
        huge_ok: bool,
        read_faults: bool = False,
        huge_1g: bool = False,
    ) -> None:
        self.kvm = kvm
        self.read_faults = read_faults  # vCPU faults take mmu_lock for read
        self.max_gfn = max_gfn
        self.huge_ok = huge_ok  # the backing allows 2 MiB leaves
        nr = (max_gfn + REGION_PAGES - 1) >> REGION_SHIFT
        self.nr_regions = nr
        self.huge = np.zeros(nr, dtype=bool)  # level-2 entry is a 2 MiB leaf
        self.huge_wp = np.zeros(nr, dtype=bool)  # ... and it is write-protected
        self.pt = np.zeros(nr, dtype=bool)  # a 4 KiB table hangs under the entry
        self.n4k = np.zeros(nr, dtype=U16)  # present 4 KiB leaves in that table
        self.w4k = np.zeros(nr, dtype=U16)  # writable 4 KiB leaves (<= n4k)
        self.dirty = np.zeros(nr, dtype=U16)  # pages set in the slot's dirty bitmap
        self.l2 = np.zeros(nr // GIB_REGIONS + 1, dtype=bool)  # level-2 table per GiB
        self.huge_1g = huge_1g  # the backing allows 1 GiB leaves (hugetlbfs 1G)
        self.gb = np.zeros(nr // GIB_REGIONS + 1, dtype=bool)  # level-3 entry is a 1 GiB leaf
        self.gb_wp = np.zeros(nr // GIB_REGIONS + 1, dtype=bool)  # ... write-protected
        self.nr_huge = 0
        self.huge_full_at = -1  # last time every huge-capable region was huge-mapped
        self.tlbs_dirty = False
        self.zapped_unflushed = False  # leaves or tables zapped, not yet flushed
        self.native: dict[int, tuple[int, int]] = {}  # vCPU id -> regions it runs over

    # -- lookups -----------------------------------------------------------------------------
    def slot_regions(self, slot: Memslot) -> tuple[int, int]:
        """The regions ``[r0, r1)`` a memslot covers (it must be 2 MiB-aligned)."""
        if slot.base_gfn % REGION_PAGES or slot.npages % REGION_PAGES:
            raise ConfigError("memslot", f"{slot}: the region model needs 2 MiB-aligned slots")
        return slot.base_gfn >> REGION_SHIFT, slot.end_gfn >> REGION_SHIFT

    def _flags(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """(backed by a valid slot, dirty-logged) for regions ``[r0, r1)``."""
        backed = np.zeros(r1 - r0, dtype=bool)
        logged = np.zeros(r1 - r0, dtype=bool)
        for slot in self.kvm.memslots.slots.values():
            s0, s1 = slot.base_gfn >> REGION_SHIFT, slot.end_gfn >> REGION_SHIFT
            lo, hi = max(s0, r0), min(s1, r1)
            if lo >= hi or slot.invalid:
                continue
            backed[lo - r0 : hi - r0] = True
            if slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
                logged[lo - r0 : hi - r0] = True
        return backed, logged

    def gib_per_region(self, arr: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """A per-GiB array (``l2``, ``gb``, ``gb_wp``) seen per region over ``[r0, r1)``."""
        g0, g1 = r0 // GIB_REGIONS, (r1 - 1) // GIB_REGIONS + 1
        v = np.repeat(arr[g0:g1], GIB_REGIONS)
        off = r0 - g0 * GIB_REGIONS
        return v[off : off + r1 - r0]

    @staticmethod
    def gibs(sl: slice) -> slice:
        """The GiBs (level-2 tables) that regions ``sl`` touch."""
        return slice(sl.start // GIB_REGIONS, (sl.stop - 1) // GIB_REGIONS + 1)

    def huge_target(self) -> int:
        """Regions that could be huge-mapped: every backed region if the backing allows."""
        if not self.huge_ok:
            return 0
        return sum(s.npages >> REGION_SHIFT for s in self.kvm.memslots.slots.values())

    def huge_changed(self, delta: int) -> None:
        """``delta`` regions came under (or left) a huge leaf; note when all are huge."""
        if not delta:
            return
        self.nr_huge += delta
        if delta > 0 and self.nr_huge == self.huge_target():
            self.huge_full_at = self.kvm.now

    def check_live(self, slot: Memslot) -> None:
        """A walk over ``slot`` must not run after the slot was deleted or replaced."""
        if not self.kvm.memslots.is_live(slot) or self.kvm.destroyed:
            raise InvariantViolation(
                f"{slot} was deleted or changed, yet an MMU walk touched it (a use after"
                " free of its struct kvm_memory_slot)"
            )

    def zapped(self, sl: slice) -> None:
        """A walk removed mappings in ``sl``: a vCPU running over them faults there at
        its next access, so cut its native run short to let it see the change."""
        for vid, (r0, r1) in list(self.native.items()):
            if r0 < sl.stop and sl.start < r1:
                actor = self.kvm.vcpus[vid].actor
                if actor is not None:
                    self.kvm.engine.interrupt(actor)

    def kvm_mmu_unload(self, vcpu: int) -> int:
        """A vCPU drops its root reference; roots are freed with the tree."""
        return 0

    # -- figures -----------------------------------------------------------------------------
    def extra_stats(self) -> dict[str, float]:
        st = self.kvm.stats.vm
        out: dict[str, float] = {
            "pages_4k": float(self.n4k.sum(dtype=np.int64)),
            "pages_2m": float(self.huge.sum()),
            "pages_1g": float(self.gb.sum()),
            "huge_full_at_ns": float(self.huge_full_at),
            "huge_target": float(self.huge_target()),
            "huge_regions": float(self.nr_huge),  # 2 MiB regions under a 2 MiB or 1 GiB leaf
        }
        for key in (
            "cmo_bytes",
            "tlbi",
            "pt_pages_freed",
            "pt_pages_allocated",
            "huge_pages_split",
            "huge_pages_recovered",
        ):
            out[key] = float(st[key])
        return out

    def nr_mapped(self) -> int:
        return int(self.huge.sum()) + int(self.n4k.sum(dtype=np.int64)) + int(self.gb.sum())

    def nr_page_tables(self) -> int:
        """4 KiB-leaf tables and level-2 tables (``free_tables`` frees the levels above
        with them)."""
        return int(self.pt.sum()) + int(self.l2.sum())
