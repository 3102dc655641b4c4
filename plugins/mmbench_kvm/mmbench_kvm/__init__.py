"""Pure-Python /dev/kvm driver for measuring KVM's MMU invalidation paths.

ctypes + ioctls only (no QEMU, no compiled code): memslot add/delete/move,
guest populate faults, dirty logging, teardown and the binary stats of a
tiny 64-bit CPL3 guest.  One module per thing the driver wraps: system.py (the
/dev/kvm fd, KvmSystem), vm.py (a VM fd, Vm), vcpu.py (a vCPU fd and its thread, Vcpu and
VcpuThread), memslot.py (guest memory, Memslot) and stats.py (a binary stats fd); guest.py
builds the page tables and touch loop, errors.py holds the driver's errors.

The names below are imported on first use (PEP 562): every ``mmbench`` process loads the
plugin's registration modules (``backend``, ``commands``), which must not pay for ctypes
and the VM code.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "GuestExitError": "errors",
    "KvmError": "errors",
    "VcpuTimeout": "errors",
    "PAGE_SIZE_2M": "guest",
    "PAGE_SIZE_4K": "guest",
    "GuestLayout": "guest",
    "Memslot": "memslot",
    "StatsReader": "stats",
    "KvmSystem": "system",
    "Vcpu": "vcpu",
    "VcpuThread": "vcpu",
    "Vm": "vm",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
