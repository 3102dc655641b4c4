"""Time sharing outside mmu_lock: more runnable threads than host CPUs share the CPUs
(``Engine.cpus``, ``Engine.reshare``); an mmu_lock holder keeps a whole CPU."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_json
from hypothesis import given, settings
from hypothesis import strategies as st

from mmbench.model.engine import Engine
from mmbench.model.lock import MmuLock
from mmbench.model.sched import KernelConfig


def _pass_ms(cpus: int) -> float:
    doc = run_json(
        "rom-access",
        *("-c", "8", "-m", "256", "--passes", "4", "--policy", "zap-slot"),
        *("--preempt", "none", "--host-cpus", str(cpus)),
    )
    assert doc["kernel"]["host_cpus"] == cpus
    return doc["results"][0]["metrics"]["pass_time_ms"]


def test_eight_guest_threads_on_two_cpus_take_four_times_as_long(runs_dir):
    """zap-slot faults nothing in its warm passes, so a pass is the 8 vCPUs' guest work:
    on 2 CPUs each runs at a quarter of a CPU (rom.sh's VMM mostly sleeps), on 4 at a
    half, and on 8 or 16 at full speed."""
    calm = _pass_ms(16)
    assert _pass_ms(8) == pytest.approx(calm, rel=0.02)
    assert _pass_ms(4) == pytest.approx(2 * calm, rel=0.05)
    assert _pass_ms(2) == pytest.approx(4 * calm, rel=0.05)


def _five_threads_on_two_cpus(holder: bool) -> tuple[Engine, dict[str, int]]:
    """Five threads of 1 ms of work each on two CPUs, and (``holder``) a sixth that holds
    mmu_lock for its 1 ms of work. Returns the engine and when each thread finished."""
    eng = Engine()
    eng.cpus = 2
    lock = MmuLock(eng, handoff_ns=0, kernel=KernelConfig(preempt="none", host_cpus=2))
    ends: dict[str, int] = {}

    def work(name: str) -> None:
        eng.sleep(1_000_000)
        ends[name] = eng.now

    def locked() -> None:
        with lock:
            lock.work(np.full(10, 100_000.0), lock_break=False)
        ends["holder"] = eng.now

    for i in range(5):
        eng.spawn(f"vcpu{i}", work, f"vcpu{i}")
    if holder:
        eng.spawn("host", locked)
    eng.run()
    return eng, ends


def test_equal_threads_share_the_cpus_equally():
    """Five threads of 1 ms on two CPUs all finish at 2.5 ms; a sixth that holds mmu_lock
    keeps a whole CPU for its 1 ms, leaving one CPU to the other five."""
    eng, ends = _five_threads_on_two_cpus(holder=False)
    assert set(ends.values()) == {2_500_000}
    assert eng.cpu_ns == 5_000_000 <= eng.cpus * eng.now
    eng, ends = _five_threads_on_two_cpus(holder=True)
    assert ends["holder"] == 1_000_000  # full speed under the lock
    # 1 ms at a fifth of a CPU (0.2 ms of work each), then 0.8 ms at 2/5 of one
    assert {ends[f"vcpu{i}"] for i in range(5)} == {3_000_000}
    assert eng.cpu_ns == 6_000_000 <= eng.cpus * eng.now


step = st.tuples(st.sampled_from(["work", "idle", "lock"]), st.integers(1, 3_000))


@settings(max_examples=60, deadline=None)
@given(
    cpus=st.integers(1, 6),
    scripts=st.lists(st.lists(step, min_size=1, max_size=6), min_size=1, max_size=8),
    preempt=st.sampled_from(["none", "full"]),
)
def test_cpu_handed_out_never_exceeds_the_host_cpus(cpus, scripts, preempt):
    """Any mix of threads computing, sleeping and taking mmu_lock: the CPU time handed
    out is at most ``cpus x wall``, every thread gets all its work done and none faster
    than a whole CPU; with a CPU per thread, nothing changes from unlimited CPUs."""

    def play(ncpus: int | None) -> tuple[Engine, dict[str, int]]:
        eng = Engine()
        eng.cpus = ncpus
        kernel = KernelConfig(preempt=preempt, host_cpus=ncpus or 16)
        lock = MmuLock(eng, handoff_ns=10, kernel=kernel)
        spent: dict[str, int] = {}

        def thread(name: str, script: list[tuple[str, int]]) -> None:
            t0, work = eng.now, 0
            for kind, ns in script:
                if kind == "work":
                    eng.sleep(ns)
                    work += ns
                elif kind == "idle":
                    eng.idle(ns)
                    work += ns
                else:
                    with lock:
                        items = np.full(4, float(ns))
                        done = lock.work(items, lock_break=True)
                        while done < 4:
                            lock.cond_resched()
                            done += lock.work(items[done:], lock_break=True)
                    work += 4 * ns
            assert eng.now - t0 >= work  # not faster than a whole CPU
            spent[name] = eng.now - t0

        for i, script in enumerate(scripts):
            eng.spawn(f"vcpu{i}", thread, f"vcpu{i}", script)
        eng.run()
        assert all(a.done for a in eng.actors)
        return eng, spent

    eng, spent = play(cpus)
    assert eng.cpu_ns <= cpus * eng.now + 1e-6
    if cpus >= len(scripts):
        eng0, spent0 = play(None)
        assert spent == spent0 and eng.now == eng0.now
