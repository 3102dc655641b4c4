"""dirty-log and teardown through the CLI as a user types them, and bad input."""

from __future__ import annotations

import pytest
from conftest import mmbench, run_json

SMALL_DL = ["--size", "2G", "--vcpus", "2", "--run-on-s", "62"]
DL_METRICS = {
    "populate_ms",
    "enable_dirty_log_ms",
    "disable_dirty_log_ms",
    "vcpu_stall_ms",
    "remote_tlb_flushes",
    "faults_after_disable",
    "hugepage_recovery_ms",
    "mmu_lock_max_hold_ms",
    "iter1_dirty_memory_ms",
    "iter2_clear_dirty_log_ms",
}
TD_METRICS = {"teardown_ms", "cmo_bytes", "tlbi_count", "mmu_lock_max_hold_ms", "pages_freed"}


def test_dirty_log_policies_on_x86_tdp(runs_dir):
    doc = run_json("dirty-log", "--arch", "x86-tdp", *SMALL_DL, "--check")
    pols = [r["policy"] for r in doc["results"]]
    assert pols == ["collapse-sync", "lazy-collapse", "tdp-zap-collapsible", "recover-in-place"]
    m = {r["policy"]: r["metrics"] for r in doc["results"]}
    for metrics in m.values():
        assert set(metrics) >= DL_METRICS
        assert metrics["huge_mapped_pct"] == 100.0  # everything is huge again by the end
    sync, lazy, rip = m["collapse-sync"], m["lazy-collapse"], m["recover-in-place"]
    # the synchronous zap is in the ioctl; the worker's is not
    assert sync["disable_dirty_log_ms"] > 100 * lazy["disable_dirty_log_ms"]
    assert lazy["disable_dirty_log_ms"] < 0.1  # microseconds of modelled time
    assert sync["mmu_lock_max_hold_ms"] >= sync["disable_dirty_log_ms"] * 0.99
    # zapping costs refaults; recovering in place does not
    assert sync["faults_after_disable"] > 0 and lazy["faults_after_disable"] > 0
    assert rip["faults_after_disable"] == 0
    # huge pages come back after the worker's 60 s delay, at once for the others
    assert lazy["hugepage_recovery_ms"] > 60_000
    assert 0 < rip["hugepage_recovery_ms"] <= sync["hugepage_recovery_ms"]
    # on a host that neither preempts nor is overloaded nothing makes the walks yield:
    # the worker stalls the vCPUs as long as the ioctl's zap does
    assert lazy["vcpu_stall_max_ms"] == pytest.approx(sync["vcpu_stall_max_ms"], rel=0.05)
    # on a preemptible host both walks yield to every waiting vCPU
    full = run_json(
        "dirty-log", *SMALL_DL, "--preempt", "full",
        "--policy", "collapse-sync", "--policy", "lazy-collapse",
    )  # fmt: skip
    f = {r["policy"]: r["metrics"] for r in full["results"]}
    for p in ("collapse-sync", "lazy-collapse"):
        assert f[p]["vcpu_stall_max_ms"] < m[p]["vcpu_stall_max_ms"] / 10, p


@pytest.mark.parametrize(
    "args",
    [
        ["--enable", "eager-split"],
        ["--manual-protect", "false", "--initially-set", "false"],
        ["--manual-protect", "true", "--initially-set", "false", "--dirty-percent", "30"],
        ["--backing", "4k", "-i", "1"],
        ["--backing", "1g", "--size", "4G"],
        [
            "--backing",
            "1g",
            "--size",
            "4G",
            "--enable",
            "eager-split",
            "--manual-protect",
            "0",
            "--initially-set",
            "0",
        ],
    ],
)
def test_dirty_log_modes_keep_the_invariants(runs_dir, args):
    doc = run_json(
        "dirty-log", "--arch", "x86-tdp", *SMALL_DL, *args, "--check", "--policy", "lazy-collapse"
    )
    metrics = doc["results"][0]["metrics"]
    assert metrics["pages_dirtied"] > 0
    if "4k" in args:
        assert metrics["faults_after_disable"] == 0 and metrics["hugepage_recovery_ms"] == -1
    if "1g" in args:  # one refault per GiB brings back a 1 GiB leaf
        assert metrics["faults_after_disable"] == 4 and metrics["huge_mapped_pct"] == 100


