"""``mmbench plot`` on every workload's stored run, as a user types it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from conftest import SMALL, mmbench, run_json

RUNS = {
    "rom-access": [*SMALL, "--policy", "zap-slot", "--policy", "zap-all"],
    "dirty-log": ["--size", "2G", "--vcpus", "2", "--run-on-s", "62", "--policy", "collapse-sync"],
    "teardown": ["--size", "512M", "--policy", "s2-unmap"],
    "mmu-pressure": ["-c", "2", "--processes", "8", "--hot", "2", "--rounds", "4"],
}


def _png(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("workload", sorted(RUNS))
def test_every_workload_plots_by_default_with_the_users_umask(workload, runs_dir, tmp_path):
    run_json(workload, *RUNS[workload], "--reps", "2", "--name", "r")
    out = tmp_path / "default.png"
    env = {**os.environ, "MMBENCH_RUNS_DIR": str(runs_dir)}
    code = "import os, sys; os.umask(0o027); from mmbench.commands import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "plot", "r", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    w, h = _png(out)
    assert w >= 800 and h >= 300
    assert stat.S_IMODE(out.stat().st_mode) == 0o640  # 0666 & ~umask, as any new file
    bars = tmp_path / "bars.png"
    mmbench("plot", "r", "--kind", "bars", "--out", str(bars), check=True)
    assert _png(bars)[0] >= 800


def test_distributions_are_of_per_event_fields_only(runs_dir, tmp_path):
    run_json("rom-access", *RUNS["rom-access"], "--reps", "3", "--name", "r")
    for kind in ("hist", "cdf"):
        out = tmp_path / f"{kind}.png"
        mmbench("plot", "r", "--kind", kind, "--out", str(out), check=True)
        assert _png(out)[1] >= 2 * 300  # pass times and ROM deletes
    run_json("mmu-pressure", *RUNS["mmu-pressure"], "--name", "m")
    bad = mmbench("plot", "m", "--kind", "hist", "--series", "pf_fixed", "--out", str(out))
    assert bad.returncode == 2
    (line,) = bad.stderr.splitlines()
    assert "pf_fixed" in line and "slice.ms" in line  # a counter; what it could draw instead
