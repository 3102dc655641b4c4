"""Shadow-page reclaim at n_max_mmu_pages (seed 004): fifo, skip-roots, lru-scan.

Through the CLI as a user types it, and through the model API for what the CLI cannot
show: which sps a policy picks, and the invariants on random guests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL, mmbench, run_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbench import hookimpl
from mmbench.errors import InvariantViolation
from mmbench.host.hooks import RunHooks
from mmbench.host.manager import get_host, run_manager
from mmbench.run import assemble
from mmbench.workloads.base import resolve_params


def test_list_shows_reclaim_policies_workload_and_plot():
    out = mmbench("list", check=True).stdout
    for name in ("mmu-pressure", "fifo", "skip-roots", "lru-scan", "plot", "paths: reclaim"):
        assert name in out
    assert "mmbench_register_commands" in out


# a hot set of 4 long-running processes on 4 vCPUs, 28 cold ones, 64 sps allowed
HOT_COLD = ["-c", "4", "--processes", "32", "--hot", "4", "--rounds", "30"]


@pytest.fixture(scope="module")
def hot_cold(tmp_path_factory) -> dict[str, dict]:
    runs = tmp_path_factory.mktemp("runs")
    doc = run_json("mmu-pressure", *HOT_COLD, "--check", env={"MMBENCH_RUNS_DIR": str(runs)})
    return {r["policy"]: r["metrics"] for r in doc["results"]}


def test_defaults_are_the_reclaim_policies_in_seed_order(hot_cold):
    assert list(hot_cold) == ["fifo", "lru-scan", "skip-roots"]  # by year, then name
    for m in hot_cold.values():
        assert m["n_max_mmu_pages"] == 64  # the seed's limit
        assert 0 < m["max_mmu_pages_used"] <= 64
        assert m["mmu_recycled"] > 0


def test_lru_scan_fewer_faults_and_recycles_than_fifo(hot_cold):
    fifo, lru = hot_cold["fifo"], hot_cold["lru-scan"]
    assert lru["faults"] < fifo["faults"]
    assert lru["mmu_recycled"] < fifo["mmu_recycled"]
    # the hot set stays mapped: beyond its first touch (one fault per page for a fresh
    # guest, the same under every policy), lru-scan takes under half of fifo's faults
    assert lru["hot_faults"] < 0.65 * fifo["hot_faults"]


def test_only_fifo_zaps_roots_in_use(hot_cold):
    assert hot_cold["fifo"]["roots_zapped_in_use"] > 0
    assert hot_cold["fifo"]["root_reloads"] > 0  # every vCPU reloads after such a zap
    for name in ("skip-roots", "lru-scan"):
        assert hot_cold[name]["roots_zapped_in_use"] == 0
        assert hot_cold[name]["root_reloads"] == 0


def test_reclaim_composes_with_memslot_policies(runs_dir):
    doc = run_json(
        "rom-access",
        *SMALL,
        "--mmu-pages",
        "64",
        "--check",
        "--policy",
        "zap-slot+lru-scan",
        "--policy",
        "zap-all+skip-roots",
        "--policy",
        "zap-slot",
    )
    by = {r["policy"]: r["metrics"] for r in doc["results"]}
    assert list(by) == ["zap-slot+lru-scan", "zap-all+skip-roots", "zap-slot"]
    slot_lru = by["zap-slot+lru-scan"]
    assert slot_lru["sptes_zapped"] >= slot_lru["rom_reads"] * 32  # ROM deletes by zap-slot
    assert slot_lru["mmu_recycled"] > 0  # and reclaim at the limit by lru-scan
    assert slot_lru["sps_zapped"] == slot_lru["mmu_recycled"]  # zap-slot zaps no sp itself
    assert by["zap-all+skip-roots"]["sps_zapped"] > by["zap-all+skip-roots"]["mmu_recycled"]
    assert by["zap-slot"]["mmu_recycled"] > 0  # the arch's FIFO when no reclaim policy


def test_rom_access_default_has_no_reclaim(runs_dir):
    doc = run_json("rom-access", *SMALL, "--policy", "zap-slot")
    assert doc["params"]["mmu_pages"] == 0
    assert doc["results"][0]["metrics"]["mmu_recycled"] == 0  # KVM's default limit


@pytest.mark.parametrize(
    ("args", "field", "names"),
    [
        (["mmu-pressure", "--mmu-pages", "10"], "--mmu-pages", ">= 64"),
        (["mmu-pressure", "--hot", "99"], "--hot", "--processes"),
        (["mmu-pressure", "-c", "0"], "-c", ">= 1"),
        (["mmu-pressure", "--policy", "zap-slot"], "--policy", "lru-scan"),
        (["rom-access", "--policy", "lru-scan"], "--policy", "zap-slot"),
        (["rom-access", "--policy", "zap-slot+zap-all"], "--policy", "flush_shadow_memslot"),
        (["rom-access", "--policy", "zap-slot+lru-scan:overscan=x"], "overscan", "expected int"),
        (["rom-access", "--plot", "out.svg"], "--plot", ".png"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(runs_dir, args, field, names):
    proc = mmbench("run", *args)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and field in err and names in err, err
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


# -- plots ---------------------------------------------------------------------------------
def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_run_plot_and_plot_command_write_pngs(runs_dir, tmp_path):
    out = tmp_path / "run.png"
    small = ["-c", "2", "--processes", "16", "--hot", "2", "--rounds", "8"]  # 80 sps > 64
    proc = mmbench("run", "mmu-pressure", *small, "--name", "a", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    w, h = _png_size(out)
    assert w >= 800 and h >= 3 * 300  # sp count per policy, recycled, faults: 5 panels
    mmbench("run", "mmu-pressure", *small, "--policy", "lru-scan", "--name", "b", check=True)
    two = tmp_path / "two.png"
    proc = mmbench(
        "plot", "a", "b", "--series", "pf_fixed", "--series", "slice.ms", "--out", str(two)
    )
    assert proc.returncode == 0 and "wrote" in proc.stdout, proc.stderr
    assert _png_size(two)[0] >= 800
    import matplotlib.image

    assert matplotlib.image.imread(str(two)).ndim == 3  # a real image, not just a header
    by_proc = tmp_path / "by_proc.png"
    args = ["plot", "a", "--series", "slice.faults", "--x", "process", "--out", str(by_proc)]
    mmbench(*args, check=True)
    assert _png_size(by_proc)[0] >= 800
    hist = tmp_path / "hist.png"
    mmbench("plot", "a", "--series", "slice.ms", "--kind", "hist", "--out", str(hist), check=True)
    assert _png_size(hist)[0] >= 800


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["nope"], "run"),
        (["a", "--series", "nope"], "--series"),
        (["a", "--series", "slice"], "--series"),  # an event series needs a field
        (["a", "--kind", "pie"], "--kind"),
        (["a", "--window", "9:3"], "--window"),
        (["a", "--series", "slice.ms", "--x", "nope"], "--x"),
        (["a", "--series", "pf_fixed", "--x", "index"], "--x"),
    ],
)
def test_plot_bad_input(runs_dir, tmp_path, args, field):
    mmbench("run", "mmu-pressure", "-c", "1", "--processes", "2", "--hot", "1", "--rounds", "2",
            "--name", "a", check=True)  # fmt: skip
    out = tmp_path / "x.png"
    proc = mmbench("plot", *args, "--out", str(out))
    assert proc.returncode == 2 and field in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_stored_series_are_the_sp_count_over_time(runs_dir):
    small = ["-c", "2", "--processes", "8", "--hot", "2", "--rounds", "6", "--name", "s"]
    run_json("mmu-pressure", *small, "--policy", "fifo")
    rec = json.loads((runs_dir / "s" / "result.json").read_text())
    series = rec["results"][0]["series"]
    used = series["mmu_used_pages"]
    ts = [t for t, _ in used]
    assert ts == sorted(ts) and max(n for _, n in used) <= 64
    assert series["pf_fixed"][-1][1] == rec["results"][0]["metrics"]["faults"]


# -- the model API: what a policy picks ------------------------------------------------------
def _model_run(policy: str, arch_last: bool = False, **params):
    run = assemble(policy, arch="x86-shadow", check=True)
    vm = run.vm
    if arch_last:  # the same objects on a manager that registers the arch last
        hooks = RunHooks(run_manager(*run.policies, run.arch, *run.monitors))
        vm = get_host().registry.get("backend", "sim")().create_vm(hooks, run.arch, run.costs)
    wl = get_host().registry.get("workload", "mmu-pressure")()
    metrics = wl.run(vm, resolve_params(wl.params, params))
    return vm, run.policies[-1], metrics, run.monitors[0]


# 247 sps recycled, 3 of them roots in use under FIFO
FIFO_ZAPS_ROOTS = {"vcpus": 4, "processes": 32, "hot": 4, "rounds": 10}


def test_fifo_is_the_arch_default_reclaim():
    """Differential: the ``fifo`` policy and x86-shadow's default (no reclaim policy in
    the run) make the same choice, so the whole run is the same."""
    _, _, by_default, _ = _model_run("zap-slot", **FIFO_ZAPS_ROOTS)
    _, _, by_fifo, _ = _model_run("zap-slot+fifo", **FIFO_ZAPS_ROOTS)
    assert by_default["mmu_recycled"] > 0 and by_default["roots_zapped_in_use"] > 0
    assert by_fifo == by_default


def test_a_policy_registered_before_the_arch_still_wins():
    """The arch's default reclaim is a ``trylast`` hookimpl: skip-roots answers even when
    the arch is registered after it (pluggy would otherwise call the arch's FIFO first)."""
    _, _, in_order, _ = _model_run("skip-roots", **FIFO_ZAPS_ROOTS)
    _, _, arch_last, _ = _model_run("skip-roots", arch_last=True, **FIFO_ZAPS_ROOTS)
    assert arch_last["mmu_recycled"] > 0 and arch_last["roots_zapped_in_use"] == 0
    assert arch_last == in_order


def test_lru_scan_picks_an_idle_sp_then_prefers_leaves():
    vm, lru, _, _ = _model_run("lru-scan", vcpus=1, processes=4, hot=1, rounds=4)
    kvm = vm.kvm
    mmu = kvm.mmu
    order = mmu.oldest_mmu_pages(mmu.n)
    picked: list[np.ndarray] = []

    def script() -> None:
        lru.scan_hand = 0
        mmu.sp_accessed[order] = True
        budget = order[: mmu.n_used_mmu_pages // 4]  # the overscan bound
        idle = [int(s) for s in budget if mmu.sp_level[s] == 2][0]
        mmu.sp_accessed[idle] = False
        picked.append(lru.mmbench_reclaim(kvm=kvm, nr_to_zap=1))
        assert picked[-1].tolist() == [idle]
        before = order[order < idle]
        assert not mmu.sp_accessed[before].any()  # the scan cleared what it passed
        assert mmu.sp_accessed[order[order > idle]].all()  # and nothing beyond
        # everything accessed: overscan ends at n_used/4 sps and takes a leaf from them
        mmu.sp_accessed[order] = True
        lru.scan_hand = 0
        picked.append(lru.mmbench_reclaim(kvm=kvm, nr_to_zap=1))
        leaves = [int(s) for s in budget if mmu.sp_level[s] == 1 and mmu.sp_root_count[s] == 0]
        assert picked[-1].tolist() == leaves[:1]

    vm.run_host(script, name="test")
    assert len(picked) == 2


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policy=st.sampled_from(["fifo", "skip-roots", "lru-scan", "lru-scan:prefer_leaf=false"]),
    vcpus=st.integers(1, 4),
    cold=st.integers(0, 12),
    hot=st.integers(0, 4),
    process_mb=st.sampled_from([2, 4, 6]),
    hot_passes=st.integers(1, 3),
    mmu_pages=st.sampled_from([64, 80, 0]),
)
def test_reclaim_keeps_invariants(policy, vcpus, cold, hot, process_mb, hot_passes, mmu_pages):
    _, _, m, inv = _model_run(
        policy,
        vcpus=vcpus,
        processes=hot + vcpus + cold,
        hot=hot,
        process_mb=process_mb,
        hot_passes=hot_passes,
        rounds=4,
        mmu_pages=mmu_pages,
    )
    assert m["max_mmu_pages_used"] <= m["n_max_mmu_pages"]
    if m["mmu_recycled"]:
        assert inv.checks > 0  # the checker looked after every reclaim
    if not policy.startswith("fifo"):
        assert m["roots_zapped_in_use"] == 0


class NeverReclaims:
    """Broken on purpose: answers every reclaim with no victim, so sps pile up past
    n_max_mmu_pages (the limit was checked only after a reclaim that zapped something)."""

    name = "never-reclaims"
    archs = ("x86-shadow",)

    @hookimpl
    def mmbench_reclaim(self, kvm, nr_to_zap):
        return np.array([], dtype=np.int64)


def test_a_reclaim_policy_that_never_reclaims_is_caught_after_the_fault_batch():
    run = assemble(None, arch="x86-shadow", check=True, plugins=[NeverReclaims()])
    wl = get_host().registry.get("workload", "mmu-pressure")()
    with pytest.raises(InvariantViolation, match="over n_max_mmu_pages 64") as caught:
        wl.run(run.vm, resolve_params(wl.params, {"rounds": 4}))
    assert "after a fault batch of vcpu" in str(caught.value)
