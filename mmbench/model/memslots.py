"""Memslots: ``{id, base_gfn, npages, flags}`` and the per-gfn slot map the model faults by."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmbench.errors import ConfigError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


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
    """The VM's memslots. Which slot backs a gfn is computed from the (few) slots on
    demand, so a 4 TiB guest costs no per-gfn array here."""

    def __init__(self, max_gfn: int) -> None:
        self.max_gfn = max_gfn
        self.slots: dict[int, Memslot] = {}

    def check_new(self, slot_id: int, base_gfn: int, npages: int, field: str = "memslot") -> None:
        if npages <= 0:
            raise ConfigError(field, f"size must be > 0 pages (got {npages})")
        if base_gfn < 0 or base_gfn + npages > self.max_gfn:
            raise ConfigError(
                field,
                f"gpa range 0x{base_gfn << PAGE_SHIFT:x}+0x{npages << PAGE_SHIFT:x} is outside"
                f" the guest physical address space (0..0x{self.max_gfn << PAGE_SHIFT:x})",
            )
        for other in self.slots.values():
            if other.id != slot_id and other.overlaps(base_gfn, npages):
                raise ConfigError(
                    field,
                    f"gpa 0x{base_gfn << PAGE_SHIFT:x}+0x{npages << PAGE_SHIFT:x} overlaps {other}",
                )

    def add(self, slot: Memslot) -> None:
        if slot.id in self.slots:
            raise ConfigError("memslot", f"slot id {slot.id} already exists")
        self.check_new(slot.id, slot.base_gfn, slot.npages)
        self.slots[slot.id] = slot

    def remove(self, slot: Memslot) -> None:
        del self.slots[slot.id]

    def replace(self, old: Memslot, new: Memslot) -> None:
        """``KVM_MR_FLAGS_ONLY``: a new ``struct kvm_memory_slot`` takes the old one's
        place (same gfns), so whoever still holds ``old`` can tell it changed."""
        assert self.slots[old.id] is old and (old.base_gfn, old.npages) == (
            new.base_gfn,
            new.npages,
        )
        self.slots[new.id] = new

    def layout(self) -> tuple[tuple[int, int, int, bool], ...]:
        """What decides which gfns are visible: each slot's id, range and invalid flag
        (a cache key for checks that only change when a slot does)."""
        return tuple((s.id, s.base_gfn, s.npages, s.invalid) for s in self.slots.values())

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

    def backed(self, gfn0: int, gfn1: int) -> np.ndarray:
        """Which gfns of ``[gfn0, gfn1)`` a vCPU may fault in (a valid slot backs them)."""
        ok = np.zeros(gfn1 - gfn0, dtype=bool)
        for slot in self.slots.values():
            if not slot.invalid and slot.overlaps(gfn0, gfn1 - gfn0):
                lo, hi = max(slot.base_gfn, gfn0), min(slot.end_gfn, gfn1)
                ok[lo - gfn0 : hi - gfn0] = True
        return ok

    def live_mask(self) -> np.ndarray:
        """Per gfn: backed by a slot that is not being deleted."""
        return self.backed(0, self.max_gfn)
