"""The host kernel a run names (--preempt, --hz, --host-cpus, a config's kernel:): what
breaks mmu_lock and why, as a user sees it in the figures and the stored record."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMALL, mmbench, run_json

from mmbench.model.engine import Engine
from mmbench.model.lock import MmuLock
from mmbench.model.sched import KernelConfig, sched_slice_ns

# four guest threads and rom.sh on its own vCPU: five runnable threads during a delete
ROM = ["-c", "4", "-m", "128", "--passes", "6", "--rom-interval-ms", "20"]


def _fast(*args: str) -> dict:
    doc = run_json("rom-access", *ROM, "--policy", "fast-invalidate", *args)
    return doc, doc["results"][0]["metrics"]


def test_no_contention_breaks_on_a_non_preemptible_kernel(runs_dir):
    """preempt=none with enough CPUs: a waiting vCPU never makes the zap yield."""
    doc, m = _fast("--preempt", "none", "--host-cpus", "16")
    assert doc["kernel"] == {"preempt": "none", "hz": 250, "host_cpus": 16, "sched": "cfs"}
    assert m["lock_breaks"] == m["lock_breaks_contention"] == m["lock_breaks_resched"] == 0
    assert m["vcpu_stall_ms"] > 0  # the vCPUs waited all the same


def test_contention_breaks_on_a_preemptible_kernel(runs_dir):
    _, m = _fast("--preempt", "full", "--host-cpus", "16")
    assert m["lock_breaks_contention"] > 0 and m["lock_breaks_resched"] == 0
    assert m["lock_breaks"] == m["lock_breaks_contention"]


@pytest.mark.parametrize("preempt", ["none", "voluntary"])
def test_tick_breaks_when_threads_outnumber_cpus(preempt, runs_dir):
    """Five runnable threads on two CPUs: the tick sets need_resched once the zapper's
    slice runs out, and it yields then, whatever the model; never for contention. One
    remap per cat, so that each delete is one long zap that the tick can break."""
    one = ("--rom-read-kib", "128")
    _, calm = _fast("--preempt", preempt, "--host-cpus", "16", *one)
    _, busy = _fast("--preempt", preempt, "--host-cpus", "2", "--hz", "1000", *one)
    assert busy["lock_breaks_resched"] > 0 and busy["lock_breaks_contention"] == 0
    assert busy["vcpu_stall_max_ms"] < calm["vcpu_stall_max_ms"]  # the yields bound it
    assert busy["memslot_delete_ms"] > calm["memslot_delete_ms"]  # and cost it CPU time


def test_kernel_config_from_yaml_is_recorded(tmp_path, runs_dir):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "workload: rom-access\n"
        "params: {threads: 2, mb: 64, passes: 6, rom_interval_ms: 5}\n"
        "policies: [fast-invalidate]\n"
        "kernel: {preempt: full, hz: 1000, host_cpus: 2}\n"
    )
    proc = mmbench("run", "--config", str(cfg), "--host-cpus", "4", "--name", "k", check=True)
    assert "saved:" in proc.stdout
    rec = json.loads((runs_dir / "k" / "result.json").read_text())
    want = {"preempt": "full", "hz": 1000, "host_cpus": 4, "sched": "cfs"}  # flag beats file
    assert rec["kernel"] == want and rec["results"][0]["kernel"] == want


def test_default_kernel_is_recorded(runs_dir):
    doc = run_json("rom-access", *SMALL, "--policy", "zap-slot")
    assert doc["kernel"] == {"preempt": "voluntary", "hz": 250, "host_cpus": 16, "sched": "cfs"}
    assert doc["results"][0]["kernel"] == doc["kernel"]


# -- the lock and the tick, on a bare engine ------------------------------------------------
def _spinning_zap(kernel: KernelConfig, busy: int):
    """A zapper holding mmu_lock for 100 ms of 10 us items with lock-break, a vCPU that
    wants the lock at 1 ms, and ``busy`` other threads running (guest vCPUs)."""
    eng = Engine()
    lock = MmuLock(eng, handoff_ns=0, kernel=kernel)
    log: dict[str, int] = {}

    def zapper() -> None:
        todo = 10_000
        with lock:
            while todo:
                todo -= lock.work(np.full(todo, 10_000.0), True)
                if todo:
                    lock.cond_resched()
        log["zap_end"] = eng.now

    def vcpu() -> None:
        eng.sleep(1_000_000)
        with lock:
            log["vcpu_in"] = eng.now

    def guest() -> None:
        eng.sleep(200_000_000)

    eng.spawn("host", zapper)
    eng.spawn("vcpu0", vcpu)
    for i in range(busy):
        eng.spawn(f"vcpu{i + 1}", guest)
    eng.run()
    return log, lock


def test_spin_needbreak_only_when_preemptible():
    log, lock = _spinning_zap(KernelConfig(preempt="full", host_cpus=8), busy=0)
    assert lock.lock_breaks_contention == 1 and log["vcpu_in"] == 1_000_000
    for model in ("none", "voluntary"):
        log, lock = _spinning_zap(KernelConfig(preempt=model, host_cpus=8), busy=0)
        assert lock.lock_breaks == 0 and log["vcpu_in"] == 100_000_000


def test_need_resched_at_the_tick_after_the_slice():
    """Four threads on two CPUs: two per CPU, CFS slice latency/2 with the log factor
    of two CPUs (6 ms x 2 / 2 = 6 ms); at HZ=250 the first tick after it is at 8 ms. The
    zapper yields there, is off the CPU for the other task's slice, and goes on."""
    kernel = KernelConfig(preempt="none", hz=250, host_cpus=2)
    assert sched_slice_ns(2, 2) == 6_000_000
    log, lock = _spinning_zap(kernel, busy=2)
    assert log["vcpu_in"] == 8_000_000
    assert lock.lock_breaks_resched >= 1 and lock.lock_breaks_contention == 0
    assert lock.holds[0][1] == 8_000_000  # the first hold ends at the tick
    # every yield costs the zapper one slice of the other task on its CPU
    assert log["zap_end"] >= 100_000_000 + lock.lock_breaks_resched * 6_000_000


