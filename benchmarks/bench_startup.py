"""Start-up: what a user waits for before any modelling (interpreter, imports, plugin
discovery, argument checks, storing the record), each command in a fresh process.

``bytecode``: ``cached`` reads mmbench's modules compiled once in ``setup`` (a private
``PYTHONPYCACHEPREFIX``), as on most machines; ``none`` compiles them every time, as under
``PYTHONDONTWRITEBYTECODE`` (set on the shared development hosts).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from .common import mmbench_cli, require

# one thread, 64 MB, two passes and a ROM read every 20 ms: ~0.05 s of modelling
TINY_RUN = ["rom-access", "-c", "1", "-m", "64", "--passes", "2", "--rom-interval-ms", "20"]


class StartUp:
    """``mmbench --help``, ``mmbench list`` and a tiny one-policy ``run``, as typed."""

    params = [["cached", "none"]]
    param_names = ["bytecode"]
    number = 1
    repeat = (3, 7, 60.0)
    timeout = 120

    def setup(self, bytecode):
        require("workload", "rom-access")
        require("policy", "zap-slot")
        self.tmp = tempfile.mkdtemp(prefix="mmbench-asv-startup-")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["MMBENCH_RUNS_DIR"] = os.path.join(self.tmp, "runs")
        if bytecode == "cached":
            env["PYTHONPYCACHEPREFIX"] = os.path.join(self.tmp, "pycache")
        else:
            env.pop("PYTHONPYCACHEPREFIX", None)
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        self.env = env
        mmbench_cli(["list"], env)  # compiles every module discovery imports (cached)

    def teardown(self, bytecode):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def time_help(self, bytecode):
        mmbench_cli(["--help"], self.env)

    def time_list(self, bytecode):
        mmbench_cli(["list"], self.env)

    def time_tiny_run(self, bytecode):
        mmbench_cli(["run", *TINY_RUN, "--policy", "zap-slot", "--json"], self.env)
