"""KvmSystem / Vm / Vcpu / Memslot: a small /dev/kvm driver for MMU benchmarks.

Everything is plain ioctls through ctypes so that what is timed is the
kernel: memslot add/delete/move (KVM_SET_USER_MEMORY_REGION), guest page
faults that build sptes (KVM_RUN of a CPL3 guest, see guest.py), dirty
logging and VM teardown (the last close() of the VM fd).

Ownership rules, so nothing leaks on any path:
  * A Vm owns its vCPUs, its stats fds and the host memory of every memslot
    it ever registered (deleted ones included, unless freed earlier).
  * Vm.close() releases, in order: stats fds, vCPU fds and kvm_run mappings,
    the VM fd (timed: that close destroys the VM), then guest memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import ioctls as k
from .guest import DONE_PORT, PAGE_SIZE_2M, PAGE_SIZE_4K, SystemImage
from .stats import StatsReader

IoCallback = Callable[[int, int, int], None]  # (port, value, perf_counter_ns)

# Long-mode CPL3 register state (see guest.py for why CPL3).
CR0_PE_MP_ET_NE_WP_AM_PG = 0x80050033
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
RFLAGS_IOPL3 = 0x3002  # IOPL=3 so CPL3 `out` exits to us instead of #GP
USER_CS = 0x33
USER_DS = 0x2B
TSS_SEL = 0x40


class KvmError(RuntimeError):
    """Base class for driver errors that are not plain ioctl failures."""


class GuestExitError(KvmError):
    """KVM_RUN stopped for a reason the touch guest never causes on purpose."""

    def __init__(self, vcpu_id: int, reason: int, rip: int | None, detail: str = "") -> None:
        self.vcpu_id = vcpu_id
        self.reason = reason
        self.reason_name = k.exit_reason_name(reason)
        self.rip = rip
        self.detail = detail
        where = f"RIP={rip:#x}" if rip is not None else "RIP=?"
        super().__init__(
            f"vCPU {vcpu_id}: unexpected {self.reason_name} ({reason}) at {where}"
            + (f": {detail}" if detail else "")
        )


class VcpuTimeout(KvmError):
    """A vCPU thread did not finish in time and had to be kicked out of KVM_RUN."""


# --- helpers ------------------------------------------------------------------


def module_params(module: str) -> dict[str, str]:
    """/sys/module/<module>/parameters as strings ({} if not loaded)."""
    out: dict[str, str] = {}
    pdir = Path("/sys/module") / module / "parameters"
    if not pdir.is_dir():
        return out
    for p in sorted(pdir.iterdir()):
        try:
            out[p.name] = p.read_text().strip()
        except OSError:
            continue  # write-only or permission-restricted parameter
    return out


def module_loaded(module: str) -> bool:
    return (Path("/sys/module") / module).exists()


def bitmap_popcount(bitmap: np.ndarray) -> int:
    """Number of set bits (dirty pages) in a KVM dirty bitmap."""
    return int(np.bitwise_count(bitmap).sum())


def bitmap_pages(bitmap: np.ndarray) -> np.ndarray:
    """Page indexes (relative to the memslot) set in a KVM dirty bitmap."""
    bits = np.unpackbits(bitmap.view(np.uint8), bitorder="little")
    return np.flatnonzero(bits)


def _perf_ns() -> int:
    return time.perf_counter_ns()


_kick_lock = threading.Lock()
_kick_installed = False


def _kick_handler(signum: int, frame: object) -> None:
    """No-op: the signal only exists to make KVM_RUN return EINTR."""


def install_kick_handler() -> None:
    """Install the SIGUSR1 no-op handler used to kick vCPUs (main thread only).

    Without a handler SIGUSR1 would kill the process; with SIG_IGN the kernel
    would drop it and KVM_RUN would never see it.  An existing Python
    handler is kept: any real handler works.
    """
    global _kick_installed
    with _kick_lock:
        if _kick_installed:
            return
        current = signal.getsignal(signal.SIGUSR1)
        if current in (signal.SIG_DFL, signal.SIG_IGN, None):
            if threading.current_thread() is not threading.main_thread():
                raise KvmError("install_kick_handler() must be called from the main thread first")
            signal.signal(signal.SIGUSR1, _kick_handler)
        _kick_installed = True


# --- system -------------------------------------------------------------------


class KvmSystem:
    """/dev/kvm: capabilities, module parameters, VM factory."""

    ARCH_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.api_version = k.ioctl(self.fd, k.KVM_GET_API_VERSION)
            if self.api_version != k.KVM_API_VERSION:
                raise KvmError(f"KVM API version {self.api_version}, expected 12")
            self.vcpu_mmap_size = k.ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE)
        except BaseException:
            os.close(self.fd)
            raise
        self._cpuid: ctypes.Structure | None = None

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION; cap may be a number or a name from ioctls.CAPS."""
        num = k.CAPS[cap] if isinstance(cap, str) else cap
        return k.ioctl(self.fd, k.KVM_CHECK_EXTENSION, num)

    def supports(self, name: str) -> bool:
        """True if capability NAME (ioctls.CAPS) or quirk NAME (ioctls.QUIRKS) exists."""
        if name in k.CAPS:
            return self.check_extension(name) > 0
        if name in k.QUIRKS:
            return bool(self.supported_quirks & k.QUIRKS[name])
        raise KeyError(f"unknown capability/quirk {name!r}")

    @property
    def supported_quirks(self) -> int:
        """Mask of quirks KVM_CAP_DISABLE_QUIRKS2 can disable (0 if unsupported)."""
        return self.check_extension(k.KVM_CAP_DISABLE_QUIRKS2)

    @staticmethod
    def quirk_names(mask: int) -> list[str]:
        """Names of the quirk bits in mask; unknown bits show as "bitN"."""
        known = {bit: n for n, bit in k.QUIRKS.items()}
        return [known.get(1 << i, f"bit{i}") for i in range(64) if mask >> i & 1]

    @property
    def loaded_modules(self) -> dict[str, bool]:
        return {m: module_loaded(m) for m in ("kvm", *self.ARCH_MODULES)}

    @property
    def params(self) -> dict[str, dict[str, str]]:
        """Parameters of kvm and each loaded arch module (tdp_mmu, eager_page_split...)."""
        return {m: module_params(m) for m, on in self.loaded_modules.items() if on}

    def param(self, name: str) -> str | None:
        """One parameter, looked up in kvm then the arch modules."""
        for mod in self.params.values():
            if name in mod:
                return mod[name]
        return None

    @property
    def tdp_mmu(self) -> bool | None:
        v = self.param("tdp_mmu")
        return None if v is None else v in ("Y", "1")

    def supported_cpuid(self) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID, grown until it fits (cached)."""
        if self._cpuid is None:
            nent = 64
            while True:
                c = k.make_cpuid2(nent)
                try:
                    k.ioctl(self.fd, k.KVM_GET_SUPPORTED_CPUID, c)
                    break
                except OSError as e:
                    if e.errno != errno.E2BIG or nent > 4096:
                        raise
                    nent *= 2
            self._cpuid = c
        return self._cpuid

    def create_vm(self, vm_type: int = 0) -> Vm:
        return Vm(self, vm_type)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> KvmSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- memslots -----------------------------------------------------------------


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


def _alloc_guest_memory(size: int, thp: bool, prefault: bool) -> int:
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
            k.madvise(start, size, 23)
    except BaseException:
        k.munmap(start, size)
        raise
    return start


# --- VM -----------------------------------------------------------------------


class Vm:
    """A KVM VM fd with its memslots, vCPUs and stats.  Use as a context manager."""

    def __init__(self, system: KvmSystem, vm_type: int = 0) -> None:
        self.system = system
        self.fd = k.ioctl(system.fd, k.KVM_CREATE_VM, vm_type)
        self.memslots: dict[int, Memslot] = {}
        self._all_memory: list[Memslot] = []
        self.vcpus: list[Vcpu] = []
        self._stats: StatsReader | None = None
        self.image: SystemImage | None = None
        self.manual_dirty_log = False
        self.teardown_ns: int | None = None

    # capabilities

    def check_extension(self, cap: int | str) -> int:
        num = k.CAPS[cap] if isinstance(cap, str) else cap
        return k.ioctl(self.fd, k.KVM_CHECK_EXTENSION, num)

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
        t0 = _perf_ns()
        k.ioctl(self.fd, k.KVM_SET_USER_MEMORY_REGION, r)
        return _perf_ns() - t0

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
        hva = _alloc_guest_memory(size, thp, prefault)
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
        t0 = _perf_ns()
        k.ioctl(self.fd, k.KVM_CLEAR_DIRTY_LOG, c)
        return _perf_ns() - t0

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

    @property
    def stats_reader(self) -> StatsReader:
        if self._stats is None:
            self._stats = StatsReader(k.ioctl(self.fd, k.KVM_GET_STATS_FD))
        return self._stats

    def stats(self) -> dict[str, int]:
        """VM binary stats: pages_4k/2m/1g, mmu_shadow_zapped, remote_tlb_flush..."""
        return self.stats_reader.read()

    def vcpu_stats_sum(self) -> dict[str, int]:
        """Per-vCPU stats summed over all vCPUs (pf_fixed, exits, ...)."""
        total: dict[str, int] = {}
        for v in self.vcpus:
            for name, val in v.stats().items():
                total[name] = total.get(name, 0) + val
        return total

    def close_stats(self) -> None:
        """Drop stats fds (they pin the VM) without closing the VM."""
        if self._stats is not None:
            self._stats.close()
            self._stats = None
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
                    t0 = _perf_ns()
                    os.close(fd)
                    self.teardown_ns = _perf_ns() - t0
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


# --- vCPU ---------------------------------------------------------------------


def _segment(selector: int, type_: int, dpl: int, *, code: bool) -> k.kvm_segment:
    return k.kvm_segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=type_,
        present=1,
        dpl=dpl,
        db=0 if code else 1,
        s=1,
        l=1 if code else 0,
        g=1,
    )


class Vcpu:
    """A vCPU fd, its mmap()ed kvm_run, and a KVM_RUN loop for the touch guest."""

    def __init__(self, vm: Vm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = k.ioctl(vm.fd, k.KVM_CREATE_VCPU, vcpu_id)
        self._run_size = vm.system.vcpu_mmap_size
        try:
            self._run_addr = k.mmap_fd(self.fd, self._run_size)
        except BaseException:
            os.close(self.fd)
            raise
        self._run: k.kvm_run | None = k.kvm_run.from_address(self._run_addr)
        self._stats: StatsReader | None = None
        self.stop_requested = False
        self._running_ident: int | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.image: SystemImage | None = None

    # register state

    def get_regs(self) -> k.kvm_regs:
        r = k.kvm_regs()
        k.ioctl(self.fd, k.KVM_GET_REGS, r)
        return r

    def set_regs(self, regs: k.kvm_regs) -> None:
        k.ioctl(self.fd, k.KVM_SET_REGS, regs)

    def get_sregs(self) -> k.kvm_sregs:
        s = k.kvm_sregs()
        k.ioctl(self.fd, k.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, sregs: k.kvm_sregs) -> None:
        k.ioctl(self.fd, k.KVM_SET_SREGS, sregs)

    def set_cpuid(self, cpuid: ctypes.Structure) -> None:
        k.ioctl(self.fd, k.KVM_SET_CPUID2, cpuid)

    def setup_cpl3(self, image: SystemImage | None = None) -> None:
        """CPUID + 64-bit CPL3 segments/control registers for the touch guest.

        No GDT/IDT: segment caches are loaded straight from SET_SREGS; TR
        only has to look like a busy 64-bit TSS for the entry checks.  Any
        guest exception therefore ends in a triple fault (KVM_EXIT_SHUTDOWN).
        """
        image = image or self.vm.image
        if image is None:
            raise KvmError("no system image: call Vm.load_system_image() first")
        self.image = image
        self.set_cpuid(self.vm.system.supported_cpuid())
        s = self.get_sregs()
        s.cs = _segment(USER_CS, 11, 3, code=True)  # execute/read, accessed
        data = _segment(USER_DS, 3, 3, code=False)  # read/write, accessed
        s.ds = s.es = s.fs = s.gs = s.ss = data
        s.tr = k.kvm_segment(base=0, limit=0x67, selector=TSS_SEL, type=11, present=1)
        s.ldt = k.kvm_segment(selector=0, type=2, present=0, unusable=1)
        s.gdt = k.kvm_dtable(base=0, limit=0xFFFF)
        s.idt = k.kvm_dtable(base=0, limit=0)
        s.cr0 = CR0_PE_MP_ET_NE_WP_AM_PG
        s.cr3 = image.cr3
        s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
        s.efer = EFER_LME | EFER_LMA | EFER_NXE
        self.set_sregs(s)
        self.set_entry("spin")

    def _frame(self, entry: str) -> k.kvm_regs:
        """Fresh CPL3 registers at an entry; re-arming also clears a past stop."""
        if self.image is None:
            raise KvmError(f"vCPU {self.id}: call setup_cpl3() first")
        self.stop_requested = False
        r = k.kvm_regs()
        r.rip = self.image.entries[entry]
        r.rsp = self.image.stack_top
        r.rflags = RFLAGS_IOPL3
        return r

    def set_entry(self, entry: str) -> None:
        """Point RIP at an entry of the code blob with a fresh CPL3 frame."""
        self.set_regs(self._frame(entry))

    def set_touch(
        self,
        start: int,
        end: int,
        *,
        stride: int = PAGE_SIZE_4K,
        passes: int = 1,
        write: bool = True,
    ) -> None:
        """Arm the touch loop: `passes` passes over [start, end), one qword per stride."""
        r = self._frame("touch")
        r.rdi, r.rsi, r.rdx, r.rcx, r.r8 = start, end, stride, passes, int(write)
        self.set_regs(r)

    # running

    def claim_thread(self) -> int:
        """Run KVM_RUN once with immediate_exit so the per-thread pid switch
        (a synchronize_rcu() in KVM) is paid before anything is timed; ns."""
        t0 = _perf_ns()
        self._run.immediate_exit = 1
        try:
            k.ioctl(self.fd, k.KVM_RUN)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise
        finally:
            self._run.immediate_exit = 0
        return _perf_ns() - t0

    def request_stop(self) -> None:
        """Make run() return soon: flag + immediate_exit (the caller kicks)."""
        self.stop_requested = True
        if self._run is not None:
            self._run.immediate_exit = 1

    def run(self, on_io: IoCallback | None = None) -> int | None:
        """KVM_RUN until the guest writes DONE_PORT; returns the value written.

        Every KVM_EXIT_IO out calls on_io(port, value, perf_counter_ns) with
        the time taken right after KVM_RUN returned.  Returns None if stopped
        via request_stop() + a signal kick (EINTR).  Raises GuestExitError
        on SHUTDOWN / FAIL_ENTRY / INTERNAL_ERROR / MMIO / anything else.
        """
        if self._run is None:
            raise KvmError(f"vCPU {self.id} is closed")
        run = self._run
        self._idle.clear()
        self._running_ident = threading.get_ident()
        try:
            run.immediate_exit = 0
            while True:
                if self.stop_requested:
                    return None
                try:
                    k.ioctl(self.fd, k.KVM_RUN)
                except OSError as e:
                    if e.errno == errno.EINTR:
                        continue  # a kick; the loop head checks the stop flag
                    raise
                now = _perf_ns()
                reason = run.exit_reason
                if reason == k.KVM_EXIT_IO:
                    io = run.exit.io
                    if io.direction == k.KVM_EXIT_IO_OUT:
                        raw = ctypes.string_at(self._run_addr + io.data_offset, io.size)
                        value = int.from_bytes(raw, "little")
                    else:
                        value = 0
                    if on_io is not None:
                        on_io(io.port, value, now)
                    if io.port == DONE_PORT:
                        return value
                    continue
                if reason == k.KVM_EXIT_INTR:
                    continue
                raise self._exit_error(reason)
        finally:
            self._running_ident = None
            self._idle.set()

    def _exit_error(self, reason: int) -> GuestExitError:
        run = self._run
        detail = ""
        if reason == k.KVM_EXIT_FAIL_ENTRY:
            fe = run.exit.fail_entry
            detail = f"hardware_entry_failure_reason={fe.hardware_entry_failure_reason:#x}"
        elif reason == k.KVM_EXIT_INTERNAL_ERROR:
            ie = run.exit.internal
            data = ", ".join(f"{ie.data[i]:#x}" for i in range(min(ie.ndata, 16)))
            detail = f"suberror={ie.suberror} data=[{data}]"
        elif reason == k.KVM_EXIT_MMIO:
            m = run.exit.mmio
            kind = "write" if m.is_write else "read"
            detail = f"{kind} of {m.len} bytes at gpa {m.phys_addr:#x} (no memslot there)"
        elif reason == k.KVM_EXIT_SHUTDOWN:
            detail = "guest triple fault (an exception with no IDT)"
        try:
            rip: int | None = self.get_regs().rip
        except OSError:
            rip = None
        return GuestExitError(self.id, reason, rip, detail)

    def kick(self) -> None:
        """Signal the thread inside run() (if any) so KVM_RUN returns EINTR."""
        ident = self._running_ident
        if ident is not None:
            with contextlib.suppress(ProcessLookupError):  # thread just ended
                signal.pthread_kill(ident, signal.SIGUSR1)

    def stop(self, timeout: float = 5.0) -> bool:
        """request_stop() and kick until run() has returned; False on timeout."""
        install_kick_handler()  # SIGUSR1 without a handler would kill the process
        self.request_stop()
        deadline = time.monotonic() + timeout
        while not self._idle.wait(0.01):
            self.kick()
            if time.monotonic() > deadline:
                return False
        return True

    # stats and teardown

    @property
    def stats_reader(self) -> StatsReader:
        if self._stats is None:
            self._stats = StatsReader(k.ioctl(self.fd, k.KVM_GET_STATS_FD))
        return self._stats

    def stats(self) -> dict[str, int]:
        """vCPU binary stats: pf_taken, pf_fixed, exits, insn_emulation..."""
        return self.stats_reader.read()

    def close_stats(self) -> None:
        if self._stats is not None:
            self._stats.close()
            self._stats = None

    def close(self) -> None:
        """Close stats fd, munmap kvm_run, close the vCPU fd (stops run() first)."""
        if self.fd < 0:
            return
        if not self._idle.is_set() and not self.stop():
            raise KvmError(f"vCPU {self.id} is stuck in KVM_RUN and cannot be closed")
        try:
            self.close_stats()
        finally:
            self._run = None
            try:
                k.munmap(self._run_addr, self._run_size)
            finally:
                fd, self.fd = self.fd, -1
                os.close(fd)


class VcpuThread:
    """Runs one vCPU in a Python thread and timestamps every pass boundary.

    KVM_RUN releases the GIL, so several VcpuThreads run guests in
    parallel.  pass_ns[i] is perf_counter_ns when pass i's exit reached
    userspace; start_ns is taken just before the first KVM_RUN.
    """

    def __init__(self, vcpu: Vcpu, name: str | None = None) -> None:
        install_kick_handler()
        self.vcpu = vcpu
        self.pass_ns: list[int] = []
        self.start_ns = 0
        self.done_ns = 0
        self.claim_ns = 0
        self.result: int | None = None
        self.error: BaseException | None = None
        self.stopped = False
        self._thread = threading.Thread(
            target=self._main, name=name or f"vcpu{vcpu.id}", daemon=True
        )

    def _on_io(self, port: int, value: int, now: int) -> None:
        if port != DONE_PORT:
            self.pass_ns.append(now)

    def _main(self) -> None:
        try:
            self.claim_ns = self.vcpu.claim_thread()
            self.start_ns = _perf_ns()
            self.result = self.vcpu.run(self._on_io)
            self.done_ns = _perf_ns()
            self.stopped = self.result is None
        except BaseException as e:  # re-raised in join()
            self.error = e

    def start(self) -> VcpuThread:
        self._thread.start()
        return self

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def pass_durations_ns(self) -> list[int]:
        """Duration of each pass (first one measured from start_ns)."""
        edges = [self.start_ns, *self.pass_ns]
        return [b - a for a, b in zip(edges, edges[1:], strict=False)]

    def stop(self, timeout: float = 5.0) -> None:
        """Kick the vCPU out of KVM_RUN and wait for the thread to end."""
        if not self.vcpu.stop(timeout):
            raise VcpuTimeout(f"vCPU {self.vcpu.id} ignored SIGUSR1 kicks for {timeout}s")
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for the guest's done exit; on timeout stop it and raise VcpuTimeout.

        Re-raises any error from the vCPU thread (e.g. GuestExitError).
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop()
            try:
                rip = f"{self.vcpu.get_regs().rip:#x}"
            except OSError:
                rip = "?"
            raise VcpuTimeout(
                f"vCPU {self.vcpu.id} did not finish within {timeout}s "
                f"({len(self.pass_ns)} passes done, RIP={rip}); it was kicked out of KVM_RUN"
            )
        if self.error is not None:
            raise self.error
        return self.result
