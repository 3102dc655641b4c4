"""The kvm plugin's CLI subcommands: ``doctor``, ``calibrate``, ``validate``."""

from __future__ import annotations

from mmbench.hookspecs import hookimpl

from .doctor import Doctor


@hookimpl
def mmbench_register_commands(register):
    register(Doctor)
