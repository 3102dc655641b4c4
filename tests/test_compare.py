"""``mmbench compare`` as compare-kernels.sh would have it: stats, marks, header, widths."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys

import pytest
from conftest import SMALL, mmbench, run_json

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict[str, str]:
    """Runs ``a`` (-m 64) and ``b`` (-m 96) of 3 repetitions, shared by the tests that only
    read them; returns the environment that points mmbench at them."""
    env = {"MMBENCH_RUNS_DIR": str(tmp_path_factory.mktemp("two") / "runs")}
    run_json("rom-access", *SMALL, "--reps", "3", "--name", "a", env=env)
    bigger = [*SMALL[:2], "-m", "96", *SMALL[4:]]
    run_json("rom-access", *bigger, "--reps", "3", "--name", "b", env=env)
    return env


def _on_a_terminal(*args: str, env: dict[str, str]) -> str:
    """``mmbench ARGS`` with stdout on a pseudo-terminal 100 columns wide."""
    main, sub = pty.openpty()
    env = {**os.environ, **env, "COLUMNS": "100", "LINES": "50", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmbench", *args], stdout=sub, stderr=subprocess.PIPE, env=env
    )
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(main)
    assert proc.returncode == 0, proc.stderr.read()
    return ANSI.sub("", b"".join(chunks).decode()).replace("\r", "")


def test_compare_two_runs_of_three_repetitions(two_runs):
    out = mmbench("compare", "a", "b", env=two_runs, check=True).stdout
    lines = out.splitlines()
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert "differs: mb (a: 64, b: 96)" in out
    assert re.search(r"^run a: \d+\.\d s wall, 3 rep\(s\)", out, re.M)
    for stat in ("Min", "Amean", "Stddev", "CoeffVar", "Max", "p50", "p90", "p99"):
        assert re.search(rf"^{stat}\s", out, re.M), stat
    assert "sps_zapped <- mmu_shadow_zapped (count, lower is better)" in out
    # six columns do not fit 100 characters: folded, each group led by the baseline
    heads = [line.split() for line in lines if line.strip().startswith("a/zap-all")]
    assert len(heads) >= 2 and all(h[0] == "a/zap-all" for h in heads)
    assert {c for h in heads for c in h} >= {"b/zap-slot", "a/fast-invalidate"}
    # counts as integers: no 3-decimal means of counts
    block = out[out.index("sptes_zapped (") :].splitlines()[1:6]
    assert not any(re.search(r"\d+\.\d{3}\b", line) for line in block if "Stddev" not in line)
    doc = json.loads(mmbench("compare", "a", "b", "--format", "json", env=two_runs).stdout)
    assert doc["format_version"] == 2 and doc["differing_params"] == {"mb": {"a": 64, "b": 96}}
    slot = doc["metrics"]["pass_time_ms"]["cells"][2]  # a/zap-slot vs a/zap-all
    assert slot["direction"] == "better" and slot["significant"]
    # min and max over the repetitions' means, percentiles over every pass of them
    assert slot["min"] <= slot["mean"] <= slot["max"]
    assert slot["p50"] <= slot["p90"] <= slot["p99"]
    assert slot["samples"] == 3 * 2 * 5  # 3 reps x 2 threads x 5 warm passes
    worse = doc["metrics"]["pass_time_ms"]["cells"][3]  # b/zap-all: more memory per pass
    assert worse["direction"] == "worse"
    assert doc["metrics"]["sps_zapped"]["stat"] == "mmu_shadow_zapped"


def test_baseline_choice_and_bad_baseline(two_runs):
    args = ["compare", "a", "b", "--baseline", "b/zap-slot", "--format", "json"]
    doc = json.loads(mmbench(*args, env=two_runs).stdout)
    assert doc["baseline"] == "b/zap-slot"
    assert [c["label"] for c in doc["columns"]][:2] == ["b/zap-slot", "a/zap-all"]
    assert doc["metrics"]["pass_time_ms"]["cells"][0]["verdict"] == "baseline"
    bad = mmbench("compare", "a", "b", "--baseline", "c/zap-all", env=two_runs)
    assert bad.returncode == 2
    (line,) = bad.stderr.splitlines()
    assert "--baseline" in line and "a/zap-all" in line


def test_deterministic_figures_are_identical_or_changed_never_significant(runs_dir):
    run_json("teardown", "--size", "512M", "--reps", "2", "--policy", "s2-unmap", "--name", "t1")
    run_json("teardown", "--size", "512M", "--reps", "2", "--policy", "s2-unmap", "--name", "t2")
    run_json("teardown", "--size", "1G", "--reps", "2", "--policy", "s2-unmap", "--name", "t3")
    doc = json.loads(mmbench("compare", "t1", "t2", "t3", "--format", "json").stdout)
    same, bigger = doc["metrics"]["teardown_ms"]["cells"][1:]
    assert same["verdict"] == "identical" and not same["significant"] and same["p_value"] is None
    assert bigger["verdict"] == "changed" and not bigger["significant"]
    assert bigger["direction"] == "worse" and bigger["change_pct"] > 0
    text = mmbench("compare", "t1", "t2", "t3", check=True).stdout
    assert not [line for line in text.splitlines() if "*" in line and "p<" not in line]
    assert "size (t1: 512M, t2: 512M, t3: 1G)" in text  # human sizes


def test_rich_tables_on_a_terminal_fit_100_columns(two_runs):
    out = _on_a_terminal("compare", "a", "b", env=two_runs)
    lines = [line for line in out.splitlines() if line.strip()]
    assert max(map(len, lines)) <= 100, max(lines, key=len)
    assert any(set(line.strip()) == {"─"} for line in lines)  # rich's header rule
    assert "CoeffVar" in out and "p99" in out
