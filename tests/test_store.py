"""Stored runs survive anything: a writer killed mid-save, damaged records, two runs racing
for one name, runs dirs that cannot be written. Through the CLI, as a user meets them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SMALL, mmbench, run_json

ONE = [*SMALL, "--policy", "zap-slot"]
LONG = ["rom-access", "--passes", "400"]  # minutes of work: a refusal must come first


def _no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr


def _intact(runs_dir, *names: str) -> None:
    proc = mmbench("runs", check=True)
    _no_traceback(proc)
    listed = {line.split()[0]: line for line in proc.stdout.splitlines()}
    for name in names:
        assert name in listed and "DAMAGED" not in listed[name], proc.stdout


# A writer that stops inside save(), after result.json is written into its temporary
# directory and before the rename: where a SIGKILL during the save leaves things.
STALL_IN_SAVE = """
import os, sys, time
from pathlib import Path
from mmbench.report import store
real_fsync = os.fsync
def stall(fd):
    real_fsync(fd)
    print("in-save", flush=True)
    time.sleep(600)
os.fsync = stall
with store.reserve(Path(sys.argv[1]), sys.argv[2]) as slot:
    slot.save({"name": sys.argv[2], "created": "now", "workload": "rom-access", "params": {},
               "results": [{"policy": "p", "arch": "a", "backend": "sim", "metrics": {"x": 1}}]})
