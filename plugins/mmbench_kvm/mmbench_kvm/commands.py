"""The kvm plugin's CLI subcommands: ``doctor``, ``calibrate``, ``validate``.

Registration and ``--help`` need only each command's name, help and flags, so they live
here; what a command does (ctypes, ioctls, the VM code, numpy, PyYAML) is imported when it
runs. Every ``mmbench`` invocation builds the parser, so this module is on everyone's
start-up path.
"""

from __future__ import annotations

import argparse

from mmbench import hookimpl

DEFAULT_FIT_SIZES_MB = (32, 64, 128)  # calibrate: guest sizes the cost table is fitted on
DEFAULT_SIZES_MB = (256, 1024)  # validate: sizes other than the fit's


class Doctor:
    """What the host supports for mmbench's kvm backend, and why something is unavailable."""

    name = "doctor"
    help = "what this host's /dev/kvm supports (backend kvm, policies, native guest)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the facts as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from .doctor import doctor

        return doctor(args)


class Calibrate:
    """Fit the x86-shadow cost table to this host's KVM; write it for ``--costs``."""

    name = "calibrate"
    help = "measure /dev/kvm and write a fitted x86-shadow cost table (YAML, for --costs)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--sizes-mb",
            default=",".join(map(str, DEFAULT_FIT_SIZES_MB)),
            help="guest sizes to fit on, MiB (default: %(default)s)",
        )
        parser.add_argument(
            "--reps",
            "--repeat",
            dest="reps",
            type=int,
            default=3,
            help="repetitions of every experiment, each fitted on its own (%(default)s)",
        )
        parser.add_argument(
            "-o", "--output", default="costs-kvm.yaml", help="cost table file (%(default)s)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from .calibrate import calibrate

        return calibrate(args)


class Validate:
    """The model (with a calibrated table) against the kernel: a fidelity report."""

    name = "validate"
    help = "fidelity report: the model (--costs from calibrate) vs /dev/kvm, every scenario"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from .scenarios import SCENARIOS  # the workloads' declarations only, no VM code

        parser.add_argument(
            "--costs",
            default="costs-kvm.yaml",
            metavar="FILE",
            help="cost table from mmbench calibrate (%(default)s)",
        )
        parser.add_argument(
            "--sizes-mb",
            default=",".join(map(str, DEFAULT_SIZES_MB)),
            help="guest sizes, MiB, not among the calibration's (default: %(default)s)",
        )
        parser.add_argument(
            "--repeat", type=int, default=3, help="kernel runs per cell (%(default)s)"
        )
        parser.add_argument(
            "--scenario",
            action="append",
            metavar="NAME",
            help="only these scenarios (repeatable; default: all: "
            + ", ".join(dict.fromkeys(s.name for s in SCENARIOS))
            + ")",
        )
        parser.add_argument("--format", default="text", help="text, markdown or json")
        parser.add_argument("--json", action="store_true", help="same as --format json")

    def run(self, args: argparse.Namespace) -> int:
        from .validate import validate

        return validate(args)


@hookimpl
def mmbench_register_commands(register):
    register(Doctor)
    register(Calibrate)
    register(Validate)
