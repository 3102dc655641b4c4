"""KVM ioctl numbers, capability/exit constants and the ctypes structs they take.

Layouts follow include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h
(x86-64).  ioctl numbers are computed with the _IOC macros from the struct
sizes, so a wrong struct layout shows up as a wrong ioctl number (the tests
compare them against the known constants).
"""

from __future__ import annotations

import ctypes
import os

# --- _IOC encoding (asm-generic/ioctl.h) ------------------------------------

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ, nr, ctypes.sizeof(struct))


def _iow(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_WRITE, nr, ctypes.sizeof(struct))


def _iowr(nr: int, struct: type[ctypes.Structure]) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, ctypes.sizeof(struct))


# --- structs ------------------------------------------------------------------


class kvm_userspace_memory_region(ctypes.Structure):  # noqa: N801 - kernel name
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
    ]


class kvm_regs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            *("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp"),
            *("r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"),
            *("rip", "rflags"),
        )
    ]


class kvm_segment(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("selector", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("present", ctypes.c_uint8),
        ("dpl", ctypes.c_uint8),
        ("db", ctypes.c_uint8),
        ("s", ctypes.c_uint8),
        ("l", ctypes.c_uint8),
        ("g", ctypes.c_uint8),
        ("avl", ctypes.c_uint8),
        ("unusable", ctypes.c_uint8),
        ("padding", ctypes.c_uint8),
    ]


class kvm_dtable(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint16),
        ("padding", ctypes.c_uint16 * 3),
    ]


KVM_NR_INTERRUPTS = 256