"""


def test_kill_during_save_leaves_runs_listable_and_the_name_free(runs_dir):
    run_json("rom-access", *ONE, "--name", "earlier")
    proc = subprocess.Popen(
        [sys.executable, "-c", STALL_IN_SAVE, str(runs_dir), "victim"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "in-save"
    assert list(runs_dir.glob(".tmp-*")) and list(runs_dir.glob(".reserved-victim"))
    # while the writer lives, its name is taken, before anything runs
    taken = mmbench("run", "rom-access", *ONE, "--name", "victim")
    assert taken.returncode == 2 and "being written by another mmbench" in taken.stderr
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _intact(runs_dir, "earlier")
    assert "victim" not in mmbench("runs", check=True).stdout
    run_json("rom-access", *ONE, "--name", "victim")  # the dead writer's leftovers go
    assert not list(runs_dir.glob(".tmp-*")) and not list(runs_dir.glob(".reserved-*"))
    _intact(runs_dir, "earlier", "victim")


DAMAGE = {
    "empty": b"",
    "truncated": None,  # first half of a good record
    "garbage": b"\x00\x01garbage\xff",
    "not-utf8": '{"name": "caf\u00e9"}'.encode("latin-1"),
    "a-list": b"[1, 2, 3]",
    "no-results": None,
    "empty-results": None,
    "metrics-a-string": None,
    "metric-not-a-number": None,
    "no-workload": None,
    "policy-a-number": None,
    "reps-zero": None,
}


def _damaged(kind: str, good: dict, raw: bytes) -> bytes:
    if DAMAGE[kind] is not None:
        return DAMAGE[kind]
    if kind == "truncated":
        return raw[: len(raw) // 2]
    rec = json.loads(raw)
    res = rec["results"][0]
    if kind == "no-results":
        del rec["results"]
    elif kind == "empty-results":
        rec["results"] = []
    elif kind == "metrics-a-string":
        res["metrics"] = "fast"
    elif kind == "metric-not-a-number":
        res["metrics"]["pass_time_ms"] = "12 ms"
    elif kind == "no-workload":
        del rec["workload"]
    elif kind == "policy-a-number":
        res["policy"] = 7
    elif kind == "reps-zero":
        rec["reps"] = 0
    return json.dumps(rec).encode()


def test_damaged_runs_are_shown_as_damaged_and_refused_with_one_line(tmp_path, runs_dir):
    run_json("rom-access", *ONE, "--name", "good")
    raw = (runs_dir / "good" / "result.json").read_bytes()
    for kind in DAMAGE:
        d = runs_dir / f"bad-{kind}"
        d.mkdir()
        (d / "result.json").write_bytes(_damaged(kind, json.loads(raw), raw))
    run_json("rom-access", *ONE, "--name", "zz-after")  # listed after the damaged ones
    proc = mmbench("runs", check=True)
    _no_traceback(proc)
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "DAMAGED" not in lines["good"] and "DAMAGED" not in lines["zz-after"]
    for kind in DAMAGE:
        assert "DAMAGED: result.json" in lines[f"bad-{kind}"], (kind, lines)
    for kind in DAMAGE:
        for cmd in (
            ["show", f"bad-{kind}"],
            ["compare", "good", f"bad-{kind}"],
            ["plot", f"bad-{kind}", "--out", str(tmp_path / "x.png")],
        ):
            out = mmbench(*cmd)
            _no_traceback(out)
            err = out.stderr.strip()
            assert out.returncode == 2 and len(err.splitlines()) == 1, (cmd, err)
            assert f"'bad-{kind}' is damaged" in err, (cmd, err)
    assert not (tmp_path / "x.png").exists()


def test_two_runs_with_one_name_the_second_is_refused_before_it_runs(runs_dir):
    env = {**os.environ, "MMBENCH_RUNS_DIR": str(runs_dir)}
    first = subprocess.Popen(
        [sys.executable, "-m", "mmbench", "run", "rom-access", "--passes", "60", "--name", "race"]
        + ["--policy", "zap-slot", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (runs_dir / ".reserved-race").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.05)
    t0 = time.monotonic()
    second = mmbench("run", *LONG, "--name", "race")
    assert time.monotonic() - t0 < 20  # refused at start, not after the workload
    _no_traceback(second)
    assert second.returncode == 2 and "'race' is being written" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.loads(out)["name"] == "race"
    _intact(runs_dir, "race")
    again = mmbench("run", "rom-access", *ONE, "--name", "race")
    assert again.returncode == 2 and "already exists" in again.stderr


def test_show_reads_only_inside_the_runs_dir(tmp_path, runs_dir):
    run_json("rom-access", *ONE, "--name", "mine")
    outside = tmp_path / "elsewhere" / "run"
    outside.mkdir(parents=True)
    (outside / "result.json").write_bytes((runs_dir / "mine" / "result.json").read_bytes())
    for name in ("../elsewhere/run", str(outside), ".reserved-x", ""):
        proc = mmbench("show", name)
        _no_traceback(proc)
        assert proc.returncode == 2 and "RUN:" in proc.stderr, (name, proc.stderr)


def test_compare_refuses_runs_of_different_workloads(runs_dir):
    run_json("rom-access", *ONE, "--name", "ra")
    run_json("teardown", "--size", "1G", "--name", "td")
    proc = mmbench("compare", "ra", "td")
    assert proc.returncode == 2 and "different workloads" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["a-file", "under-a-file", "under-sys", "empty"])
def test_unwritable_runs_dir_is_refused_before_the_workload(tmp_path, kind):
    target = {
        "a-file": tmp_path / "file",
        "under-a-file": tmp_path / "file" / "runs",
        "under-sys": "/sys/mmbench-runs",
        "empty": "",
    }[kind]
    (tmp_path / "file").write_text("not a directory")
    t0 = time.monotonic()
    proc = mmbench("run", *LONG, "--runs-dir", str(target))
    assert time.monotonic() - t0 < 20
    _no_traceback(proc)
    assert proc.returncode == 2 and "--runs-dir" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "not a directory"


def test_json_documents_are_versioned_typed_and_have_units(runs_dir):
    doc = run_json("rom-access", *ONE, "--reps", "2", "--name", "typed")  # schemas checked
    assert doc["schema_version"] == 1 and doc["reps"] == 2 and doc["duration_s"] > 0
    assert doc["units"]["pass_time_ms"] == "ms" and doc["units"]["sps_zapped"] == ""
    for rep in doc["results"][0]["reps"]:
        assert isinstance(rep["sps_zapped"], int) and isinstance(rep["rom_reads"], int)
    rec = json.loads((runs_dir / "typed" / "result.json").read_text())
    assert rec["schema_version"] == 3 and len(rec["results"][0]["rep_series"]) == 1
    assert isinstance(rec["results"][0]["reps"][1]["refaults"], int)
