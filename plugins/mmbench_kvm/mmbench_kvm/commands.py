"""The kvm plugin's CLI subcommands: ``doctor``, ``calibrate``, ``validate``."""

from __future__ import annotations

from mmbench import hookimpl

from .calibrate import Calibrate
from .doctor import Doctor
from .validate import Validate


@hookimpl
def mmbench_register_commands(register):
    register(Doctor)
    register(Calibrate)
    register(Validate)