class kvm_sregs(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("cs", kvm_segment),
        ("ds", kvm_segment),
        ("es", kvm_segment),
        ("fs", kvm_segment),
        ("gs", kvm_segment),
        ("ss", kvm_segment),
        ("tr", kvm_segment),
        ("ldt", kvm_segment),
        ("gdt", kvm_dtable),
        ("idt", kvm_dtable),
        ("cr0", ctypes.c_uint64),
        ("cr2", ctypes.c_uint64),
        ("cr3", ctypes.c_uint64),
        ("cr4", ctypes.c_uint64),
        ("cr8", ctypes.c_uint64),
        ("efer", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("interrupt_bitmap", ctypes.c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class kvm_cpuid_entry2(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("function", ctypes.c_uint32),
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("eax", ctypes.c_uint32),
        ("ebx", ctypes.c_uint32),
        ("ecx", ctypes.c_uint32),
        ("edx", ctypes.c_uint32),
        ("padding", ctypes.c_uint32 * 3),
    ]


class kvm_cpuid2(ctypes.Structure):  # noqa: N801
    """Header only; the entries[] flexible array follows (see make_cpuid2)."""

    _fields_ = [("nent", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


def make_cpuid2(nent: int) -> ctypes.Structure:
    """A kvm_cpuid2 with room for nent entries (flexible array member)."""

    class _Cpuid2(ctypes.Structure):
        _fields_ = [
            ("nent", ctypes.c_uint32),
            ("padding", ctypes.c_uint32),
            ("entries", kvm_cpuid_entry2 * nent),
        ]

    c = _Cpuid2()
    c.nent = nent
    return c


class kvm_enable_cap(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("cap", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("args", ctypes.c_uint64 * 4),
        ("pad", ctypes.c_uint8 * 64),
    ]


class kvm_dirty_log(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("padding1", ctypes.c_uint32),
        ("dirty_bitmap", ctypes.c_uint64),  # union { void *; __u64 padding2 }
    ]


class kvm_clear_dirty_log(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("slot", ctypes.c_uint32),
        ("num_pages", ctypes.c_uint32),
        ("first_page", ctypes.c_uint64),
        ("dirty_bitmap", ctypes.c_uint64),  # union { void *; __u64 padding2 }
    ]


class kvm_stats_header(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("name_size", ctypes.c_uint32),
        ("num_desc", ctypes.c_uint32),
        ("id_offset", ctypes.c_uint32),
        ("desc_offset", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint32),
    ]


class kvm_stats_desc(ctypes.Structure):  # noqa: N801
    """Fixed part; name[header.name_size] follows each descriptor."""

    _fields_ = [
        ("flags", ctypes.c_uint32),
        ("exponent", ctypes.c_int16),
        ("size", ctypes.c_uint16),
        ("offset", ctypes.c_uint32),
        ("bucket_size", ctypes.c_uint32),
    ]


# --- struct kvm_run (only the parts we read) ---------------------------------


class kvm_run_io(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("direction", ctypes.c_uint8),
        ("size", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("count", ctypes.c_uint32),
        ("data_offset", ctypes.c_uint64),
    ]


class kvm_run_mmio(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("phys_addr", ctypes.c_uint64),
        ("data", ctypes.c_uint8 * 8),
        ("len", ctypes.c_uint32),
        ("is_write", ctypes.c_uint8),
    ]


class kvm_run_fail_entry(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("hardware_entry_failure_reason", ctypes.c_uint64),
        ("cpu", ctypes.c_uint32),
    ]


class kvm_run_internal(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("suberror", ctypes.c_uint32),
        ("ndata", ctypes.c_uint32),
        ("data", ctypes.c_uint64 * 16),
    ]


class kvm_run_exit(ctypes.Union):  # noqa: N801
    _fields_ = [
        ("io", kvm_run_io),
        ("mmio", kvm_run_mmio),
        ("fail_entry", kvm_run_fail_entry),
        ("internal", kvm_run_internal),
        ("padding", ctypes.c_char * 256),
    ]


class kvm_run(ctypes.Structure):  # noqa: N801
    """Head of the mmap()ed struct kvm_run; the exit union sits at offset 32."""

    _fields_ = [
        ("request_interrupt_window", ctypes.c_uint8),
        ("immediate_exit", ctypes.c_uint8),
        ("padding1", ctypes.c_uint8 * 6),
        ("exit_reason", ctypes.c_uint32),
        ("ready_for_interrupt_injection", ctypes.c_uint8),
        ("if_flag", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("cr8", ctypes.c_uint64),
        ("apic_base", ctypes.c_uint64),
        ("exit", kvm_run_exit),
    ]


# --- ioctl numbers ------------------------------------------------------------

# system fd
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, kvm_cpuid2)
# vm fd
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, kvm_userspace_memory_region)
KVM_ENABLE_CAP = _iow(0xA3, kvm_enable_cap)
KVM_CLEAR_DIRTY_LOG = _iowr(0xC0, kvm_clear_dirty_log)
KVM_GET_STATS_FD = _io(0xCE)
# vcpu fd
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, kvm_regs)
KVM_SET_REGS = _iow(0x82, kvm_regs)
KVM_GET_SREGS = _ior(0x83, kvm_sregs)
KVM_SET_SREGS = _iow(0x84, kvm_sregs)
KVM_SET_CPUID2 = _iow(0x90, kvm_cpuid2)

IOCTL_NAMES: dict[int, str] = {
    v: k for k, v in list(globals().items()) if k.startswith("KVM_") and isinstance(v, int)
}

KVM_API_VERSION = 12

# --- capabilities -------------------------------------------------------------

CAPS: dict[str, int] = {
    "USER_MEMORY": 3,
    "NR_VCPUS": 9,
    "NR_MEMSLOTS": 10,
    "SYNC_MMU": 16,
    "MAX_VCPUS": 66,
    "READONLY_MEM": 81,
    "IMMEDIATE_EXIT": 136,
    "MANUAL_DIRTY_LOG_PROTECT2": 168,
    "DIRTY_LOG_RING": 192,
    "BINARY_STATS_FD": 203,
    "DISABLE_QUIRKS2": 213,
}
KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = CAPS["MANUAL_DIRTY_LOG_PROTECT2"]
KVM_CAP_DISABLE_QUIRKS2 = CAPS["DISABLE_QUIRKS2"]

KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET = 1 << 1

QUIRKS: dict[str, int] = {
    "LINT0_REENABLED": 1 << 0,
    "CD_NW_CLEARED": 1 << 1,
    "LAPIC_MMIO_HOLE": 1 << 2,
    "OUT_7E_INC_RIP": 1 << 3,
    "MISC_ENABLE_NO_MWAIT": 1 << 4,
    "FIX_HYPERCALL_INSN": 1 << 5,
    "MWAIT_NEVER_UD_FAULTS": 1 << 6,
    "SLOT_ZAP_ALL": 1 << 7,
    "STUFF_FEATURE_MSRS": 1 << 8,
    "IGNORE_GUEST_PAT": 1 << 9,
    "VMCS12_ALLOW_FREEZE_IN_SMM": 1 << 10,
}
KVM_X86_QUIRK_SLOT_ZAP_ALL = QUIRKS["SLOT_ZAP_ALL"]

# memslot flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# --- exit reasons -------------------------------------------------------------

EXIT_REASONS: dict[int, str] = {
    0: "KVM_EXIT_UNKNOWN",
    1: "KVM_EXIT_EXCEPTION",
    2: "KVM_EXIT_IO",
    3: "KVM_EXIT_HYPERCALL",
    4: "KVM_EXIT_DEBUG",
    5: "KVM_EXIT_HLT",
    6: "KVM_EXIT_MMIO",
    7: "KVM_EXIT_IRQ_WINDOW_OPEN",
    8: "KVM_EXIT_SHUTDOWN",
    9: "KVM_EXIT_FAIL_ENTRY",
    10: "KVM_EXIT_INTR",
    17: "KVM_EXIT_INTERNAL_ERROR",
    24: "KVM_EXIT_SYSTEM_EVENT",
    29: "KVM_EXIT_X86_RDMSR",
    30: "KVM_EXIT_X86_WRMSR",
    31: "KVM_EXIT_DIRTY_RING_FULL",
    33: "KVM_EXIT_X86_BUS_LOCK",
    37: "KVM_EXIT_NOTIFY",
    39: "KVM_EXIT_MEMORY_FAULT",
}
KVM_EXIT_IO = 2
KVM_EXIT_MMIO = 6
KVM_EXIT_SHUTDOWN = 8
KVM_EXIT_FAIL_ENTRY = 9
KVM_EXIT_INTR = 10
KVM_EXIT_INTERNAL_ERROR = 17
KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


def exit_reason_name(reason: int) -> str:
    return EXIT_REASONS.get(reason, f"KVM_EXIT_<{reason}>")


# --- binary stats flags -------------------------------------------------------

KVM_STATS_TYPE_MASK = 0xF
KVM_STATS_TYPE_CUMULATIVE = 0
KVM_STATS_TYPE_INSTANT = 1
KVM_STATS_TYPE_PEAK = 2
KVM_STATS_TYPE_LINEAR_HIST = 3
KVM_STATS_TYPE_LOG_HIST = 4
KVM_STATS_UNIT_SHIFT = 4
KVM_STATS_UNIT_MASK = 0xF << KVM_STATS_UNIT_SHIFT
KVM_STATS_UNITS = ("none", "bytes", "seconds", "cycles", "boolean")
KVM_STATS_BASE_SHIFT = 8
KVM_STATS_BASE_MASK = 0xF << KVM_STATS_BASE_SHIFT
KVM_STATS_BASE_POW10 = 0
KVM_STATS_BASE_POW2 = 1

# --- libc via ctypes ----------------------------------------------------------

libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
libc.ioctl.restype = ctypes.c_int
libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
libc.mmap.restype = ctypes.c_void_p
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.munmap.restype = ctypes.c_int
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.restype = ctypes.c_int

PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_FAILED = ctypes.c_void_p(-1).value
MADV_HUGEPAGE = 14
MADV_POPULATE_WRITE = 23  # Linux 5.14
MADV_NOHUGEPAGE = 15


class KvmIoctlError(OSError):
    """A failed KVM ioctl; the message names the ioctl so failures are readable."""


def ioctl(fd: int, request: int, arg: int | ctypes.Structure | ctypes.Array = 0) -> int:
    """ioctl(2) through libc (releases the GIL); raises KvmIoctlError on -1.

    arg is either an integer (passed by value) or a ctypes object (passed by
    address).  EINTR is raised like any other errno so KVM_RUN callers can
    see a kick.
    """
    ptr = arg if isinstance(arg, int) else ctypes.addressof(arg)
    ret = libc.ioctl(fd, request, ptr)
    if ret == -1:
        err = ctypes.get_errno()
        name = IOCTL_NAMES.get(request, hex(request))
        raise KvmIoctlError(err, f"{name}: {os.strerror(err)}")
    return ret


def check_extension(fd: int, cap: int | str) -> int:
    """KVM_CHECK_EXTENSION on a system or VM fd; cap is a number or a name from CAPS.

    On a VM fd the answer is for that VM (its type may lack what the host has).
    """
    return ioctl(fd, KVM_CHECK_EXTENSION, CAPS[cap] if isinstance(cap, str) else cap)


def mmap_anon(size: int) -> int:
    """Private anonymous mapping (not shmem, unlike Python's mmap(-1, n))."""
    addr = libc.mmap(
        None, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0
    )
    if addr in (None, MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap({size}): {os.strerror(err)}")
    return addr


def mmap_fd(fd: int, size: int) -> int:
    """Shared mapping of a KVM fd (kvm_run); no dup() unlike Python's mmap."""
    addr = libc.mmap(None, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
    if addr in (None, MAP_FAILED):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap(fd={fd}, {size}): {os.strerror(err)}")
    return addr


def munmap(addr: int, size: int) -> None:
    if libc.munmap(addr, size) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"munmap({addr:#x}, {size}): {os.strerror(err)}")


MAP_FIXED = 0x10
MADV_DONTNEED = 4
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.mprotect.restype = ctypes.c_int


def mmap_anon_fixed(addr: int, size: int) -> None:
    """A fresh private anonymous mapping over ``[addr, addr + size)``: ``mmap(MAP_FIXED)``
    unmaps what was there first, in one call (``MMU_NOTIFY_UNMAP``), so no access can
    fall between an munmap and a new mapping."""
    got = libc.mmap(
        addr,
        size,
        PROT_READ | PROT_WRITE,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED,
        -1,
        0,
    )
    if got != addr:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap(MAP_FIXED {addr:#x}, {size}): {os.strerror(err)}")


def mprotect(addr: int, size: int, prot: int) -> None:
    if libc.mprotect(addr, size, prot) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mprotect({addr:#x}, {size}, {prot}): {os.strerror(err)}")


def madvise(addr: int, size: int, advice: int) -> None:
    if libc.madvise(addr, size, advice) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"madvise({addr:#x}, {size}, {advice}): {os.strerror(err)}")
