"""``--trace``: the kernel's kvmmmu tracepoints beside the model's events, per delete.

Needs /dev/kvm and tracefs (mounted here if it is not); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import mmbench, skip_module_without_dev_kvm

TRACEFS = Path("/sys/kernel/tracing")

skip_module_without_dev_kvm("tracing the kernel needs a KVM host")
if not (TRACEFS / "instances").is_dir():
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
if not (TRACEFS / "events" / "kvmmmu").is_dir():
    pytest.skip(f"no tracefs with kvmmmu events at {TRACEFS}", allow_module_level=True)

RUN = ["run", "rom-access", "--backend", "kvm", "-c", "2", "-m", "64", "--passes", "6"]


def mine() -> list[str]:
    return sorted(p.name for p in (TRACEFS / "instances").glob("mmbench-*"))


def stored(runs_dir: Path) -> dict:
    (result,) = runs_dir.glob("*/result.json")
    return json.loads(result.read_text())


def test_trace_counts_equal_the_kernels_sps_zapped_per_delete(runs_dir):
    # an instance left by a SIGKILLed run (its pid no longer exists) is removed
    stale = TRACEFS / "instances" / "mmbench-999999999-0"
    stale.mkdir()
    before = mine()
    mmbench(*RUN, "--rom-interval-ms", "5", "--trace", "--policy", "fast-invalidate", check=True)
    assert stale.name in before and mine() == [n for n in before if n != stale.name]
    (res,) = stored(runs_dir)["results"]
    kernel = res["series"]["trace:memslot-delete"]
    assert len(kernel) == res["metrics"]["rom_reads"] >= 1
    for _, d in kernel:
        assert d["kvm_mmu_prepare_zap_page"] == d["mmu_shadow_zapped"]
        assert d["kvm_mmu_zap_all_fast"] == 1  # KVM_X86_QUIRK_SLOT_ZAP_ALL: one per delete
        assert d["lost"] == 0
    # the run's total also has what guest page-table writes zapped (write flooding)
    assert sum(d["kvm_mmu_prepare_zap_page"] for _, d in kernel) <= res["metrics"]["sps_zapped"]


def test_the_model_records_the_same_events(runs_dir):
    small = ["-c", "2", "-m", "64", "--passes", "6", "--rom-interval-ms", "5"]
    mmbench("run", "rom-access", *small, "--policy", "fast-invalidate", check=True)
    (res,) = stored(runs_dir)["results"]
    model = res["series"]["trace:memslot-delete"]
    assert len(model) == res["metrics"]["rom_reads"]
    assert sum(d["kvm_mmu_prepare_zap_page"] for _, d in model) == res["metrics"]["sps_zapped"]


def test_trace_is_refused_on_the_model(runs_dir):
    proc = mmbench("run", "rom-access", "--trace")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--trace: backend 'sim' has no tracepoints" in (
        proc.stderr
    )
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
