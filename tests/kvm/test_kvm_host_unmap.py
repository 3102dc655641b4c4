"""``host-unmap`` on the real kernel: munmap / MADV_DONTNEED / mprotect of the guest
memory's host mapping while the vCPUs run, KVM's MMU notifier zapping what maps it.

Skipped with the reason where /dev/kvm cannot be opened. Timings are never asserted.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import mmbench, skip_module_without_dev_kvm

skip_module_without_dev_kvm()

TRACEFS = Path("/sys/kernel/tracing")
RUN = ["run", "host-unmap", "--backend", "kvm", "-b", "128M", "--unmap-size", "8M"]
RUN += ["--unmaps", "3", "--interval-ms", "5", "--backing", "4k"]
MODEL_ONLY = {"vcpu_stall_ms", "kvm_invalidate_p50_us", "kvm_invalidate_max_us", "cmo_bytes"}


@pytest.mark.parametrize("how", ["dontneed", "munmap", "mprotect"])
def test_host_unmap_runs_on_the_kernel(how, runs_dir):
    proc = mmbench(*RUN, "--how", how, "--json", check=True)
    (r,) = json.loads(proc.stdout)["results"]
    assert r["backend"] == "kvm" and r["policy"] == "unmap-range"
    m = r["metrics"]
    assert set(m) >= {"invalidate_p50_us", "invalidate_p99_us", "invalidate_max_us"}
    assert {"faults_retried", "remote_tlb_flushes", "refaults", "sptes_zapped"} <= set(m)
    assert not set(m) & MODEL_ONLY  # the kernel shows no mmu_lock wait or KVM share
    assert m["invalidate_max_us"] >= m["invalidate_p50_us"] > 0
    assert m["sptes_zapped"] > 0  # the notifier zapped what mapped the ranges


def test_trace_counts_one_kvm_unmap_hva_range_per_call(runs_dir):
    if not (TRACEFS / "events" / "kvm" / "kvm_unmap_hva_range").is_dir():
        subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS)], capture_output=True)
    if not (TRACEFS / "events" / "kvm" / "kvm_unmap_hva_range").is_dir():
        pytest.skip("no tracefs with kvm:kvm_unmap_hva_range")
    mmbench(*RUN, "--trace", check=True)
    (result,) = runs_dir.glob("*/result.json")
    (res,) = json.loads(result.read_text())["results"]
    events = res["series"]["trace:mmu-notifier"]
    assert len(events) == 3
    for _, d in events:
        assert d["kvm_unmap_hva_range"] >= 1 and d["lost"] == 0
