"""Pure-Python /dev/kvm driver for measuring KVM's MMU invalidation paths.

ctypes + ioctls only (no QEMU, no compiled code): memslot add/delete/move,
guest populate faults, dirty logging, teardown and the binary stats of a
tiny 64-bit CPL3 guest.  One module per thing the driver wraps: system.py (the
/dev/kvm fd, KvmSystem), vm.py (a VM fd, Vm), vcpu.py (a vCPU fd and its thread, Vcpu and
VcpuThread), memslot.py (guest memory, Memslot) and stats.py (a binary stats fd); guest.py
builds the page tables and touch loop, errors.py holds the driver's errors.
"""

from .errors import GuestExitError, KvmError, VcpuTimeout
from .guest import PAGE_SIZE_2M, PAGE_SIZE_4K, GuestLayout
from .memslot import Memslot
from .stats import StatsReader
from .system import KvmSystem
from .vcpu import Vcpu, VcpuThread
from .vm import Vm

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
