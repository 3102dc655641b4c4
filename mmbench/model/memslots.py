"""Memslots: ``{id, base_gfn, npages, flags}`` and the gfn -> slot lookups the model faults by.

Since 5.17 the kernel keeps memslots in an rbtree ordered by base gfn (plus an interval
tree and an id hash), so ``__gfn_to_memslot`` and the overlap check in
``kvm_set_memory_region`` are O(log n) with up to ``KVM_USER_MEM_SLOTS`` (32764 on x86)
slots: "KVM: Keep memslots in tree-based structures instead of array-based ones"
(Maciej S. Szmigiero, commit a54d806688fe, 5.17; the overlap check: "KVM: Optimize
overlapping memslots check", 44401a204734). The model keeps the same order in a
sorted list of base gfns searched with ``bisect``: lookups and overlap checks are
O(log n + slots hit), so memslot_perf_test's 32 k slots stay cheap.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass

import numpy as np

from mmbench.errors import ConfigError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
# include/linux/kvm_host.h: KVM_MEM_SLOTS_NUM (SHRT_MAX) - KVM_INTERNAL_MEM_SLOTS (3), what
# KVM_CAP_NR_MEMSLOTS reports on x86
KVM_USER_MEM_SLOTS = 32764


@dataclass
class Memslot:
    id: int
    base_gfn: int
    npages: int
    flags: int = 0
    name: str = ""
    invalid: bool = False  # KVM_MEMSLOT_INVALID while being deleted or moved

    @property
    def end_gfn(self) -> int:
        return self.base_gfn + self.npages

    @property
    def size(self) -> int:
        return self.npages << PAGE_SHIFT

    def overlaps(self, base_gfn: int, npages: int) -> bool:
        return base_gfn < self.end_gfn and self.base_gfn < base_gfn + npages

    def __str__(self) -> str:
        label = f" ({self.name})" if self.name else ""
        return f"slot {self.id}{label} gpa 0x{self.base_gfn << PAGE_SHIFT:x}+0x{self.size:x}"


class Memslots:
    """The VM's memslots. Which slot backs a gfn is found by bisecting the slots sorted by
    base gfn (the kernel's rbtree), so a 4 TiB guest costs no per-gfn array and 32 k slots
    cost O(log n) per lookup."""

    def __init__(self, max_gfn: int) -> None:
        self.max_gfn = max_gfn
        self.slots: dict[int, Memslot] = {}
        self._bases: list[int] = []  # base gfns, ascending (slots never overlap)
        self._sorted: list[Memslot] = []  # the slot at each base
        # kvm_memslots->generation: bumped by every change a lookup could see
        self.generation = 0

    def _first_at_or_after(self, gfn: int) -> int:
        """Index of the first slot that ends after ``gfn`` (may start after it)."""
        i = bisect_right(self._bases, gfn) - 1
        if i >= 0 and self._sorted[i].end_gfn > gfn:
            return i
        return i + 1

    def overlapping(self, gfn0: int, gfn1: int) -> list[Memslot]:
        """The slots that intersect ``[gfn0, gfn1)``, in gfn order: O(log n + hits)."""
        i = self._first_at_or_after(gfn0)
        j = bisect_left(self._bases, gfn1, lo=i)
        return self._sorted[i:j]

    def check_new(self, slot_id: int, base_gfn: int, npages: int, field: str = "memslot") -> None:
        if npages <= 0:
            raise ConfigError(field, f"size must be > 0 pages (got {npages})")
        if base_gfn < 0 or base_gfn + npages > self.max_gfn:
            raise ConfigError(
                field,
                f"gpa range 0x{base_gfn << PAGE_SHIFT:x}+0x{npages << PAGE_SHIFT:x} is outside"
                f" the guest physical address space (0..0x{self.max_gfn << PAGE_SHIFT:x})",
            )
        for other in self.overlapping(base_gfn, base_gfn + npages):
            if other.id != slot_id:
                raise ConfigError(
                    field,
                    f"gpa 0x{base_gfn << PAGE_SHIFT:x}+0x{npages << PAGE_SHIFT:x} overlaps {other}",
                )

    def add(self, slot: Memslot) -> None:
        if slot.id in self.slots:
            raise ConfigError("memslot", f"slot id {slot.id} already exists")
        self.check_new(slot.id, slot.base_gfn, slot.npages)
        self.slots[slot.id] = slot
        i = bisect_left(self._bases, slot.base_gfn)
        self._bases.insert(i, slot.base_gfn)
        self._sorted.insert(i, slot)
        self.generation += 1

    def _index(self, slot: Memslot) -> int:
        i = bisect_left(self._bases, slot.base_gfn)
        assert self._sorted[i] is slot
        return i

    def remove(self, slot: Memslot) -> None:
        i = self._index(slot)
        del self._bases[i], self._sorted[i]
        del self.slots[slot.id]
        self.generation += 1

    def replace(self, old: Memslot, new: Memslot) -> None:
        """``KVM_MR_FLAGS_ONLY``: a new ``struct kvm_memory_slot`` takes the old one's
        place (same gfns), so whoever still holds ``old`` can tell it changed."""
        assert self.slots[old.id] is old and (old.base_gfn, old.npages) == (
            new.base_gfn,
            new.npages,
        )
        self._sorted[self._index(old)] = new
        self.slots[new.id] = new
        self.generation += 1

    def invalidate(self, slot: Memslot) -> None:
        """``KVM_MEMSLOT_INVALID``: the slot stays in place but no vCPU may fault it in."""
        slot.invalid = True
        self.generation += 1

    def layout(self) -> int:
        """What decides which gfns are visible, as a cache key for checks that only
        change when a slot does: the memslots generation (``kvm_memslots->generation``)."""
        return self.generation

    def is_live(self, slot: Memslot) -> bool:
        """``slot`` is the current, valid slot of its id (not deleted, moved or changed)."""
        return self.slots.get(slot.id) is slot and not slot.invalid

    def get(self, slot_id: int) -> Memslot:
        try:
            return self.slots[slot_id]
        except KeyError:
            raise ConfigError(
                "memslot", f"no slot {slot_id} (slots: {sorted(self.slots)})"
            ) from None

    def covers(self, gfn0: int, gfn1: int) -> bool:
        """One valid slot backs all of ``[gfn0, gfn1)`` (``backed`` would be all true),
        found with one bisect."""
        i = bisect_right(self._bases, gfn0) - 1
        if i < 0:
            return False
        slot = self._sorted[i]
        return slot.end_gfn >= gfn1 and not slot.invalid

    def backed(self, gfn0: int, gfn1: int) -> np.ndarray:
        """Which gfns of ``[gfn0, gfn1)`` a vCPU may fault in (a valid slot backs them)."""
        ok = np.zeros(gfn1 - gfn0, dtype=bool)
        for slot in self.overlapping(gfn0, gfn1):
            if not slot.invalid:
                lo, hi = max(slot.base_gfn, gfn0), min(slot.end_gfn, gfn1)
                ok[lo - gfn0 : hi - gfn0] = True
        return ok

    def live_mask(self) -> np.ndarray:
        """Per gfn: backed by a slot that is not being deleted."""
        return self.backed(0, self.max_gfn)
