"""Start-up: what each command imports, read from ``python -X importtime -m mmbench ...``.

Plugin discovery and argument parsing run in every process, so a heavy module imported
at the top of a plugin or command module is paid by ``--help`` and by every run (README,
"Start-up"). These guard the modules that were moved to where they are used.
"""

from __future__ import annotations

import re
import subprocess
import sys

NEVER_AT_REGISTRATION = {
    "mmbench_kvm.kvm_vm",  # the kvm backend's VM (ctypes, ioctls): when a run needs it
    "mmbench_kvm.system",
    "mmbench_kvm.calibrate",
    "mmbench_kvm.validate",
    "mmbench.model.shadow.direct",  # x86-ept's MMU: in X86Ept.setup
    "mmbench.run.workers",  # the process pool: parallel runs only
    # (not concurrent.futures: asyncio imports it, and pydantic_core 2.46's typing_extensions
    # 4.15 imports asyncio, so whether it shows depends on the installed versions)
    "multiprocessing",
    "yaml",  # a YAML file read or written
    "pydantic",  # parameter checks use pydantic_core, and only when a value is given
    "pydantic_core",
    "jsonschema",  # a record stored or read
    "numpy.ma",
    "mmbench.report.plots",  # the drawing code: mmbench plot and --plot only
}


def imported(*args: str) -> set[str]:
    """Every module ``mmbench ARGS`` imported (``-X importtime`` is an interpreter flag,
    so not through ``conftest.mmbench``)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mmbench", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", done.stderr, re.M))


def test_help_imports_no_driver_pool_yaml_or_validators() -> None:
    mods = imported("--help")
    # plugins came (``import_module`` imports are not in -X importtime's list, but what
    # they import is): the kvm plugin's validate command listed its scenarios
    assert {"mmbench.host.manager", "mmbench_kvm.scenarios"} <= mods
    assert not mods & NEVER_AT_REGISTRATION, sorted(mods & NEVER_AT_REGISTRATION)


def test_one_policy_run_imports_what_it_uses_only(runs_dir) -> None:
    mods = imported(
        "run", "rom-access", "-c", "1", "-m", "64", "--passes", "2", "--policy", "zap-slot",
        "--json",
    )  # fmt: skip
    used = {"pydantic_core", "jsonschema"}  # -c/-m are checked; the record is stored
    assert used <= mods
    unused = NEVER_AT_REGISTRATION - used
    assert not mods & unused, sorted(mods & unused)
