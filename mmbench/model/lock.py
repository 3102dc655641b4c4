"""``kvm->mmu_lock``: a fair (queued) spinlock with hold times, waiters and lock-break.

Waiting actors spin: their wait is vCPU stall time. ``cond_resched`` is
``cond_resched_lock``: it drops and retakes the lock when ``spin_needbreak()`` (someone
waits, and the host kernel is preemptible) or ``need_resched()`` (the scheduler tick
found the holder's slice used up on an overloaded CPU) -- the semantics of the run's
``KernelConfig`` (``mmbench.model.sched``), so policies only say where they may yield.
It is the one place where a lock-break happens; each is counted by cause.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from mmbench.model.engine import Actor, Engine
from mmbench.model.sched import KernelConfig, Scheduler


class MmuLock:
    def __init__(self, engine: Engine, handoff_ns: float, kernel: KernelConfig) -> None:
        self.engine = engine
        self.handoff_ns = handoff_ns
        self.kernel = kernel
        self.sched = Scheduler(engine, kernel)
        self.holder: Actor | None = None
        self.readers: list[Actor] = []  # actors inside read_lock()
        self.waiters: deque[tuple[Actor, int]] = deque()
        self._hold_start = 0
        # (start ns, hold ns, is_vcpu) per critical section: histograms and max hold.
        self.holds: list[tuple[int, int, bool]] = []
        self.wait_ns: dict[str, int] = {}
        self.max_wait_ns: dict[str, int] = {}
        self.lock_breaks = 0
        self.lock_breaks_contention = 0  # spin_needbreak(): a waiter, preempt=full only
        self.lock_breaks_resched = 0  # need_resched(): the tick, under every model
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
        if self.holder is not None and self.kernel.preemptible:
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
    def spin_needbreak(self) -> bool:
        """``spin_needbreak(&kvm->mmu_lock)``: someone waits, on a preemptible kernel."""
        return self.kernel.preemptible and bool(self.waiters)

    def need_resched(self) -> bool:
        """``need_resched()`` on the holder's CPU, from the scheduler tick."""
        me = self.engine.current
        return me is not None and self.sched.need_resched(me)

    def needbreak(self) -> bool:
        """``need_resched() || spin_needbreak()``: a zap loop's check before it yields."""
        return self.spin_needbreak() or self.need_resched()

    def cond_resched(self) -> bool:
        """``cond_resched_lock``: if the holder must yield, drop the lock (a waiter gets
        it), schedule if need_resched is set, then retake it. Returns True if it broke."""
        resched = self.need_resched()
        if not (resched or self.spin_needbreak()):
            return False
        self.lock_breaks += 1
        if resched:
            self.lock_breaks_resched += 1
        else:
            self.lock_breaks_contention += 1
        self.release()
        if resched:
            self.sched.schedule()
        self.acquire()
        return True

    def work(self, item_ns: np.ndarray, lock_break: bool) -> int:
        """Spend the cost of a run of items while holding the lock.

        Without lock-break every item is done. With it, the run is cut short at the end of
        the item in progress when the holder must yield (the next ``need_resched() ||
        spin_needbreak()`` check in a kernel loop): when a waiter arrives on a
        preemptible kernel, or at the tick that sets need_resched. Returns how many items
        were done.
        """
        n = len(item_ns)
        if n == 0:
            return 0
        ends = np.cumsum(item_ns, dtype=np.float64)
        total = float(ends[-1])
        if not lock_break:
            self.engine.sleep(total)
            return n
        if self.needbreak():  # already due: stop after the first item
            self.engine.sleep(float(ends[0]))
            return 1
        start = self.engine.now
        me = self.engine.current

        def item_end(t: int) -> int:
            i = int(np.searchsorted(ends, t - start, side="left"))
            return start + int(ends[min(i, n - 1)])

        resched = self.sched.resched_at(me)
        plan = start + int(total) if resched is None else min(start + int(total), item_end(resched))

        def stop_at(now: int) -> int:  # a waiter arrived (preempt=full only)
            return item_end(now)

        slept = self.engine.sleep_interruptible(plan - start, stop_at)
        if slept >= int(total):
            return n
        return min(n, int(np.searchsorted(ends, slept, side="left")) + 1)

    # -- figures -------------------------------------------------------------------------
    def max_hold_ns(self, vcpu: bool | None = None) -> int:
        holds = [h for _, h, v in self.holds if vcpu is None or v == vcpu]
        return max(holds, default=0)
