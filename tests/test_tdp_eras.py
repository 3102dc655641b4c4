"""Dirty-log stop on the x86 TDP MMU in each era's form (issue 11, item 3), as a user runs
it: the 5.13-6.12 zap under the read lock with a flush per zapped table, 6.13's batched
flushes, and 6.13's in-place recovery."""

from __future__ import annotations

from conftest import run_json

ERAS = ["tdp-zap-collapsible", "tdp-zap-collapsible:batch_flush=true", "recover-in-place"]


def test_tdp_eras_flushes_faults_and_stalls(runs_dir):
    args = ["dirty-log", "-b", "1G", "-v", "2", "--run-on-s", "1", "--check"]
    pols = [x for p in [*ERAS, "collapse-sync"] for x in ("--policy", p)]
    doc = run_json(*args, *pols)
    m = {r["policy"]: r["metrics"] for r in doc["results"]}
    per_table, batched, rip, sync = (m[p] for p in [*ERAS, "collapse-sync"])
    tables = 1 << 30 >> 21  # every 2 MiB region of the slot had a 4 KiB table
    # 5.13-6.12: one remote flush per zapped table; then each faults back as a 2 MiB leaf
    assert per_table["remote_tlb_flushes"] == tables
    assert per_table["faults_after_disable"] == tables
    # 6.13: a handful of flushes (one per yield, one at the end)
    assert 1 <= batched["remote_tlb_flushes"] <= 4 and batched["faults_after_disable"] == tables
    assert 1 <= rip["remote_tlb_flushes"] <= 4 and rip["faults_after_disable"] == 0
    # the flushes are what the per-table zap pays for
    assert per_table["disable_dirty_log_ms"] > batched["disable_dirty_log_ms"]
    # under the read lock faulting vCPUs never wait for the zap; under the write lock
    # (collapse-sync, the legacy MMU's form) they do
    for p in ERAS:
        assert m[p]["vcpu_stall_ms"] == 0, p
    assert sync["vcpu_stall_ms"] > 0
    for metrics in m.values():
        assert metrics["huge_mapped_pct"] == 100.0
