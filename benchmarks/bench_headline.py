"""The model's own wall time and peak memory at the headline sizes the README quotes (issue
14's targets): the default rom-access (8 x 2000 MB, 30 passes), the 4 TiB dirty-log and
the 64 GiB teardowns, one policy at a time in asv's process (``time_``, ``peakmem_``), and
the default ``mmbench run`` of each as a user types it, every policy, start-up included
(``time_command_``). Parameters are spelled out, not taken from the workloads' defaults,
so a changed default starts no silent new history."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from .common import require, run_model

GIB = 1 << 30
TIB = 1 << 40
ROM_DEFAULT = {"threads": 8, "mb": 2000, "passes": 30, "rom_interval_ms": 500.0}
ROM_POLICIES = ["zap-all", "fast-invalidate", "zap-slot"]
DIRTY_LOG_4T = {"size": 4 * TIB}
DIRTY_LOG_POLICIES = ["collapse-sync", "lazy-collapse", "tdp-zap-collapsible", "recover-in-place"]
TEARDOWN_64G = {"size": 64 * GIB}
TEARDOWN_CASES = [
    "arm64/s2-unmap",
    "arm64/s2-elide",
    "x86-tdp/zap-all",
    "x86-tdp/zap-all:lock_break=true",
]


class _SevenSamples:
    """One run per sample and 7 samples a side: asv continuous uses its Mann-Whitney test
    (p < 0.002) only when the samples allow such a p (1/C(14, 7) = 0.0006; 6 a side
    cannot, 2/C(12, 6) = 0.0022). No warm-up: a run is seconds long."""

    number = 1
    rounds = 1
    repeat = (7, 7, 300.0)
    warmup_time = 0
    timeout = 600


class RomAccessHeadlineSpeed(_SevenSamples):
    """``mmbench run rom-access`` at its defaults, one policy in this process."""

    params = [ROM_POLICIES]
    param_names = ["policy"]

    def time_rom_access_default(self, policy):
        run_model("rom-access", ROM_DEFAULT, policy)

    def peakmem_rom_access_default(self, policy):
        run_model("rom-access", ROM_DEFAULT, policy)


class DirtyLogHeadlineSpeed(_SevenSamples):
    """``mmbench run dirty-log`` at 4 TiB (x86-tdp), one policy in this process."""

    params = [DIRTY_LOG_POLICIES]
    param_names = ["policy"]

    def time_dirty_log_4t(self, policy):
        run_model("dirty-log", DIRTY_LOG_4T, policy, arch="x86-tdp")

    def peakmem_dirty_log_4t(self, policy):
        run_model("dirty-log", DIRTY_LOG_4T, policy, arch="x86-tdp")


class TeardownHeadlineSpeed(_SevenSamples):
    """``mmbench run teardown`` at 64 GiB: arm64 with and without CMOs, x86-tdp zap-all
    (10 ms runs: asv's own warm-up)."""

    params = [TEARDOWN_CASES]
    param_names = ["arch_policy"]
    repeat = (7, 7, 60.0)
    warmup_time = -1
    timeout = 300

    def time_teardown_64g(self, case):
        arch, policy = case.split("/", 1)
        run_model("teardown", TEARDOWN_64G, policy, arch=arch)

    def peakmem_teardown_64g(self, case):
        arch, policy = case.split("/", 1)
        run_model("teardown", TEARDOWN_64G, policy, arch=arch)


class HeadlineCommand(_SevenSamples):
    """The whole command a user types, each default policy (in parallel processes where
    there are cores, as ``run`` does), interpreter start-up and the stored record included:
    the figure the issue's "at most 3 s wall" is about."""

    params = [["rom-access", "dirty-log", "teardown"]]
    param_names = ["workload"]
    repeat = (7, 7, 400.0)
    timeout = 900

    def setup(self, workload):
        require("workload", workload)
        self.runs = tempfile.TemporaryDirectory(prefix="mmbench-asv-")

    def teardown(self, workload):
        self.runs.cleanup()

    def time_command_default(self, workload):
        subprocess.run(
            [sys.executable, "-m", "mmbench", "run", workload, "--json"],
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "MMBENCH_RUNS_DIR": self.runs.name},
        )