def test_collapse_cost_grows_linearly_with_size(runs_dir):
    """The modelled synchronous collapse doubles when the guest does (aggregated state)."""
    t = {}
    for size in ("1G", "2G", "4G"):
        doc = run_json(
            "dirty-log",
            "--arch",
            "x86-tdp",
            "--size",
            size,
            "--vcpus",
            "2",
            "--run-on-s",
            "1",
            "--policy",
            "collapse-sync",
        )
        t[size] = doc["results"][0]["metrics"]["disable_dirty_log_ms"]
    assert t["2G"] == pytest.approx(2 * t["1G"], rel=0.02)
    assert t["4G"] == pytest.approx(2 * t["2G"], rel=0.02)


def test_teardown_arm64_cmo_and_tlbi(runs_dir):
    doc = run_json(
        "teardown",
        "--arch",
        "arm64",
        "--size",
        "1G",
        "--policy",
        "s2-unmap",
        "--policy",
        "s2-elide",
        "--check",
    )
    m = {r["policy"]: r["metrics"] for r in doc["results"]}
    for metrics in m.values():
        assert set(metrics) >= TD_METRICS
    unmap, elide = m["s2-unmap"], m["s2-elide"]
    mapped = unmap["sptes_zapped"] * (2 << 20)  # every leaf is a 2 MiB block here
    assert unmap["cmo_bytes"] == mapped and unmap["tlbi_count"] == unmap["sptes_zapped"]
    assert elide["cmo_bytes"] == 0 and elide["tlbi_count"] == 1  # one TLBI VMALL
    assert elide["pages_freed"] == unmap["pages_freed"] > 0
    assert elide["teardown_ms"] * 100 < unmap["teardown_ms"]


def test_teardown_1g_backing(runs_dir):
    doc = run_json("teardown", "--arch", "arm64", "--size", "4G", "--backing", "1g", "--check")
    m = {r["policy"]: r["metrics"] for r in doc["results"]}
    assert m["s2-unmap"]["sptes_zapped"] == 4 and m["s2-unmap"]["tlbi_count"] == 4
    assert m["s2-unmap"]["cmo_bytes"] == 4 << 30


def test_teardown_4k_backing_and_x86(runs_dir):
    doc = run_json("teardown", "--size", "512M", "--backing", "4k")  # arm64 by default
    assert doc["results"][0]["arch"] == "arm64"
    m = {r["policy"]: r["metrics"] for r in doc["results"]}
    assert [r["policy"] for r in doc["results"]] == ["s2-unmap", "s2-elide"]
    assert m["s2-unmap"]["cmo_bytes"] == m["s2-unmap"]["sptes_zapped"] * 4096
    assert m["s2-unmap"]["pages_freed"] > m["s2-unmap"]["sptes_zapped"] // 512
    for arch in ("x86-tdp", "x86-shadow"):
        doc = run_json("teardown", "--arch", arch, "--size", "512M", "--check")
        assert [r["policy"] for r in doc["results"]] == ["zap-all"]
        assert doc["results"][0]["metrics"]["teardown_ms"] > 0


@pytest.mark.parametrize(
    ("args", "field", "names"),
    [
        (["teardown", "--arch", "x86-tdp", "--policy", "s2-elide"], "--policy", "s2-elide (arm64)"),
        (["teardown", "--arch", "x86-shadow", "--policy", "s2-unmap"], "--policy", "zap-all"),
        (["dirty-log", "--arch", "x86-tdp", "--policy", "zap-slot"], "--policy", "collapse-sync"),
        (
            ["rom-access", "--policy", "collapse-sync"],
            "--policy",
            "zap-slot (x86-shadow, x86-ept, x86-tdp)",
        ),
        (
            ["dirty-log", "--arch", "x86-shadow", "--size", "1G"],
            "--arch",
            "does not model dirty logging",
        ),
        (["dirty-log", "--arch", "x86-tdp", "--size", "64T"], "--size", "(16T)"),
        (["teardown", "--arch", "x86-shadow", "--size", "2T"], "--size", "(1T)"),
        (["teardown", "--size", "3M"], "--size", "2 MiB"),
        (["dirty-log", "--arch", "x86-tdp", "--enable", "pml"], "--enable", "eager-split"),
        (["dirty-log", "--arch", "x86-tdp", "--backing", "3g"], "--backing", "2m, 1g, 4k"),
        (["dirty-log", "--arch", "x86-tdp", "--size", "lots"], "--size", "expected a size like 4T"),
        (
            ["dirty-log", "--arch", "x86-tdp", "--manual-protect", "false"],
            "--initially-set",
            "--manual-protect",
        ),
        (["rom-access", "--arch", "arm64"], "--arch", "zap-slot (x86-shadow, x86-ept, x86-tdp)"),
    ],
)
def test_bad_input_exits_2(runs_dir, args, field, names):
    proc = mmbench("run", *args)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and field in err and names in err, err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())