def test_a_woken_vmm_takes_a_cpu_at_once_under_both_schedulers(runs_dir):
    """The VMM woken for rom.sh's next round, while every CPU runs a vCPU, preempts one at
    once under CFS and under EEVDF (traced on this development host's 6.18: 233 of 239
    such wake-ups ran within 15 us), so rom.sh's rounds are its pause plus its own work;
    EEVDF changes only the slice after which the tick breaks a zap."""
    two = ["-c", "2", "-m", "128", "--passes", "6", "--rom-interval-ms", "1"]

    def run(*args: str) -> tuple[dict, dict]:
        doc = run_json("rom-access", *two, "--policy", "fast-invalidate", *args)
        return doc, doc["results"][0]["metrics"]

    busy = ["--host-cpus", "2", "--preempt", "none", "--hz", "250"]  # this host
    _, cfs = run(*busy)
    doc, eevdf = run(*busy, "--sched", "eevdf")
    assert doc["kernel"]["sched"] == "eevdf"
    assert eevdf["memslot_add_ms"] == pytest.approx(cfs["memslot_add_ms"], rel=0.1)
    # a round is the 1 ms pause (x U(0.8, 1.2)) plus the cat's own ioctls and read, not
    # a 4 ms tick on top
    for one in (doc, run(*busy)[0]):
        stored = json.loads((runs_dir / one["name"] / "result.json").read_text())
        (res,) = stored["results"]
        t = [row[0] for row in res["series"]["rom-access"]]
        gaps = sorted(np.diff(t))
        assert gaps[len(gaps) // 2] < (1.2 + res["metrics"]["rom_access_ms"]) * 1e6
    _, calm_cfs = run("--host-cpus", "16")
    _, calm_eevdf = run("--host-cpus", "16", "--sched", "eevdf")
    assert calm_eevdf == calm_cfs


def test_a_deletes_first_grace_period_wake_up_may_wait_for_the_tick_under_eevdf():
    """Under eevdf with every CPU busy, the VMM woken from a delete's first grace period
    loses the pick to a vCPU in the measured share of cases and then waits for the first
    tick at or after the rest of that vCPU's slice; under cfs, or with a CPU to spare,
    it never waits."""
    from mmbench.model.sched import EEVDF_GP_WAKE_LOSES_PICK, Scheduler

    class Busy:  # three runnable threads (two vCPUs, the VMM) at some instant
        nr_running = 3

        def __init__(self) -> None:
            self.now = 0

    this_host = KernelConfig(preempt="none", hz=250, host_cpus=2, sched="eevdf")
    eng = Busy()
    sched = Scheduler(eng, this_host)
    slice_ns = sched.slice_ns(sched.per_cpu())
    assert slice_ns == 1_400_000  # 0.70 ms x (1 + ilog2(2))
    waits = []
    for i in range(4000):
        eng.now = 1_000_003 + i * 777_777  # every phase of the 4 ms tick
        w = sched.grace_period_wake_wait_ns()
        waits.append(w)
        if w:
            assert (eng.now + w) % 4_000_000 == 0  # it ends at a tick
            assert w <= slice_ns + 4_000_000
    share = np.mean(np.array(waits) > 0)
    assert share == pytest.approx(EEVDF_GP_WAKE_LOSES_PICK, abs=0.03)
    for other in (
        KernelConfig(preempt="none", hz=250, host_cpus=2, sched="cfs"),
        KernelConfig(preempt="none", hz=250, host_cpus=4, sched="eevdf"),
    ):
        quiet = Scheduler(Busy(), other)
        assert all(quiet.grace_period_wake_wait_ns() == 0 for _ in range(200))


def test_the_wake_up_waits_show_in_the_deletes_trace_series(runs_dir):
    """The model's trace:memslot-delete series has the keys the kvm backend's --trace
    records: on this host's kernel configuration about half of the deletes' first
    wake-ups wait (milliseconds, not microseconds), the second never; under cfs none."""
    busy = ["-c", "2", "-m", "64", "--passes", "40", "--rom-interval-ms", "1"]
    busy += ["--rom-read-kib", "128", "--host-cpus", "2", "--preempt", "none"]

    def firsts(*args: str) -> tuple[np.ndarray, np.ndarray]:
        doc = run_json("rom-access", *busy, "--policy", "fast-invalidate", *args)
        stored = json.loads((runs_dir / doc["name"] / "result.json").read_text())
        (res,) = stored["results"]
        rows = [d for _, d in res["series"]["trace:memslot-delete"]]
        assert all(d["vmm_wakeups"] == 2 for d in rows)  # one per grace period
        first = np.array([d["vmm_first_wake_wait_us"] for d in rows])
        rest = np.array([d["vmm_cpu_wait_us"] for d in rows]) - first
        return first, rest

    first, rest = firsts("--sched", "eevdf")
    assert len(first) > 100 and 0.4 < np.mean(first > 0) < 0.7
    assert first[first > 0].min() > 0 and np.median(first[first > 0]) > 500
    assert not rest.any()
    first, rest = firsts("--sched", "cfs")
    assert not first.any() and not rest.any()


def test_bad_scheduler_is_refused(tmp_path):
    proc = mmbench("run", "rom-access", "--sched", "bfs")
    assert proc.returncode == 2 and "--sched" in proc.stderr and "eevdf" in proc.stderr
    cfg = tmp_path / "run.yaml"
    cfg.write_text("workload: rom-access\nkernel: {sched: o1}\n")
    proc = mmbench("run", "--config", str(cfg))
    assert proc.returncode == 2 and "must be one of cfs, eevdf" in proc.stderr
