"""``mmbench sweep`` and ``sweep-report`` as a user runs them: on a local dask cluster, on
a scheduler and workers started as separate processes, killed and resumed, refused."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, mmbench

SMALL = """\
workload: rom-access
policies: [zap-slot, fast-invalidate]
params: {threads: 2, mb: 64, passes: 3}
sweep:
  grid:
    params.rom_interval_ms: [5, 20]
    params.threads: [1, 2]
  reps: 2
  claims: ["pass_time_ms: zap-slot < fast-invalidate"]
"""


def sweep_json(*args: str) -> dict:
    proc = mmbench("sweep", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def metrics_by_point(doc: dict) -> dict:
    return {p["id"]: {r["policy"]: r["reps"] for r in p["results"]} for p in doc["points"]}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, dict]:
    """The small sweep, run once on a local cluster of 2 workers."""
    d = tmp_path_factory.mktemp("sweep")
    (d / "small.yaml").write_text(SMALL)
    doc = sweep_json(str(d / "small.yaml"), "--runs-dir", str(d / "runs"), "--jobs", "2")
    return d, doc


def test_points_are_stored_runs_identical_to_mmbench_run(small):
    d, doc = small
    assert [p["id"] for p in doc["points"]] == ["p0000", "p0001", "p0002", "p0003"]
    assert doc["ran"] == ["p0000", "p0001", "p0002", "p0003"] and doc["skipped"] == 0
    index = json.loads((d / "runs" / "small" / "index.json").read_text())
    assert index["done"] == ["p0000", "p0001", "p0002", "p0003"]
    runs = mmbench("runs", "--runs-dir", str(d / "runs" / "small"), check=True).stdout
    assert all(pid in runs for pid in index["done"])
    for point in doc["points"][::3]:  # the grid's corners, as `mmbench run` runs them
        v = point["values"]
        ran = json.loads(
            mmbench(
                *("run", "rom-access", "-c", str(v["params.threads"]), "-m", "64"),
                *("--passes", "3", "--rom-interval-ms", str(v["params.rom_interval_ms"])),
                *("--policy", "zap-slot", "--policy", "fast-invalidate", "--reps", "2"),
                *("--json", "--runs-dir", str(d / "single")),
                check=True,
            ).stdout
        )
        assert {r["policy"]: r["metrics"] for r in ran["results"]} == {
            r["policy"]: r["metrics"] for r in point["results"]
        }


def test_report_table_plots_and_claims(small, tmp_path):
    d, _ = small
    sweep_dir = str(d / "runs" / "small")
    out = tmp_path / "line.png"
    proc = mmbench(
        "sweep-report", sweep_dir, "--x", "params.rom_interval_ms", "--out", str(out), check=True
    )
    assert "| params.rom_interval_ms | zap-slot | fast-invalidate |" in proc.stdout
    assert re.search(r"zap-slot < fast-invalidate: holds at \d of 4 points", proc.stdout)
    assert out.stat().st_size > 10_000
    heat = tmp_path / "heat.png"
    proc = mmbench(
        *("sweep-report", sweep_dir, "--x", "params.rom_interval_ms", "--y", "params.threads"),
        *("--out", str(heat), "--claim", "pass_time_ms: fast-invalidate < zap-slot"),
        check=True,
    )
    assert heat.stat().st_size > 10_000
    holds = re.findall(r"holds at (\d) of 4", proc.stdout)
    assert len(holds) == 2 and int(holds[0]) + int(holds[1]) <= 4
    bad = mmbench("sweep-report", sweep_dir, "--x", "params.mb")
    assert bad.returncode == 2
    assert bad.stderr.strip().endswith(
        "--x: 'params.mb' is not swept here (swept keys: params.rom_interval_ms, params.threads)"
    )


def _start(*args: str, log: Path) -> subprocess.Popen:
    """``python -m ARGS`` in a session of its own, output to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", *args], stdout=fd, stderr=fd, start_new_session=True
        )
    finally:
        os.close(fd)


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (a worker's nanny and its worker), SIGKILL what is left
    after 20 s."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs:
        while not _gone(p.pid) and time.monotonic() < deadline:
            p.poll()  # reap the leader
            time.sleep(0.1)
        if not _gone(p.pid):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _worker(address: str, log: Path) -> subprocess.Popen:
    return _start(
        *("distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1"),
        *("--no-dashboard", "--host", "127.0.0.1"),
        log=log,
    )


def test_scheduler_and_worker_processes_give_the_local_results(small, tmp_path):
    """A scheduler and workers as separate processes on 127.0.0.1. The first worker is
    killed (SIGKILL) while it runs the sweep's first tasks; two others join, the points
    it held run again there, and every figure equals the local cluster's."""
    d, local = small
    sched_file = tmp_path / "scheduler.json"
    procs = [
        _start(
            *("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"),
            *("--no-dashboard", "--scheduler-file", str(sched_file)),
            log=tmp_path / "scheduler.log",
        )
    ]
    try:
        for _ in range(300):
            if sched_file.exists() and sched_file.read_text().strip():
                break
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs.append(_worker(address, tmp_path / "doomed.log"))
        out = tmp_path / "sweep.json"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
        client = subprocess.Popen(
            [sys.executable, "-m", "mmbench", "sweep", str(d / "small.yaml"), "--json"]
            + ["--runs-dir", str(tmp_path / "runs"), "--scheduler", address],
            stdout=fd,
            stderr=subprocess.PIPE,
            text=True,
        )
        os.close(fd)
        index = tmp_path / "runs" / "small" / "index.json"
        while not index.exists() and client.poll() is None:
            time.sleep(0.02)
        time.sleep(0.5)  # the doomed worker is importing mmbench for, or running, a task
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        procs += [_worker(address, tmp_path / f"worker{i}.log") for i in range(2)]
        _, err = client.communicate(timeout=300)
        assert client.returncode == 0, err
        remote = json.loads(out.read_text())
    finally:
        _stop(procs)
    assert all(_gone(p.pid) for p in procs)
    assert metrics_by_point(remote) == metrics_by_point(local)
    assert remote["claims"] == local["claims"]


def test_resume_after_kill_runs_only_the_missing_points(tmp_path):
    sweep = tmp_path / "slow.yaml"
    sweep.write_text(
        "workload: rom-access\npolicies: [zap-slot]\n"
        "params: {threads: 2, mb: 128, passes: 12, rom_interval_ms: 5}\n"
        "sweep:\n  grid:\n    params.seed: [0, 1, 2, 3, 4, 5]\n"
    )
    runs = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmbench", "sweep", str(sweep), "--runs-dir", str(runs)]
        + ["--jobs", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    index = runs / "slow" / "index.json"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if index.exists() and json.loads(index.read_text())["done"]:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client and its cluster's workers
        proc.wait()
    for _ in range(100):
        if _gone(proc.pid):
            break
        time.sleep(0.1)
    assert _gone(proc.pid)
    # stored runs are the truth; the index may lag by the point saved as the kill came
    done = sorted(p.name for p in (runs / "slow").glob("p*") if (p / "result.json").exists())
    assert set(json.loads(index.read_text())["done"]) <= set(done)
    assert 1 <= len(done) < 6, "the kill came too late to test anything"
    before = {pid: (runs / "slow" / pid / "result.json").read_bytes() for pid in done}
    again = sweep_json(str(sweep), "--runs-dir", str(runs), "--resume", "--jobs", "2")
    assert again["skipped"] == len(done)
    assert sorted(again["ran"] + done) == [f"p000{i}" for i in range(6)]
    assert {pid: (runs / "slow" / pid / "result.json").read_bytes() for pid in done} == before
    assert json.loads(index.read_text())["done"] == [f"p000{i}" for i in range(6)]
    assert not [p.name for p in (runs / "slow").iterdir() if p.name.startswith(".")]


BASE = "workload: rom-access\npolicies: [zap-slot]\nparams: {threads: 1, mb: 16, passes: 2}\n"
BAD = [
    (
        "sweep:\n  grid:\n    params.megabytes: [1, 2]\n",
        "sweep.grid.params.megabytes: unknown parameter of rom-access (known: backing, delete_ram",
    ),
    ("sweep:\n  grid: {}\n", "sweep.grid: empty (give KEY: [VALUE, ...])"),
    ("sweep:\n  grid:\n    params.mb: []\n", "sweep.grid.params.mb: empty list of values"),
    (
        "sweep:\n  sample: {n: 4, space: {params.threads: {range: [1.5, 4]}}}\n",
        "sweep.sample.space.params.threads.range: threads is an integer parameter",
    ),
    (
        "sweep:\n  sample: {n: 4, space: {arch: {range: [1, 2]}}}\n",
        "sweep.sample.space.arch: a range needs a numeric key",
    ),
    (
        "sweep:\n  sample: {n: 4, space: {costs.zap_spte: {range: [a, b]}}}\n",
        "sweep.sample.space.costs.zap_spte.range: expected [LOW, HIGH], two numbers",
    ),
    (
        "sweep:\n  grid:\n    params.mb: {range: [16, 64]}\n",
        "sweep.grid.params.mb.steps: a grid range needs steps: N >= 2",
    ),
    (
        "sweep:\n  grid:\n    params.mb: [16, 32]\n"
        "    params.seed: {range: [0, 200], steps: 200}\n",
        "sweep: 400 points, more than 256 (raise the limit with --max-points N)",
    ),
    ("sweep:\n  grid:\n    params.mb: [16, 0]\n", "sweep.grid.params.mb: must be >= 1"),
    ("sweep:\n  grid:\n    costs.no_such: [1]\n", "sweep.grid.costs.no_such: unknown cost of"),
    ("sweep:\n  grid:\n    color: [1]\n", "sweep.grid.color: unknown key (allowed: params,"),
    (
        "sweep:\n  grid:\n    params.mb: [16]\n  claims: ['pass_time_ms: zap-slot < zap-all']\n",
        "sweep.claims[0]: policy 'zap-all' is not run by this sweep (runs: zap-slot)",
    ),
    (
        "sweep:\n  grid:\n    params.mb: [16]\n  repetitions: 3\n",
        "sweep.repetitions: Extra inputs are not permitted",
    ),
    ("", "sweep: missing (a run config with a 'sweep:' section)"),
]


@pytest.mark.parametrize("body,message", BAD)
def test_bad_sweep_files_exit_2_with_one_line(tmp_path, body, message):
    f = tmp_path / "bad.yaml"
    f.write_text(BASE + body)
    proc = mmbench("sweep", str(f), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_rom_interval_sweep_reproduces_the_readme_table(tmp_path):
    """configs/sweeps/rom-interval.yaml on a local cluster of 2 workers gives the README's
    hand-made ROM-interval table, to the precision the README prints."""
    text = (REPO / "README.md").read_text()
    readme = {
        float(ms): pct for ms, pct in re.findall(r"^\| (\d+) ms \| (\+[\d.]+)% \|$", text, re.M)
    }
    assert set(readme) == {500.0, 2000.0, 8000.0}
    doc = sweep_json(
        str(REPO / "configs" / "sweeps" / "rom-interval.yaml"),
        *("--runs-dir", str(tmp_path), "--jobs", "2"),
    )
    for point in doc["points"]:
        pass_ms = {r["policy"]: r["metrics"]["pass_time_ms"] for r in point["results"]}
        gap = 100 * (pass_ms["fast-invalidate"] / pass_ms["zap-slot"] - 1)
        shown = readme[point["values"]["params.rom_interval_ms"]]
        digits = len(shown.split(".")[1]) if "." in shown else 0
        assert f"{gap:+.{digits}f}" == shown
    assert doc["claims"][0]["holds"] == 3


def test_a_sample_of_the_stated_cost_box_is_seeded_and_runs_as_mmbench_run(tmp_path):
    """``costs: stated`` draws every x86-shadow cost inside its stated range, the same
    points every time (``--resume`` recognises them), and a point's figures are those of
    ``mmbench run --costs`` with its values."""
    import yaml
    from mmbench_x86.costs import X86_SHADOW_BARE_METAL as TABLE

    f = tmp_path / "box.yaml"
    f.write_text(
        "workload: rom-access\npolicies: [zap-slot]\n"
        "params: {threads: 1, mb: 16, passes: 3, rom_interval_ms: 2}\n"
        "sweep:\n  sample: {n: 3, seed: 7, space: {costs: stated}}\n"
    )
    runs = tmp_path / "runs"
    doc = sweep_json(str(f), "--runs-dir", str(runs), "--jobs", "2")
    ranged = TABLE.ranged()
    assert len(ranged) == len(TABLE.costs)  # every x86-shadow cost states a range
    for point in doc["points"]:
        values = {k.removeprefix("costs."): v for k, v in point["values"].items()}
        assert set(values) == set(ranged)
        assert all(ranged[k][0] <= v <= ranged[k][1] for k, v in values.items())
    assert len({json.dumps(p["values"]) for p in doc["points"]}) == 3
    again = sweep_json(str(f), "--runs-dir", str(runs), "--resume")
    assert again["ran"] == [] and again["skipped"] == 3
    point = doc["points"][1]
    table = tmp_path / "costs.yaml"
    costs = {k.removeprefix("costs."): {"ns": v} for k, v in point["values"].items()}
    table.write_text(yaml.safe_dump({"costs": costs}))
    ran = json.loads(
        mmbench(
            *("run", "rom-access", "-c", "1", "-m", "16", "--passes", "3"),
            *("--rom-interval-ms", "2", "--policy", "zap-slot", "--costs", str(table)),
            *("--json", "--runs-dir", str(tmp_path / "single")),
            check=True,
        ).stdout
    )
    assert ran["results"][0]["metrics"] == point["results"][0]["metrics"]


@pytest.mark.parametrize(
    "path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name
)
def test_shipped_sweeps_are_valid(path):
    from mmbench.sweep.spec import load_sweep

    sweep = load_sweep(path)
    assert sweep.points and sweep.claims
    assert all(claim.metric in sweep.metrics for claim in sweep.claims)
