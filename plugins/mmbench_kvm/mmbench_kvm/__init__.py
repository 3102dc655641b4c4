"""Pure-Python /dev/kvm driver for measuring KVM's MMU invalidation paths.

ctypes + ioctls only (no QEMU, no compiled code): memslot add/delete/move,
guest populate faults, dirty logging, teardown and the binary stats of a
tiny 64-bit CPL3 guest.  See vm.py (KvmSystem/Vm/Vcpu/VcpuThread), guest.py
(page tables + touch loop) and stats.py (binary stats fd reader).
"""

from .guest import PAGE_SIZE_2M, PAGE_SIZE_4K, GuestLayout
from .stats import StatsReader
from .vm import (
    GuestExitError,
    KvmError,
    KvmSystem,
    Memslot,
    Vcpu,
    VcpuThread,
    VcpuTimeout,
    Vm,
)

__all__ = [
    "PAGE_SIZE_2M",
    "PAGE_SIZE_4K",
    "GuestExitError",
    "GuestLayout",
    "KvmError",
    "KvmSystem",
    "Memslot",
    "StatsReader",
    "Vcpu",
    "VcpuThread",
    "VcpuTimeout",
    "Vm",
]
