"""``kvm->mmu_lock``: a fair (queued) spinlock with hold times, waiters and lock-break.

Waiting actors spin: their wait is vCPU stall time. ``cond_resched_lock`` drops and
retakes the lock when someone waits (``spin_needbreak`` on a preemptible kernel), which
bounds stalls but lets vCPUs build new mappings while a zap is in progress.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from mmbench.errors import InvariantViolation
from mmbench.model.engine import Actor, Engine


class MmuLock:
    def __init__(self, engine: Engine, handoff_ns: float) -> None:
        self.engine = engine
        self.handoff_ns = handoff_ns
        self.holder: Actor | None = None
        self.readers: list[Actor] = []  # actors inside read_lock()
        self.waiters: deque[tuple[Actor, int]] = deque()
        self._hold_start = 0
        # (start ns, hold ns, is_vcpu) per critical section: histograms and max hold.
        self.holds: list[tuple[int, int, bool]] = []
        self.wait_ns: dict[str, int] = {}
        self.max_wait_ns: dict[str, int] = {}
        self.lock_breaks = 0
        # called by the holder just before it drops the lock (the --check oracle)
        self.before_release: list[Callable[[], None]] = []
        self.is_vcpu: Callable[[Actor], bool] = lambda a: a.name.startswith("vcpu")

    # -- acquire / release ---------------------------------------------------------------
    def acquire(self) -> None:
        me = self.engine.current
        assert me is not None
        if self.holder is me:
            raise RuntimeError(f"{me.name}: mmu_lock is not recursive")
        if self.holder is None and not self.waiters:
            self._take(me)
            return
        self.waiters.append((me, self.engine.now))
        if self.holder is not None:
            self.engine.interrupt(self.holder)  # spin_needbreak() becomes true
        self.engine.block()
        # handed over by release(): account the spin
        self.engine.sleep(self.handoff_ns)

    def _take(self, actor: Actor) -> None:
        self.holder = actor
        self._hold_start = self.engine.now

    def release(self) -> None:
        me = self.engine.current
        assert self.holder is me, "mmu_lock released by a non-holder"
        for check in self.before_release:
            check()
        now = self.engine.now
        self.holds.append((self._hold_start, now - self._hold_start, self.is_vcpu(me)))
        self.holder = None
        if self.waiters:
            nxt, since = self.waiters.popleft()
            waited = now - since
            self.wait_ns[nxt.name] = self.wait_ns.get(nxt.name, 0) + waited
            self.max_wait_ns[nxt.name] = max(self.max_wait_ns.get(nxt.name, 0), waited)
            self._take(nxt)
            self.engine.wake(nxt)

    def __enter__(self) -> MmuLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    @contextmanager
    def read_lock(self) -> Iterator[None]:
        """``read_lock(&kvm->mmu_lock)`` for MMUs whose vCPU faults take the lock for read
        (x86 TDP MMU since 5.12, ``kvm_tdp_mmu_map`` under ``read_lock``).

        Readers do not exclude each other and hold nothing while they fault; a reader
        only waits for a writer holding or queued for the lock, by queueing behind it and
        passing straight through (a zero-length hold) once the writer's lock-break or
        release lets it in. Not yet the kernel's qrwlock: a writer does not wait for the
        readers inside, and readers queue with writers in one FIFO.
        """
        if self.holder is not None or self.waiters:
            self.acquire()  # queue behind the writer; its lock-break lets us in
            self.release()
        me = self.engine.current
        self.readers.append(me)
        try:
            yield
        finally:
            self.readers.remove(me)

    def held_elsewhere(self) -> bool:
        """Another actor is inside an mmu_lock section (as the writer or a reader): what
        it changed may not be flushed yet, legitimately, until it leaves."""
        me = self.engine.current
        return (self.holder is not None and self.holder is not me) or any(
            r is not me for r in self.readers
        )

    # -- lock-break ----------------------------------------------------------------------
    def needbreak(self) -> bool:
        """``spin_needbreak(&kvm->mmu_lock)``."""
        return bool(self.waiters)

    def cond_resched(self) -> bool:
        """``cond_resched_lock``: if someone waits, let them in, then retake the lock."""
        if not self.waiters:
            return False
        self.lock_breaks += 1
        self.release()
        self.acquire()
        return True

    def work(self, item_ns: np.ndarray, lock_break: bool) -> int:
        """Spend the cost of a run of items while holding the lock.

        Without lock-break every item is done. With it, a waiter arriving cuts the run
        short at the end of the item in progress (the next ``need_resched() ||
        spin_needbreak()`` check in a kernel loop). Returns how many items were done.
        """
        n = len(item_ns)
        if n == 0:
            return 0
        me = self.engine.current
        if self.holder is not me and me not in self.readers:
            raise InvariantViolation(f"{me.name}: MMU work done without holding mmu_lock")
        ends = np.cumsum(item_ns, dtype=np.float64)
        total = float(ends[-1])
        if not lock_break:
            self.engine.sleep(total)
            return n
        if self.waiters:  # someone is already waiting: stop after the first item
            self.engine.sleep(float(ends[0]))
            return 1
        start = self.engine.now

        def stop_at(now: int) -> int:
            i = int(np.searchsorted(ends, now - start, side="left"))
            return start + int(ends[min(i, n - 1)])

        slept = self.engine.sleep_interruptible(total, stop_at)
        if slept >= int(total):
            return n
        return min(n, int(np.searchsorted(ends, slept, side="left")) + 1)

    # -- figures -------------------------------------------------------------------------
    def max_hold_ns(self, vcpu: bool | None = None) -> int:
        holds = [h for _, h, v in self.holds if vcpu is None or v == vcpu]
        return max(holds, default=0)
