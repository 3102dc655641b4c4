"""The driver's own errors, apart from plain ioctl failures (ioctls.KvmIoctlError).

They live apart from the fd wrappers so the backend can catch them without caring which
object (system, VM, vCPU) raised them.
"""

from __future__ import annotations

from . import ioctls as k


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
