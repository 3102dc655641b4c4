"""Errors a user can cause, reported as one line naming the field, with exit status 2."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad input: names the field (option, config key, parameter) and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ModelError(RuntimeError):
    """The model reached a state the kernel could not (a bug in a policy or the core)."""


class InvariantViolation(ModelError):
    """The invariant checker found a stale mapping, a bad rmap or an obsolete root in use."""


class BackendError(RuntimeError):
    """A real-kernel run failed: the guest crashed or stuck, or KVM refused an ioctl."""
