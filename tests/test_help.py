"""Help and names as a KVM developer reads them: sizes, hex, choices, kernel stat names."""

from __future__ import annotations

import re

from conftest import mmbench


def test_run_help_shows_sizes_hex_choices_and_what_the_workload_is():
    dl = " ".join(mmbench("run", "dirty-log", "--help", check=True).stdout.split())
    assert "-b SIZE, --size SIZE" in dl and "default: 4T; >= 2M" in dl
    assert "--enable {wrprot,eager-split}" in dl and "--manual-protect {true,false}" in dl
    assert "dirty_log_perf_test.c" in dl  # the workload's own paragraph
    assert "4398046511104" not in dl and "True" not in dl
    rom = " ".join(mmbench("run", "rom-access", "--help", check=True).stdout.split())
    assert "--rom-gpa GPA" in rom and "default: 0xfebc0000" in rom
    assert "rom.sh" in rom.split("options:")[0]


def test_list_metrics_names_kernel_stats_units_and_direction():
    out = mmbench("list", "--metrics", "rom-access", check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("sps_zapped "))
    assert re.search(r"sps_zapped\s+mmu_shadow_zapped\s+count\s+lower\s+Amean", row), row
    row = next(line for line in out.splitlines() if line.startswith("memslot_delete_ms "))
    assert re.search(r"-\s+ms\s+lower\s+Amean\s+rom-access\.delete_ns", row), row
    dl = mmbench("list", "--metrics", "dirty-log", check=True).stdout
    assert re.search(r"^huge_mapped_pct\s+-\s+%\s+higher\s+Hmean", dl, re.M), dl
    bad = mmbench("list", "--metrics", "nope")
    assert bad.returncode == 2 and "rom-access" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_list_shows_each_policy_option_with_type_bounds_and_help():
    out = mmbench("list", check=True).stdout
    assert re.search(r"^\s+option batch=10 \(int >= 1\): \S", out, re.M), out
    assert re.search(r"^\s+option lock_break=false \(bool\): drop mmu_lock", out, re.M)
