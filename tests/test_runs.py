"""Named runs, configs, comparisons with significance, and runs surviving interrupts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, SMALL, mmbench, run_json

CONFIG = REPO / "configs" / "rom-access-8x2000.yaml"
QUICK = ["-c", "2", "-m", "128", "--passes", "6", "--rom-interval-ms", "10"]


def test_config_runs_then_compare_marks_significance(runs_dir):
    # the shipped seed config, shrunk from the command line (flags override the file)
    a = run_json("--config", str(CONFIG), "rom-access", *QUICK, "--reps", "4", "--name", "a")
    assert [r["policy"] for r in a["results"]] == ["zap-all", "fast-invalidate", "zap-slot"]
    assert all(len(r["reps"]) == 4 for r in a["results"])
    run_json(
        "--config",
        str(CONFIG),
        "rom-access",
        *QUICK,
        "--reps",
        "4",
        "--name",
        "b",
        "--policy",
        "zap-slot",
    )
    out = mmbench("compare", "a", "b", check=True).stdout
    assert "a/zap-all" in out and "b/zap-slot" in out
    lines = out.splitlines()
    block = lines.index(next(line for line in lines if line.startswith("pass_time_ms")))
    row = next(line for line in lines[block:] if line.startswith("Amean"))
    assert "+**" in row  # zap-slot vs zap-all: a large, significant difference, better
    doc = json.loads(mmbench("compare", "a", "b", "--format", "json", check=True).stdout)
    cells = doc["metrics"]["pass_time_ms"]["cells"]
    assert doc["baseline"] == "a/zap-all" and cells[3]["significant"]
    assert cells[2]["mean"] == pytest.approx(cells[3]["mean"])  # same config, same seeds
    html = mmbench("compare", "a", "b", "--format", "html", check=True).stdout
    assert html.startswith("<!doctype html>") and "<table>" in html
    md = mmbench("compare", "a", "b", "--format", "markdown", check=True).stdout
    assert "| pass_time_ms (ms) |" in md


def test_repetitions_use_successive_seeds(runs_dir):
    doc = run_json(
        "rom-access", *QUICK, "--policy", "fast-invalidate", "--reps", "3", "--name", "seeds"
    )
    rec = json.loads((runs_dir / "seeds" / "result.json").read_text())
    assert rec["results"][0]["seeds"] == [0, 1, 2]
    reads = {r["rom_reads"] for r in doc["results"][0]["reps"]}
    times = {r["pass_time_ms"] for r in doc["results"][0]["reps"]}
    assert len(times) > 1 or len(reads) > 1  # jittered rom.sh: the reps differ


BAD_CONFIGS = [
    ("workload: [", "not valid YAML"),
    ("- rom-access", "expected a mapping"),
    ("params: {mb: 10}", "workload: missing"),
    ("workload: romaccess", "workload: unknown workload 'romaccess' (available:"),
    ("workload: rom-access\npolices: [zap-slot]", "polices: unknown key (allowed:"),
    ("workload: rom-access\nparams: [1, 2]", "params: expected a mapping"),
    ("workload: rom-access\nparams: {colour: 1}", "params.colour: unknown parameter"),
    ("workload: rom-access\nparams: {mb: lots}", "params.mb: expected int"),
    ("workload: rom-access\nparams: {mb: 0}", "params.mb: must be >= 1"),
    ("workload: rom-access\nparams: {threads: -1}", "params.threads: must be >= 1"),
    ("workload: rom-access\nparams: {threads: 64, mb: 100000}", "params.mb: 64 x 100000 MB"),
    ("workload: rom-access\nparams: {rom_interval_ms: 0}", "params.rom_interval_ms: must be > 0"),
    ("workload: rom-access\nparams: {rom_gpa: 0x100000}", "params.rom_gpa: gpa 0x100000"),
    ("workload: rom-access\nparams: {passes: 2.5}", "params.passes: expected int"),
    ("workload: rom-access\npolicies: zap-slot", "policies: expected a list"),
    ("workload: rom-access\npolicies: [zap-slot, nope]", "policies[1]: unknown policy 'nope'"),
    ("workload: rom-access\npolicies: ['zap-all:lb=1']", "policies[0]: unknown option 'lb'"),
    ("workload: rom-access\narch: sparc", "arch: unknown arch 'sparc' (available:"),
    ("workload: rom-access\nbackend: qemu", "backend: unknown backend 'qemu' (available:"),
    ("workload: rom-access\nreps: 0", "reps: expected an integer 1..1000"),
    ("workload: rom-access\nreps: '3'", "reps: expected an integer 1..1000"),
    ("workload: rom-access\ncheck: sometimes", "check: expected true or false"),
    ("workload: rom-access\ncosts: missing.yaml", "costs: no such file"),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_bad_config_names_the_field(tmp_path, runs_dir, text, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text + "\n")
    proc = mmbench("run", "--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and str(cfg) in err and message in err, err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def foreground() -> None:
    """A terminal's foreground job has SIGINT at its default; a test run from a background
    job (``.ci/run &``) inherits it ignored, and Ctrl-C could not be tested at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(runs_dir, name):
    env = {**os.environ, "MMBENCH_RUNS_DIR": str(runs_dir)}
    return subprocess.Popen(
        [sys.executable, "-m", "mmbench", "run", "rom-access", "--name", name],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=foreground,
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_run_leaves_earlier_runs_intact(runs_dir, sig):
    run_json("rom-access", *SMALL, "--policy", "zap-slot", "--name", "earlier")
    before = (runs_dir / "earlier" / "result.json").read_bytes()
    proc = _start(runs_dir, "victim")  # the full 8 x 2000 MB run takes seconds
    time.sleep(1.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "nothing was saved" in err
    else:
        assert proc.returncode == -signal.SIGKILL
    assert (runs_dir / "earlier" / "result.json").read_bytes() == before
    assert not (runs_dir / "victim").exists()
    assert mmbench("runs", check=True).stdout.split()[0] == "earlier"
    run_json("rom-access", *SMALL, "--policy", "zap-slot", "--name", "after")
    assert not list(runs_dir.glob(".tmp-*"))  # nothing half-written stays behind


def test_json_output_is_clean(runs_dir):
    proc = mmbench("run", "rom-access", *SMALL, "--json", "--policy", "zap-slot", check=True)
    json.loads(proc.stdout)
    assert proc.stderr == ""


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    from mmbench.run.config import load_config

    req = load_config(path)
    assert req.workload and req.policies


def test_per_phase_bars_and_lock_hold_plots(tmp_path, runs_dir):
    run_json("teardown", "--size", "1G", "--reps", "2", "--name", "td")
    out = tmp_path / "phases.png"
    mmbench("plot", "td", "--kind", "bars", "--out", str(out), check=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    bad = mmbench("plot", "td", "--kind", "bars", "--series", "nope_ms", "--out", str(out))
    assert bad.returncode == 2 and "nope_ms" in bad.stderr
    run_json("rom-access", *SMALL, "--name", "ra")
    hist = tmp_path / "rom.png"
    mmbench("plot", "ra", "--out", str(hist), check=True)  # pass times, deletes, lock holds
    assert hist.stat().st_size > 10_000


def test_ctrl_c_stops_a_parallel_run_within_a_second(runs_dir):
    """A terminal's Ctrl-C: SIGINT to the whole foreground process group."""
    run_json("rom-access", *SMALL, "--policy", "zap-slot", "--name", "earlier")
    before = (runs_dir / "earlier" / "result.json").read_bytes()
    env = {**os.environ, "MMBENCH_RUNS_DIR": str(runs_dir)}
    proc = subprocess.Popen(
        # the default run (3 policies on 2 worker processes) with many passes: minutes
        [sys.executable, "-m", "mmbench", "run", "rom-access", "--passes", "400", "--jobs", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=foreground,
    )
    time.sleep(4)  # imports done, both workers deep in their policies' runs
    assert proc.poll() is None
    workers = subprocess.run(
        ["pgrep", "-g", str(proc.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(workers) >= 3, workers  # the parent and its two workers
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert elapsed < 1.0, f"took {elapsed:.2f} s to stop"
    assert err.strip().splitlines() == ["mmbench: interrupted; nothing was saved"], err
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True)
    assert not left.stdout.split(), "worker processes outlived the run"
    assert (runs_dir / "earlier" / "result.json").read_bytes() == before
    assert mmbench("runs", check=True).stdout.split()[0] == "earlier"
    assert not list(runs_dir.glob(".tmp-*")) and not list(runs_dir.glob(".reserved-*"))


def test_identical_repetitions_are_said_so_not_shown_as_zero_spread(runs_dir):
    out = mmbench("run", "teardown", "--size", "1G", "--reps", "3", check=True).stdout
    assert "±0" not in out
    assert "repetitions identical" in out and "s2-unmap (3)" in out
    seeded = mmbench("run", "rom-access", *SMALL, "--policy", "zap-slot", "--reps", "3").stdout
    assert "repetitions identical" not in seeded  # rom.sh's jitter varies with the seed
