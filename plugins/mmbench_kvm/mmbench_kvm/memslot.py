"""Memslot: one memslot and the private anonymous host memory behind it.

Guest memory is owned apart from the VM fd because it outlives the memslot: a deleted
slot's memory stays readable until freed, and teardown (the last close of the VM fd) is
timed before any of it is munmapped.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

import numpy as np

from . import ioctls as k
from .errors import KvmError
from .guest import PAGE_SIZE_2M, PAGE_SIZE_4K


@dataclass
class Memslot:
    """A memslot and the private anonymous host memory behind it.

    The host mapping is 2 MiB aligned (so THP, when asked for, can back
    guest 2 MiB pages with 2 MiB sptes).  ``registered`` says whether KVM
    currently has it; ``free()`` releases the host memory once it is not.
    """

    slot: int
    gpa: int
    size: int
    hva: int
    flags: int
    thp: bool
    register_ns: int = 0
    registered: bool = False
    _freed: bool = field(default=False, repr=False)

    @property
    def npages(self) -> int:
        return self.size // PAGE_SIZE_4K

    @property
    def freed(self) -> bool:
        return self._freed

    def gpa_to_hva(self, gpa: int) -> int:
        if not self.gpa <= gpa < self.gpa + self.size:
            raise ValueError(f"gpa {gpa:#x} outside memslot {self.slot}")
        return self.hva + (gpa - self.gpa)

    def view(self, dtype: type = np.uint8) -> np.ndarray:
        """numpy view of the host memory (valid until free())."""
        if self._freed:
            raise ValueError(f"memslot {self.slot} memory was freed")
        buf = (ctypes.c_char * self.size).from_address(self.hva)
        return np.frombuffer(buf, dtype=dtype)

    def write(self, offset: int, data: bytes) -> None:
        if self._freed or offset < 0 or offset + len(data) > self.size:
            raise ValueError("write outside live memslot memory")
        ctypes.memmove(self.hva + offset, data, len(data))

    def free(self) -> None:
        """munmap the host memory; only legal once KVM no longer has the slot."""
        if self._freed:
            return
        if self.registered:
            raise KvmError(f"memslot {self.slot} is still registered; delete it first")
        self._freed = True
        k.munmap(self.hva, self.size)


def alloc_guest_memory(size: int, thp: bool, prefault: bool) -> int:
    """Private anon memory, 2 MiB aligned, with THP advice; returns the hva."""
    pad = PAGE_SIZE_2M
    raw = k.mmap_anon(size + pad)
    start = (raw + pad - 1) // pad * pad
    try:
        if start > raw:
            k.munmap(raw, start - raw)
        tail = raw + size + pad - (start + size)
        if tail:
            k.munmap(start + size, tail)
    except BaseException:
        k.munmap(raw, size + pad)
        raise
    try:
        k.madvise(start, size, k.MADV_HUGEPAGE if thp else k.MADV_NOHUGEPAGE)
        if prefault:
            # MADV_POPULATE_WRITE (Linux 5.14): host pages exist before the
            # guest runs, so guest faults time only KVM's own work.
            k.madvise(start, size, k.MADV_POPULATE_WRITE)
    except BaseException:
        k.munmap(start, size)
        raise
    return start
