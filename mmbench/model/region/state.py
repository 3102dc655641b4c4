"""TDP MMU and arm64 stage-2 state aggregated per 2 MiB region, and its lookups.

At 4 TiB a per-gfn array has 1 G entries. What the kernel's cost depends on in the
dirty-log and teardown paths is counts: whether the level-2 entry of a 2 MiB region is a
huge leaf (and write-protected), whether a 4 KiB table hangs under it, how many of its 512
leaves are present and writable, and how many of its pages the dirty bitmap has set. So
the state is one row per region (2 M rows at 4 TiB, about 20 MB) plus flags per 1 GiB for
the level-2 table and a 1 GiB leaf (and its write protection); there is no per-gfn array.

The price is granularity: guest accesses fault in, and ``KVM_CLEAR_DIRTY_LOG`` ranges
cover, whole 2 MiB regions (the kernel allows 64-page clears); dirty logging needs
2 MiB-aligned slots. A memslot may be any 4 KiB multiple at any 4 KiB-aligned base: a
region it covers only in part (a *partial region*, such as the 2 MiB around a 128 KiB
option ROM) holds that slot's pages alone, never a huge leaf (lpage_info), and its leaf
count is out of the pages the slot backs there (``_backing``). Within a region the counts
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
        for slot in list(kvm.memslots.slots.values()):  # the slots the VM was created with
            self.check_new_slot(slot.id, slot.base_gfn, slot.npages)

    # -- lookups -----------------------------------------------------------------------------
    def slot_regions(self, slot: Memslot) -> tuple[int, int]:
        """The regions ``[r0, r1)`` a memslot covers, for the walks that need whole
        regions (dirty logging, collapse): the slot must be 2 MiB-aligned."""
        if slot.base_gfn % REGION_PAGES or slot.npages % REGION_PAGES:
            raise ConfigError("memslot", f"{slot}: the region model needs 2 MiB-aligned slots")
        return slot.base_gfn >> REGION_SHIFT, slot.end_gfn >> REGION_SHIFT

    def slot_span(self, slot: Memslot) -> tuple[int, int]:
        """Every region ``[r0, r1)`` a memslot touches, its partial end regions included
        (they are the slot's alone: ``check_new_slot``)."""
        return slot.base_gfn >> REGION_SHIFT, -(-slot.end_gfn // REGION_PAGES)

    def check_new_slot(self, slot_id: int, base_gfn: int, npages: int) -> None:
        """A slot of any 4 KiB multiple at any 4 KiB-aligned base, but a 2 MiB region
        that a slot covers in part holds no other slot: its per-region leaf count is the
        slot's. Two slots sharing a region are refused (``ConfigError``)."""
        end = base_gfn + npages
        for other in self.kvm.memslots.slots.values():
            if other.id == slot_id:
                continue
            # slots do not overlap, so they can share only an end region
            r_a = {base_gfn >> REGION_SHIFT, (end - 1) >> REGION_SHIFT}
            r_b = {other.base_gfn >> REGION_SHIFT, (other.end_gfn - 1) >> REGION_SHIFT}
            if r_a & r_b:
                r = min(r_a & r_b)
                raise ConfigError(
                    "memslot",
                    f"gpa 0x{base_gfn << 12:x}+0x{npages << 12:x} shares the 2 MiB region at"
                    f" gpa 0x{r << (REGION_SHIFT + 12):x} with {other}: the region model keeps"
                    " one slot's leaves per 2 MiB",
                )

    def one_slot(self, r0: int, r1: int) -> Memslot | None:
        """The valid slot that backs every page of regions ``[r0, r1)``, if one does (the
        common case, where per-region backing counts are all 512)."""
        g0, g1 = r0 << REGION_SHIFT, r1 << REGION_SHIFT
        slots = self.kvm.memslots.overlapping(g0, g1)
        if len(slots) != 1:
            return None
        slot = slots[0]
        if slot.invalid or slot.base_gfn > g0 or slot.end_gfn < g1:
            return None
        return slot

    def _backing(
        self, r0: int, r1: int, g0: int | None = None, g1: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(pages a valid slot backs, dirty-logged) per region of ``[r0, r1)``, counting
        only gfns inside ``[g0, g1)`` when given (an access that starts or ends inside a
        region)."""
        lo_g = r0 << REGION_SHIFT if g0 is None else max(g0, r0 << REGION_SHIFT)
        hi_g = r1 << REGION_SHIFT if g1 is None else min(g1, r1 << REGION_SHIFT)
        if lo_g == r0 << REGION_SHIFT and hi_g == r1 << REGION_SHIFT:
            whole = self.one_slot(r0, r1)
            if whole is not None:  # one valid slot backs all of every region
                logged_all = bool(whole.flags & KVM_MEM_LOG_DIRTY_PAGES)
                return np.full(r1 - r0, REGION_PAGES, np.int32), np.full(r1 - r0, logged_all)
        slots = self.kvm.memslots.overlapping(lo_g, hi_g)
        pages = np.zeros(r1 - r0, dtype=np.int32)
        logged = np.zeros(r1 - r0, dtype=bool)
        for slot in slots:
            a, b = max(slot.base_gfn, lo_g), min(slot.end_gfn, hi_g)
            if a >= b or slot.invalid:
                continue
            ra, rb = (a >> REGION_SHIFT) - r0, ((b - 1) >> REGION_SHIFT) - r0
            if ra == rb:
                pages[ra] += b - a
            else:
                pages[ra] += REGION_PAGES - (a & (REGION_PAGES - 1))
                pages[rb] += b - ((rb + r0) << REGION_SHIFT)
                pages[ra + 1 : rb] = REGION_PAGES
            if slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
                logged[ra : rb + 1] = True
        return pages, logged

    def _flags(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        """(backed by a valid slot, dirty-logged) for regions ``[r0, r1)``: a region is
        backed if a slot covers any of it."""
        pages, logged = self._backing(r0, r1)
        return pages > 0, logged

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
        return sum(
            max(0, s.end_gfn // REGION_PAGES - -(-s.base_gfn // REGION_PAGES))
            for s in self.kvm.memslots.slots.values()
        )

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
