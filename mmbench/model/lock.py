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

from mmbench.errors import InvariantViolation
from mmbench.model.engine import Actor, Engine
from mmbench.model.sched import KernelConfig, Scheduler


class MmuLock:
    """``kvm->mmu_lock``. ``kind`` is the kernel's for the MMU modelled: ``"spinlock"``
    (the legacy and shadow MMU, before 5.12; after it, an rwlock only ever taken for
    write, which is the same) or ``"rwlock"`` (the x86 TDP MMU since 5.12, "KVM: x86/mmu:
    Use an rwlock for the x86 MMU", Ben Gardon), where ``read_lock`` is allowed.

    Both are queued and fair, as the kernel's qspinlock and qrwlock
    (kernel/locking/qrwlock.c): one FIFO of waiters; a reader gets in at once only if no
    writer holds or waits (a waiting writer blocks new readers); a writer waits for the
    readers inside to leave; consecutive readers at the head of the queue enter together.
    """

    def __init__(
        self, engine: Engine, handoff_ns: float, kernel: KernelConfig, kind: str = "spinlock"
    ) -> None:
        self.engine = engine
        self.handoff_ns = handoff_ns
        self.kernel = kernel
        self.kind = kind
        self.sched = Scheduler(engine, kernel)
        self.holder: Actor | None = None  # the writer (or the spinlock's holder)
        self.readers: list[Actor] = []  # actors inside read_lock()
        self._read_start: dict[Actor, int] = {}
        self.waiters: deque[tuple[Actor, int, bool]] = deque()  # (actor, since, write)
        self._hold_start = 0
        # (start ns, hold ns, is_vcpu) per critical section: histograms and max hold.
        self.holds: list[tuple[int, int, bool]] = []
        self._max_hold = {True: 0, False: 0}  # by is_vcpu, kept as holds end
        self.wait_ns: dict[str, int] = {}
        self.max_wait_ns: dict[str, int] = {}
        self.lock_breaks = 0
        # called by the holder just before it drops the lock (the --check oracle)
        self.before_release: list[Callable[[], None]] = []
        self.lock_breaks_contention = 0  # spin_needbreak(): a waiter, preempt=full only
        self.lock_breaks_resched = 0  # need_resched(): the tick, under every model
        self.is_vcpu: Callable[[Actor], bool] = lambda a: a.name.startswith("vcpu")

    # -- acquire / release ---------------------------------------------------------------
    def acquire(self) -> None:
        """``write_lock`` (``spin_lock`` for a spinlock)."""
        me = self.engine.current
        assert me is not None
        if self.holder is me or me in self.readers:
            raise RuntimeError(f"{me.name}: mmu_lock is not recursive")
        if self.holder is None and not self.readers and not self.waiters:
            self._take(me)
            return
        self._wait(me, write=True)

    def _wait(self, me: Actor, write: bool) -> None:
        """Queue and spin until ``_grant`` lets us in; a preemptible holder is told
        (``spin_needbreak()`` / ``rwlock_needbreak()`` becomes true)."""
        self.waiters.append((me, self.engine.now, write))
        if self.kernel.preemptible:
            for inside in [self.holder, *self.readers] if write else [self.holder]:
                if inside is not None:
                    self.engine.interrupt(inside)
        self.engine.block()
        # handed over by _grant(): account the spin
        self.engine.sleep(self.handoff_ns)

    def _take(self, actor: Actor) -> None:
        self.holder = actor
        self._hold_start = self.engine.now
        self.engine.set_holding(actor, True)

    def _enter_read(self, actor: Actor) -> None:
        self.readers.append(actor)
        self._read_start[actor] = self.engine.now
        self.engine.set_holding(actor, True)

    def _grant(self) -> None:
        """Let in the head of the queue: a writer once nobody is inside, or every
        consecutive reader while no writer holds."""
        now = self.engine.now
        while self.waiters and self.holder is None:
            nxt, since, write = self.waiters[0]
            if write and self.readers:
                return
            self.waiters.popleft()
            waited = now - since
            self.wait_ns[nxt.name] = self.wait_ns.get(nxt.name, 0) + waited
            self.max_wait_ns[nxt.name] = max(self.max_wait_ns.get(nxt.name, 0), waited)
            if write:
                self._take(nxt)
            else:
                self._enter_read(nxt)
            self.engine.wake(nxt)
            if write:
                return

    def release(self) -> None:
        """``write_unlock``."""
        me = self.engine.current
        assert self.holder is me, "mmu_lock released by a non-holder"
        for check in self.before_release:
            check()
        now = self.engine.now
        self._record_hold(self._hold_start, now - self._hold_start, self.is_vcpu(me))
        self.holder = None
        self.engine.set_holding(me, False)
        self._grant()

    def __enter__(self) -> MmuLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def read_acquire(self) -> None:
        """``read_lock``: in at once unless a writer holds the lock or waits for it."""
        me = self.engine.current
        assert me is not None
        if self.kind != "rwlock":
            raise RuntimeError(f"read_lock on a {self.kind}: this MMU's mmu_lock has no reader")
        if self.holder is me or me in self.readers:
            raise RuntimeError(f"{me.name}: mmu_lock is not recursive")
        if self.holder is None and not self.waiters:
            self._enter_read(me)
            return
        self._wait(me, write=False)

    def read_release(self) -> None:
        """``read_unlock``: the last reader out lets a waiting writer in."""
        me = self.engine.current
        self.readers.remove(me)
        start = self._read_start.pop(me)
        self._record_hold(start, self.engine.now - start, self.is_vcpu(me))
        self.engine.set_holding(me, False)
        if not self.readers:
            self._grant()

    @contextmanager
    def read_lock(self) -> Iterator[None]:
        """``read_lock(&kvm->mmu_lock)`` ... ``read_unlock``: vCPU faults of the TDP MMU
        (``kvm_tdp_mmu_map``), and since 5.13 the collapsible-SPTE zap and 6.13's in-place
        recovery. Readers share the lock; they wait only for a writer."""
        self.read_acquire()
        try:
            yield
        finally:
            self.read_release()

    def reading(self) -> bool:
        """The current actor holds the lock for read."""
        return self.engine.current in self.readers

    def held_elsewhere(self) -> bool:
        """Another actor is inside an mmu_lock section (as the writer or a reader): what
        it changed may not be flushed yet, legitimately, until it leaves."""
        me = self.engine.current
        return (self.holder is not None and self.holder is not me) or any(
            r is not me for r in self.readers
        )

    # -- lock-break ----------------------------------------------------------------------
    def spin_needbreak(self) -> bool:
        """``spin_needbreak(&kvm->mmu_lock)`` / ``rwlock_needbreak()``: someone waits (for
        an rwlock, ``queued_rwlock_is_contended``: the wait queue is not empty), on a
        preemptible kernel."""
        return self.kernel.preemptible and bool(self.waiters)

    def need_resched(self) -> bool:
        """``need_resched()`` on the holder's CPU, from the scheduler tick."""
        me = self.engine.current
        return me is not None and self.sched.need_resched(me)

    def needbreak(self) -> bool:
        """``need_resched() || spin_needbreak()``: a zap loop's check before it yields."""
        return self.spin_needbreak() or self.need_resched()

    def cond_resched(self) -> bool:
        """``cond_resched_lock`` (``cond_resched_rwlock_write``, or ``_read`` for a
        holder in read mode): if the holder must yield, drop the lock (a waiter gets it),
        schedule if need_resched is set, then retake it in the same mode. Returns True
        if it broke. The one place where a lock-break happens."""
        resched = self.need_resched()
        if not (resched or self.spin_needbreak()):
            return False
        self.lock_breaks += 1
        if resched:
            self.lock_breaks_resched += 1
        else:
            self.lock_breaks_contention += 1
        shared = self.reading()
        self.read_release() if shared else self.release()
        if resched:
            self.sched.schedule()
        self.read_acquire() if shared else self.acquire()
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
        me = self.engine.current
        if self.holder is not me and me not in self.readers:
            raise InvariantViolation(f"{me.name}: MMU work done without holding mmu_lock")
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
    def _record_hold(self, start: int, ns: int, vcpu: bool) -> None:
        self.holds.append((start, ns, vcpu))
        if ns > self._max_hold[vcpu]:
            self._max_hold[vcpu] = ns

    def max_hold_ns(self, vcpu: bool | None = None) -> int:
        """Longest critical section (of vCPUs, of the host, or of either): kept as holds
        end, since ``stats()`` asks for it at every ROM remap."""
        if vcpu is None:
            return max(self._max_hold.values())
        return self._max_hold[vcpu]
