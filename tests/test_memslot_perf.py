"""memslot-perf on the model, through the CLI as a user types it (the selftest's options)."""

from __future__ import annotations

import time

import pytest
from conftest import mmbench, run_json

SMALL = ["-s", "64", "-l", "1"]


def metrics_of(doc: dict) -> tuple[str, dict]:
    (res,) = doc["results"]
    return res["policy"], res["metrics"]


def test_move_and_rw_tests_under_check(runs_dir):
    """Moves and rw run on 63 test slots; --check verifies the MMU after every move."""
    doc = run_json("memslot-perf", *SMALL, "-f", "3", "-e", "5", "--check")
    policy, m = metrics_of(doc)
    assert policy == "fast-invalidate"  # the quirk is on by default: kvm_mmu_zap_all_fast
    for key in ("move_active", "move_inactive", "rw"):
        assert m[f"{key}_iter_best_ms"] > 0
        assert m[f"{key}_iter_mean_ms"] == pytest.approx(m[f"{key}_iter_best_ms"])  # -r 1
        assert m[f"{key}_slot_setup_ms"] > 0
    assert m["move_active_iterations"] == m["move_inactive_iterations"] == 100  # the cap
    assert 1 <= m["rw_iterations"] < 100  # 512 MiB per pass: -l 1 ends it first
    assert m["slot_setup_best_ms"] == min(
        m[f"{k}_slot_setup_ms"] for k in ("move_active", "move_inactive", "rw")
    )
    assert not any(k.startswith(("map_", "unmap")) for k in m)  # -f 3: not run


def test_q_disables_the_quirk_so_moves_zap_only_the_slot(runs_dir):
    on = metrics_of(run_json("memslot-perf", *SMALL, "-f", "4", "-e", "4"))
    off = metrics_of(run_json("memslot-perf", *SMALL, "-f", "4", "-e", "4", "-q"))
    assert on[0] == "fast-invalidate" and off[0] == "zap-slot"
    assert on[1]["move_inactive_iter_best_ms"] != off[1]["move_inactive_iter_best_ms"]


def test_runs_and_selftest_output(runs_dir):
    """-r 2 runs the test twice on fresh VMs; the selftest's lines follow the table."""
    out = mmbench("run", "memslot-perf", *SMALL, "-f", "4", "-e", "4", "-r", "2", "-v")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Testing move inactive area performance with 2 runs, 1 seconds each" in text
    assert text.count("Adding slots 1..63, each slot with 2080 pages + 48 extra pages last") == 2
    assert text.count("Done 100 iterations, avg 0.0000") == 2
    assert "Best runtime result was 0.0000" in text
    assert "Best slot setup time for the whole test area was 0.00" in text


def test_32k_slots_stay_fast_on_the_model(runs_dir):
    """-s 32768 is capped by KVM_CAP_NR_MEMSLOTS (32764): 32763 test slots of 4 pages,
    the last with 36 more (the selftest's table: 16 KiB per slot, 160 KiB last)."""
    t0 = time.monotonic()
    out = mmbench("run", "memslot-perf", "-s", "32768", "-f", "4", "-e", "4", "-v")
    wall = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert "Adding slots 1..32763, each slot with 4 pages + 36 extra pages last" in out.stdout
    assert wall < 60, f"{wall:.1f} s"  # about 4 s here


def test_map_refuses_or_skips_too_many_slots(runs_dir):
    """map has 8208 pages: more test slots than pages cannot be laid out (selftest's
    message and max)."""
    out = mmbench("run", "memslot-perf", "-s", "32768", "-f", "0", "-e", "0")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert "Memslot count too high for this test, decrease the cap (max is 8209)" in out.stderr


def test_map_and_unmap_tests_on_the_model(runs_dir):
    doc = run_json("memslot-perf", *SMALL, "-f", "0", "-e", "2", "--max-iterations", "2")
    _, m = metrics_of(doc)
    for key in ("map", "unmap", "unmap_chunked"):
        assert m[f"{key}_iter_best_ms"] > 0 and m[f"{key}_iterations"] >= 1
    # one madvise per 4 KiB page costs more than one per 2 MiB chunk
    assert m["unmap_iter_best_ms"] > m["unmap_chunked_iter_best_ms"]


@pytest.mark.parametrize(
    "args, field",
    [
        (["-s", "1"], "-s/--slots"),
        (["-s", "40000"], "-s/--slots"),
        (["-f", "4", "-e", "3"], "-f/--first"),
        (["-e", "6"], "-e/--last"),
        (["-l", "0"], "-l/--loop-s"),
        (["-r", "0"], "-r/--runs"),
        (["--max-iterations", "-1"], "--max-iterations"),
        (["-q", "--policy", "zap-all"], "-q"),
        (["-s", "2", "-f", "3", "-e", "4"], "-s"),  # one test slot: nothing to move
    ],
)
def test_bad_options_exit_2(runs_dir, args, field):
    out = mmbench("run", "memslot-perf", *args)
    assert out.returncode == 2, out.stdout
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"mmbench: error: {field}:"), line
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
