"""``mmbench bench`` as a user types it: the model's wall time against the kernel's.

Tiny scenarios (each child is a few seconds at most). The kernel rows appear exactly when
/dev/kvm opens here; its absence is simulated the project's way, by blocking the kvm
plugin (``MMBENCH_BLOCK_PLUGINS``), and, where a private mount namespace can be made, by
/dev/kvm that is not a KVM device. Timings are never compared with a figure: only that
they are measured (positive, the run inside its process, all of them inside the command).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import mmbench

TINY = ["-c", "2", "-m", "16", "--passes", "4", "--rom-interval-ms", "2"]


def _kvm_usable() -> bool:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


KVM = _kvm_usable()


def test_bench_json_rows_are_measured_and_the_kernel_row_is_there_iff_kvm_is():
    started = time.perf_counter()
    proc = mmbench(
        "bench", "rom-access", *TINY, "--policy", "fast-invalidate", "--repeat", "2",
        "--format", "json", check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    doc = json.loads(proc.stdout)
    assert doc["workload"] == "rom-access" and doc["arch"] == "x86-shadow"
    assert doc["params"]["threads"] == 2 and doc["params"]["mb"] == 16
    assert doc["command"].startswith("mmbench run rom-access -c 2 -m 16 --passes 4")
    rows = {r["backend"]: r for r in doc["rows"]}
    assert set(rows) == {"sim", "kvm"}
    model = rows["sim"]
    assert len(model["wall_s"]) == 2
    measured = [r for r in doc["rows"] if "skipped" not in r]
    for r in measured:
        # each child's wall time holds its run, and all of them fit inside this command
        assert all(w > run > 0 for w, run in zip(r["wall_s"], r["run_s"], strict=True)), r
        assert r["wall_s_min"] <= r["wall_s_median"] <= r["wall_s_max"]
        assert r["startup_s_median"] > 0 and r["cpu_s_median"] > 0
        assert r["peak_rss_mb_median"] > 20  # a Python with numpy loaded, at least
    assert sum(w for r in measured for w in r["wall_s"]) < elapsed
    assert doc["host"]["cpus"] == os.cpu_count() and len(doc["host"]["loadavg_1min"]) == 2
    assert doc["host"]["bytecode_cached"] == (not os.environ.get("PYTHONDONTWRITEBYTECODE"))
    if KVM:
        kern = rows["kvm"]
        assert "skipped" not in kern and len(kern["wall_s"]) == 2
        (ratio,) = doc["ratios"]
        assert ratio["policy"] == "fast-invalidate"
        assert ratio["wall"] == pytest.approx(
            model["wall_s_median"] / kern["wall_s_median"], rel=1e-3
        )
        assert ratio["wall_pairs_min"] <= ratio["wall_pairs_max"]
        # the kernel's run holds real guest memory: 16 MiB of it is touched
        assert kern["peak_rss_mb_median"] > model["peak_rss_mb_median"] - 50
    else:
        assert "/dev/kvm" in rows["kvm"]["skipped"] and doc["ratios"] == []


def test_bench_text_table_as_typed():
    out = mmbench("bench", "rom-access", *TINY, "--repeat", "1", check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("mmbench run rom-access -c 2 -m 16")
    assert "1 repetition(s)" in lines[0]
    header = next(ln for ln in lines if ln.startswith("policy"))
    assert "wall s, median (min-max)" in header and "peak RSS MB" in header
    model_rows = [ln.split()[0] for ln in lines if ln.split()[1:2] == ["model"]]
    assert model_rows == ["zap-all", "fast-invalidate", "zap-slot"]  # run's defaults, in order
    kernel_rows = [ln.split()[0] for ln in lines if ln.split()[1:2] == ["kernel"]]
    if KVM:  # zap-all has no kernel knob on a memslot delete: it says so
        assert kernel_rows == ["fast-invalidate", "zap-slot"]
        assert any(ln.startswith("kernel not run for zap-all: --policy:") for ln in lines)
        assert sum(ln.startswith("model/kernel wall time, ") for ln in lines) == 2
    else:
        assert kernel_rows == []
        assert sum(ln.startswith("kernel not run") for ln in lines) == 1


def test_bench_without_the_kvm_plugin_runs_the_model_and_says_why_in_one_line():
    proc = mmbench(
        "bench", "rom-access", *TINY, "--policy", "zap-slot", "--repeat", "1",
        env={"MMBENCH_BLOCK_PLUGINS": "kvm"}, check=True,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert [ln.split()[:2] for ln in lines if ln.startswith("zap-slot ")] == [["zap-slot", "model"]]
    (why,) = [ln for ln in lines if ln.startswith("kernel not run")]
    assert why == "kernel not run: --backend: unknown backend 'kvm' (available: sim)"
    assert not any(ln.startswith("model/kernel") for ln in lines)


@pytest.mark.skipif(not KVM, reason="needs /dev/kvm to hide (the kvm backend)")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1) here")
def test_bench_where_dev_kvm_is_not_a_kvm_device_says_so(tmp_path):
    """A private mount namespace where /dev/kvm is /dev/null: it opens, but is no KVM."""
    script = (
        "mount --bind /dev/null /dev/kvm && exec "
        f"{sys.executable} -m mmbench bench rom-access {' '.join(TINY)} --policy zap-slot"
        " --repeat 1 --format json"
    )
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode and ("mount" in proc.stderr or "unshare" in proc.stderr):
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    rows = {r["backend"]: r for r in json.loads(proc.stdout)["rows"]}
    assert len(rows["sim"]["wall_s"]) == 1
    assert rows["kvm"]["skipped"].startswith("--backend: backend 'kvm' is unavailable here")


@pytest.mark.parametrize(
    "args, says",
    [
        (["rom-access", "-c", "0"], "-c/--threads: must be >= 1"),
        (["rom-access", "--repeat", "0"], "--repeat: must be >= 1 (got 0)"),
        (["rom-access", "--repeat", "101"], "--repeat: must be 1..100 (got 101)"),
        (["rom-access", "--format", "xml"], "--format: invalid choice: 'xml'"),
        (["rom-access", "--policy", "nope"], "--policy: unknown policy 'nope'"),
        (["rom-access", "--arch", "arm64"], "arm64"),
        (["dirty-log", "-b", "5X"], "units K, M, G, T, P"),
        ([], "WORKLOAD: name a workload (workloads: "),
    ],
)
def test_bench_bad_input_is_one_line_exit_2_before_anything_runs(args, says):
    proc = mmbench("bench", *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
