"""mmu_lock on the virtual timeline: waiting is stall, lock-break yields at item ends."""

from __future__ import annotations

import numpy as np

from mmbench.model.engine import Engine
from mmbench.model.lock import MmuLock
from mmbench.model.sched import KernelConfig

FULL = KernelConfig(preempt="full")


def two_actors(lock_break: bool, arrive_ns: int):
    eng = Engine()
    lock = MmuLock(eng, handoff_ns=0, kernel=FULL)
    log = {}

    def zapper():
        lock.acquire()
        done = lock.work(np.full(10, 100.0), lock_break)  # ten items of 100 ns
        log["done"] = done
        log["zapper_break_at"] = eng.now
        if lock_break:
            lock.cond_resched()
        lock.work(np.full(10 - done, 100.0), lock_break)
        lock.release()
        log["zapper_end"] = eng.now

    def vcpu():
        eng.sleep(arrive_ns)
        lock.acquire()
        log["vcpu_got_lock"] = eng.now
        eng.sleep(50)
        lock.release()

    eng.spawn("host", zapper)
    eng.spawn("vcpu0", vcpu)
    eng.run()
    return log, lock


def test_lock_break_yields_at_the_end_of_the_item_in_progress():
    log, lock = two_actors(lock_break=True, arrive_ns=250)
    assert log["done"] == 3  # the waiter arrived during item 3 (200..300 ns)
    assert log["vcpu_got_lock"] == 300
    assert lock.wait_ns["vcpu0"] == 50 and lock.lock_breaks == 1
    assert log["zapper_end"] == 300 + 50 + 700
    assert lock.max_hold_ns() == 700


def test_without_lock_break_the_vcpu_waits_for_the_whole_walk():
    log, lock = two_actors(lock_break=False, arrive_ns=250)
    assert log["done"] == 10 and log["vcpu_got_lock"] == 1000
    assert lock.wait_ns["vcpu0"] == 750 and lock.lock_breaks == 0


def test_read_lock_readers_share_and_wait_only_for_a_writer():
    """``read_lock``: faults do not exclude each other, but queue behind a writer and get
    in at its lock-break."""
    eng = Engine()
    lock = MmuLock(eng, handoff_ns=0, kernel=FULL, kind="rwlock")
    log: dict[str, int] = {}

    def reader(name: str, arrive_ns: int) -> None:
        eng.sleep(arrive_ns)
        with lock.read_lock():
            log[f"{name}_in"] = eng.now
            eng.sleep(100)
        log[f"{name}_out"] = eng.now

    def writer() -> None:
        eng.sleep(1000)
        lock.acquire()
        done = lock.work(np.full(10, 100.0), True)
        lock.cond_resched()
        lock.work(np.full(10 - done, 100.0), True)
        lock.release()

    eng.spawn("vcpu0", reader, "a", 0)
    eng.spawn("vcpu1", reader, "b", 50)  # overlaps a: both inside at once
    eng.spawn("host", writer)
    eng.spawn("vcpu2", reader, "c", 1250)  # arrives while the writer holds the lock
    eng.run()
    assert log["a_in"] == 0 and log["b_in"] == 50 and log["a_out"] == 100
    assert log["c_in"] == 1300  # the writer's lock-break at the end of its third item
    assert lock.lock_breaks == 1 and lock.wait_ns["vcpu2"] == 50


def test_qrwlock_a_waiting_writer_blocks_new_readers_and_waits_for_readers_inside():
    """qrwlock fairness: the writer queues behind reader a (inside until 1000 ns); reader
    b, arriving after the writer, waits for the writer although only a reader is in."""
    eng = Engine()
    lock = MmuLock(eng, handoff_ns=0, kernel=KernelConfig(preempt="none"), kind="rwlock")
    log: dict[str, int] = {}

    def reader(name: str, arrive_ns: int, hold_ns: int) -> None:
        eng.sleep(arrive_ns)
        with lock.read_lock():
            log[f"{name}_in"] = eng.now
            eng.sleep(hold_ns)

    def writer() -> None:
        eng.sleep(100)
        with lock:
            log["w_in"] = eng.now
            eng.sleep(500)

    eng.spawn("vcpu0", reader, "a", 0, 1000)
    eng.spawn("host", writer)
    eng.spawn("vcpu1", reader, "b", 200, 10)
    eng.run()
    assert log["a_in"] == 0 and log["w_in"] == 1000  # the writer waited for a to leave
    assert log["b_in"] == 1500  # b queued behind the waiting writer
    assert lock.wait_ns == {"host": 900, "vcpu1": 1300}


def test_read_lock_is_refused_on_a_spinlock():
    eng = Engine()
    lock = MmuLock(eng, handoff_ns=0, kernel=FULL)
    failed: list[str] = []

    def reader() -> None:
        try:
            with lock.read_lock():
                pass
        except RuntimeError as exc:
            failed.append(str(exc))

    eng.spawn("vcpu0", reader)
    eng.run()
    assert failed and "spinlock" in failed[0]
