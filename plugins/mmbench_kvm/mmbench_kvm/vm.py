"""Vm: one KVM VM fd, with its memslots, vCPUs and binary stats.

Everything is plain ioctls through ctypes so that what is timed is the kernel: memslot
add/delete/move (KVM_SET_USER_MEMORY_REGION), dirty logging and VM teardown (the last
close() of the VM fd).

Ownership rules, so nothing leaks on any path:
  * A Vm owns its vCPUs, its stats fds and the host memory of every memslot
    it ever registered (deleted ones included, unless freed earlier).
  * Vm.close() releases, in order: stats fds, vCPU fds and kvm_run mappings,
    the VM fd (timed: that close destroys the VM), then guest memory.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from . import ioctls as k
from .errors import KvmError
from .guest import PAGE_SIZE_4K, SystemImage
from .memslot import Memslot, alloc_guest_memory
from .stats import StatsFdOwner
from .vcpu import Vcpu

if TYPE_CHECKING:
    from .system import KvmSystem


def bitmap_popcount(bitmap: np.ndarray) -> int:
    """Number of set bits (dirty pages) in a KVM dirty bitmap."""
    return int(np.bitwise_count(bitmap).sum())


def bitmap_pages(bitmap: np.ndarray) -> np.ndarray:
    """Page indexes (relative to the memslot) set in a KVM dirty bitmap."""
    bits = np.unpackbits(bitmap.view(np.uint8), bitorder="little")
    return np.flatnonzero(bits)


class Vm(StatsFdOwner):
    """A KVM VM fd with its memslots, vCPUs and stats.  Use as a context manager."""

    def __init__(self, system: KvmSystem, vm_type: int = 0) -> None:
        self.system = system
        self.fd = k.ioctl(system.fd, k.KVM_CREATE_VM, vm_type)
        self.memslots: dict[int, Memslot] = {}
        self._all_memory: list[Memslot] = []
        self.vcpus: list[Vcpu] = []
        self.image: SystemImage | None = None
        self.manual_dirty_log = False
        self.teardown_ns: int | None = None

    # capabilities

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION for this VM (its type may lack what the host has)."""
        return k.check_extension(self.fd, cap)

    def enable_cap(self, cap: int, *args: int) -> None:
        c = k.kvm_enable_cap(cap=cap)
        for i, a in enumerate(args):
            c.args[i] = a
        k.ioctl(self.fd, k.KVM_ENABLE_CAP, c)

    def disable_quirks(self, mask: int) -> None:
        """KVM_CAP_DISABLE_QUIRKS2; e.g. SLOT_ZAP_ALL so deletes zap only the slot."""
        self.enable_cap(k.KVM_CAP_DISABLE_QUIRKS2, mask)

    def enable_manual_dirty_log(self, initially_set: bool = False) -> None:
        """KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET_DIRTY_LOG stops re-protecting;
        pages are re-protected only by CLEAR_DIRTY_LOG."""
        flags = k.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE
        if initially_set:
            flags |= k.KVM_DIRTY_LOG_INITIALLY_SET
        self.enable_cap(k.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, flags)
        self.manual_dirty_log = True

    # memslots

    def _set_region(self, slot: int, flags: int, gpa: int, size: int, hva: int) -> int:
        r = k.kvm_userspace_memory_region(
            slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size, userspace_addr=hva
        )
        t0 = time.perf_counter_ns()
        k.ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, r)
        return time.perf_counter_ns() - t0

    def add_memslot(
        self,
        slot: int,
        gpa: int,
        size: int,
        *,
        log_dirty: bool = False,
        thp: bool = True,
        readonly: bool = False,
        prefault: bool = False,
    ) -> Memslot:
        """Allocate private anon memory (THP advised or not) and register it.

        prefault=True populates the host pages first (MADV_POPULATE_WRITE),
        so later guest faults measure KVM's spte work, not host page
        allocation.  ``Memslot.register_ns`` is the ioctl time.
        """
        if slot in self.memslots:
            raise KvmError(f"memslot {slot} already registered")
        if size <= 0 or size % PAGE_SIZE_4K or gpa % PAGE_SIZE_4K:
            raise ValueError("memslot gpa/size must be page aligned and non-empty")
        flags = (k.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0) | (
            k.KVM_MEM_READONLY if readonly else 0
        )
        hva = alloc_guest_memory(size, thp, prefault)
        ms = Memslot(slot, gpa, size, hva, flags, thp)
        try:
            ms.register_ns = self._set_region(slot, flags, gpa, size, hva)
        except BaseException:
            ms.free()  # KVM refused it (EEXIST overlap, bad flags...): nothing to keep
            raise
        self._all_memory.append(ms)  # from here on close() frees it
        ms.registered = True
        self.memslots[slot] = ms
        return ms

    def readd_memslot(self, ms: Memslot) -> int:
        """Register a deleted slot's kept host memory again, at its gpa; returns the ioctl
        time in ns. Its host pages stay present, as QEMU's do for a ROM BAR the guest
        disables and enables (the RAMBlock is allocated once; the memslot comes and goes)."""
        if ms.slot in self.memslots:
            raise KvmError(f"memslot {ms.slot} already registered")
        if ms.freed or ms not in self._all_memory:
            raise KvmError(f"memslot {ms.slot}'s memory is not this VM's kept memory")
        ms.register_ns = self._set_region(ms.slot, ms.flags, ms.gpa, ms.size, ms.hva)
        ms.registered = True
        self.memslots[ms.slot] = ms
        return ms.register_ns

    def delete_memslot(self, slot: int, *, free: bool = True) -> int:
        """Delete a memslot (size 0); returns the ioctl time in ns.

        With free=True (default) the host memory is munmapped right after
        the timed ioctl; with free=False it stays readable through the
        Memslot until Memslot.free() or Vm.close().
        """
        ms = self.memslots[slot]
        ns = self._set_region(slot, 0, ms.gpa, 0, ms.hva)
        del self.memslots[slot]
        ms.registered = False
        if free:
            ms.free()
        return ns

    def move_memslot(self, slot: int, new_gpa: int) -> int:
        """Change a memslot's gpa (KVM_MR_MOVE); returns the ioctl time in ns."""
        ms = self.memslots[slot]
        ns = self._set_region(slot, ms.flags, new_gpa, ms.size, ms.hva)
        ms.gpa = new_gpa
        return ns

    def set_dirty_logging(self, slot: int, on: bool) -> int:
        """Toggle KVM_MEM_LOG_DIRTY_PAGES (write-protects or splits sptes); ns."""
        ms = self.memslots[slot]
        flags = (
            (ms.flags | k.KVM_MEM_LOG_DIRTY_PAGES)
            if on
            else (ms.flags & ~k.KVM_MEM_LOG_DIRTY_PAGES)
        )
        ns = self._set_region(slot, flags, ms.gpa, ms.size, ms.hva)
        ms.flags = flags
        return ns

    def get_dirty_log(self, slot: int) -> np.ndarray:
        """KVM_GET_DIRTY_LOG: one bit per 4 KiB page of the slot, as uint64 words.

        Without manual protect this also clears the log and re-protects the
        dirty pages (that is KVM's semantics, not ours).
        """
        ms = self.memslots[slot]
        bitmap = np.zeros((ms.npages + 63) // 64, dtype=np.uint64)
        log = k.kvm_dirty_log(slot=slot, dirty_bitmap=bitmap.ctypes.data)
        k.ioctl(self.fd, k.KVM_GET_DIRTY_LOG, log)
        return bitmap

    def clear_dirty_log(
        self,
        slot: int,
        first_page: int = 0,
        num_pages: int | None = None,
        bitmap: np.ndarray | None = None,
    ) -> int:
        """KVM_CLEAR_DIRTY_LOG (manual protect): clear + re-protect pages; ns.

        bitmap selects which of [first_page, first_page+num_pages) to clear
        (bit i = first_page + i); default all of them.  KVM wants first_page
        64-aligned and num_pages a multiple of 64 unless it reaches the end.
        """
        ms = self.memslots[slot]
        if num_pages is None:
            num_pages = ms.npages - first_page
        if first_page % 64 or first_page + num_pages > ms.npages or num_pages < 0:
            raise ValueError("first_page must be 64-aligned and the range inside the slot")
        if num_pages % 64 and first_page + num_pages != ms.npages:
            raise ValueError("num_pages must be a multiple of 64 unless it ends the slot")
        words = (num_pages + 63) // 64
        if bitmap is None:
            bitmap = np.full(words, np.iinfo(np.uint64).max, dtype=np.uint64)
        bitmap = np.ascontiguousarray(bitmap, dtype=np.uint64)
        if bitmap.size < words:
            raise ValueError(f"bitmap needs {words} u64 words")
        c = k.kvm_clear_dirty_log(
            slot=slot, num_pages=num_pages, first_page=first_page, dirty_bitmap=bitmap.ctypes.data
        )
        t0 = time.perf_counter_ns()
        k.ioctl(self.fd, k.KVM_CLEAR_DIRTY_LOG, c)
        return time.perf_counter_ns() - t0

    def load_system_image(self, image: SystemImage, slot: int = 0) -> Memslot:
        """Register the system memslot (code + page tables) and copy the image in."""
        ms = self.add_memslot(slot, image.gpa, image.size, thp=False)
        ms.write(0, image.data)
        self.image = image
        return ms

    # vCPUs and stats

    def create_vcpu(self, vcpu_id: int | None = None) -> Vcpu:
        vcpu = Vcpu(self, len(self.vcpus) if vcpu_id is None else vcpu_id)
        self.vcpus.append(vcpu)
        return vcpu

    def vcpu_stats_sum(self) -> dict[str, int]:
        """Per-vCPU stats summed over all vCPUs (pf_fixed, exits, ...)."""
        total: dict[str, int] = {}
        for v in self.vcpus:
            for name, val in v.stats().items():
                total[name] = total.get(name, 0) + val
        return total

    def close_stats(self) -> None:
        """Drop the VM's and every vCPU's stats fds (they pin the VM) without closing it."""
        super().close_stats()
        for v in self.vcpus:
            v.close_stats()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> int:
        """Release everything; returns ns spent in the final VM-fd close (teardown).

        Stats fds and vCPUs go first so that close() is the last reference
        and destroys the VM synchronously; guest memory is freed after.
        """
        if self.fd < 0:
            return self.teardown_ns or 0
        try:
            try:
                self.close_stats()
            finally:
                try:
                    while self.vcpus:
                        self.vcpus.pop().close()
                finally:
                    fd, self.fd = self.fd, -1
                    t0 = time.perf_counter_ns()
                    os.close(fd)
                    self.teardown_ns = time.perf_counter_ns() - t0
        finally:
            self.memslots.clear()
            while self._all_memory:
                ms = self._all_memory.pop()
                ms.registered = False  # the VM is gone, so is every memslot
                ms.free()
        return self.teardown_ns

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Safety net only; callers are expected to close() explicitly.
        if getattr(self, "fd", -1) >= 0:
            with contextlib.suppress(Exception):
                self.close()
