"""One virtual timeline shared by vCPU threads and host threads.

Each actor (a vCPU, the VMM thread running rom.sh's ioctls, a kernel worker) is a greenlet
with its own code written as plain sequential calls; ``sleep`` and lock waits switch back
to the engine, which resumes actors in (time, sequence) order as simpy does, so ties
break deterministically and contention emerges from who holds mmu_lock when.

Time is an integer number of nanoseconds.

The host's CPUs are shared (``Engine.cpus``; None: as many as there are threads). A
compute sleep (``sleep``, ``sleep_interruptible``) is CPU work, not wall time: when more
actors are runnable than CPUs, each runnable actor outside mmu_lock gets an equal share
of the CPUs the lock holders leave, and its work advances at that rate (``Engine.rate``);
the rates are recomputed whenever the runnable set or the set of holders changes
(``Engine.reshare``). This is the fair class's long-run share for equal-weight (nice 0)
tasks: ``update_curr()`` (kernel/sched/fair.c) advances a task's vruntime by its
``delta_exec`` scaled by ``NICE_0_LOAD / weight``, and the scheduler picks the runnable
entity furthest behind (CFS's leftmost vruntime, v2.6.23 .. 6.5; EEVDF's ``pick_eevdf()``,
the eligible entity with the earliest virtual deadline, 6.6 .. 6.18), so equal-weight tasks
converge to equal service; ``load_balance()`` spreads the runnable tasks over the CPUs.
The model takes that limit: service in proportion, without the slice-sized steps of
the real runqueue (which the tick model, ``mmbench.model.sched``, keeps for the
lock-break). A holder of mmu_lock runs at full speed: a spinlock or rwlock holder runs
with preemption disabled (``preempt_disable()`` in ``__raw_spin_lock``/``__raw_write_lock``/
``__raw_read_lock``, include/linux/spinlock_api_smp.h, rwlock_api_smp.h), so under
every preemption model (PREEMPT_RT's sleeping spinlocks are not modelled) nothing but an
interrupt takes its CPU before it unlocks or calls ``cond_resched_lock``. Actors spinning
for mmu_lock count as runnable (they burn a CPU share) but do no work. ``wait`` is time
off the work (the other tasks' slices after a ``schedule()``, a wakeup's wait for a
CPU): it is not scaled.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

import greenlet

from mmbench.errors import ModelError


class Actor:
    """A thread of control on the timeline."""

    def __init__(self, engine: Engine, name: str, fn: Callable[..., Any], args: tuple) -> None:
        self.engine = engine
        self.name = name
        self.done = False
        self.result: Any = None
        self._token = 0  # invalidates stale heap entries when a sleep is cut short
        self._wake_at: int | None = None
        self.interrupt_hook: Callable[[int], int] | None = None
        self.idle = False  # asleep off any runqueue (``Engine.idle``): not runnable
        self.slice_start = engine.now  # when it last got a CPU (the scheduler's slice)
        self.holding = False  # inside an mmu_lock section: runs at full speed
        # a compute sleep in progress: work left (ns of CPU) as of _seg_start, at _rate;
        # _stop_at is the wall time an interrupt asked it to stop at
        self._left = 0.0
        self._seg_start = 0
        self._rate = 1.0
        self._stop_at: int | None = None
        engine.nr_running += 1

        def body() -> None:
            try:
                self.result = fn(*args)
            finally:
                self.done = True
                engine.nr_running -= 1
                engine.reshare()

        self.glet = greenlet.greenlet(body, parent=engine.loop_glet)

    def __repr__(self) -> str:
        return f"<Actor {self.name}>"


class Engine:
    """The scheduler: a heap of (time, seq, token, actor)."""

    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, int, Actor]] = []
        self._seq = itertools.count()
        self.loop_glet = greenlet.getcurrent()
        self.current: Actor | None = None
        self.actors: list[Actor] = []
        # actors not done and not idle: vCPUs in the guest or spinning on mmu_lock, host
        # threads at work (``mmbench.model.sched`` counts them as runnable tasks)
        self.nr_running = 0
        # the host CPUs shared by every actor (None: unlimited, every actor at full speed)
        self.cpus: int | None = None
        self.nr_holding = 0  # actors inside an mmu_lock section (``set_holding``)
        # actors in a compute sleep, in the order they began it: a dict, not a set, so that
        # a reshare pushes them in the same order every run (ties break by push order)
        self._computing: dict[Actor, None] = {}
        self._shared = False  # some compute sleep runs at a rate below 1
        self.cpu_ns = 0.0  # CPU work handed out, over every actor: never above cpus x now

    # -- actors --------------------------------------------------------------------------
    def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Actor:
        actor = Actor(self, name, fn, args)
        self.actors.append(actor)
        self._push(self.now, actor)
        self.reshare()
        return actor

    # -- sharing the host CPUs -----------------------------------------------------------
    def rate(self, actor: Actor) -> float:
        """The share of a CPU ``actor`` gets now: 1 unless more actors are runnable than
        CPUs; then holders of mmu_lock get a whole CPU (a share, if they outnumber the
        CPUs) and the other runnable actors split what the holders leave, equally."""
        cpus = self.cpus
        n = self.nr_running
        if cpus is None or n <= cpus:
            return 1.0
        h = self.nr_holding
        if actor.holding:
            return 1.0 if h <= cpus else cpus / h
        return (cpus - min(h, cpus)) / (n - h)

    def reshare(self) -> None:
        """The runnable set or the holders changed: every compute sleep in progress is
        charged the work it did at its old rate and rescheduled at its new one."""
        if not self._shared and (self.cpus is None or self.nr_running <= self.cpus):
            return  # every rate was 1 and still is
        now = self.now
        shared = False
        for a in self._computing:
            new = self.rate(a)
            shared = shared or new < 1.0
            if new == a._rate:
                continue
            self._progress(a)
            a._rate = new
            self._reschedule(a)
        self._shared = shared
        if self.cpus is not None:
            busy = sum(self.rate(a) for a in self._computing)
            if busy > self.cpus + 1e-9:  # cannot happen: the shares sum to at most cpus
                raise ModelError(f"{busy:.3f} CPUs handed out at {now} ns, host has {self.cpus}")

    def _progress(self, a: Actor) -> None:
        done = (self.now - a._seg_start) * a._rate
        a._left = max(0.0, a._left - done)
        a._seg_start = self.now

    def _reschedule(self, a: Actor) -> None:
        """Push ``a``'s wake-up for the work it has left at its rate (none at rate 0:
        the next reshare pushes it), or its interrupt's stop time if earlier."""
        if a._rate > 0:
            t = self.now + int(-(-a._left // a._rate)) if a._rate < 1.0 else self.now + int(a._left)
            if a._stop_at is not None:
                t = min(t, a._stop_at)
            self._push(t, a)
        elif a._stop_at is not None:
            self._push(a._stop_at, a)
        else:
            a._token += 1  # no entry: it waits for a CPU
            a._wake_at = None

    def set_holding(self, actor: Actor, holding: bool) -> None:
        """``actor`` entered (True) or left (False) an mmu_lock section."""
        if actor.holding == holding:
            return
        actor.holding = holding
        self.nr_holding += 1 if holding else -1
        cpus = self.cpus
        if self._shared or (cpus is not None and self.nr_running > cpus):
            self.reshare()

    def _compute(self, dt: int) -> int:
        """Spend ``dt`` ns of CPU work on the current actor at its share of a CPU; an
        ``interrupt`` may cut it short. Returns the work done (``dt`` unless cut)."""
        actor = self.current
        assert actor is not None, "sleep outside an actor"
        rate = self.rate(actor)
        # at rate 0 (the holders have every CPU) it waits for the next reshare
        t = self.now + dt if rate >= 1.0 else self.now + int(-(-dt // rate)) if rate > 0 else None
        if t is not None and self._nobody_due_by(t):  # nobody runs meanwhile to reshare
            self.now = t
            self.cpu_ns += dt
            return dt
        actor._left = float(dt)
        actor._seg_start = self.now
        actor._rate = rate
        actor._stop_at = None
        self._shared = self._shared or rate < 1.0
        self._computing[actor] = None
        self._reschedule(actor)
        try:
            self._switch_out()
        finally:
            del self._computing[actor]
        self._progress(actor)
        actor._stop_at = None
        done = dt if actor._left <= 0.5 else min(dt, int(dt - actor._left))
        self.cpu_ns += done
        return done

    def _push(self, t: int, actor: Actor) -> None:
        actor._token += 1
        actor._wake_at = t
        heapq.heappush(self._heap, (t, next(self._seq), actor._token, actor))

    def _switch_out(self) -> None:
        actor = self.current
        assert actor is not None, "sleep/block outside an actor"
        self.loop_glet.switch()

    def _nobody_due_by(self, t: int) -> bool:
        """No other actor is due to run at or before ``t``: the loop would resume the
        current actor next, at ``t``, with nothing in between (ties go to the earlier
        entry, so an entry at ``t`` itself must run first). Stale entries only make this
        answer False more often."""
        heap = self._heap
        return not heap or heap[0][0] > t

    def sleep(self, dt: float) -> None:
        """Spend ``dt`` ns of CPU work on the current actor (wall time ``dt`` at a whole
        CPU, more when it shares one). When nothing else is due before it would wake, the
        loop would resume it next anyway: the clock just moves on (no switch), which
        changes nothing but the model's own speed."""
        if dt <= 0:
            return
        cpus = self.cpus
        if cpus is None or self.nr_running <= cpus:  # a whole CPU: ``_compute``'s fast path
            t = self.now + int(dt)
            if self._nobody_due_by(t):
                self.now = t
                self.cpu_ns += int(dt)
                return
        self._compute(int(dt))

    def wait(self, dt: float) -> None:
        """Let ``dt`` ns of wall time pass for the current actor, runnable but doing no
        work (the slices of the other tasks of its CPU, a wait for a CPU): not scaled."""
        if dt <= 0:
            return
        t = self.now + int(dt)
        if self._nobody_due_by(t):
            self.now = t
            return
        self._push(t, self.current)  # type: ignore[arg-type]
        self._switch_out()

    def idle(self, dt: float) -> None:
        """Sleep ``dt`` ns off the runqueue (a shell's ``sleep``, a halted vCPU, delayed
        work not yet due): the actor is not runnable meanwhile, and gets a new slice
        when it wakes."""
        actor = self.current
        assert actor is not None
        actor.idle = True
        self.nr_running -= 1
        self.reshare()
        try:
            self.wait(dt)
        finally:
            actor.idle = False
            self.nr_running += 1
            actor.slice_start = self.now
            self.reshare()

    def sleep_interruptible(self, dt: float, on_interrupt: Callable[[int], int]) -> int:
        """Spend up to ``dt`` ns of CPU work; ``interrupt(actor)`` may cut it short.

        ``on_interrupt(now)`` returns the (wall) time at which the actor should stop
        instead (for example the end of the item being worked on). Returns the work
        done, which is the wall time slept at a whole CPU.
        """
        actor = self.current
        assert actor is not None
        if dt <= 0:
            return 0
        actor.interrupt_hook = on_interrupt
        try:
            return self._compute(int(dt))
        finally:
            actor.interrupt_hook = None

    def interrupt(self, actor: Actor) -> None:
        """Ask a sleeping interruptible actor to stop at its next convenient boundary."""
        hook = actor.interrupt_hook
        wake = actor._wake_at
        if hook is None or (wake is None and actor not in self._computing):
            return
        # a compute sleep at rate 0 (no CPU left to share) has no wake-up yet
        stop_at = max(self.now, hook(self.now) if wake is None else min(hook(self.now), wake))
        if wake is None or stop_at < wake:
            actor._stop_at = stop_at
            self._push(stop_at, actor)
        actor.interrupt_hook = None

    def block(self) -> None:
        """Suspend the current actor until someone calls ``wake`` on it."""
        assert self.current is not None
        self.current._wake_at = None
        self.current._token += 1
        self._switch_out()

    def wake(self, actor: Actor, at: int | None = None) -> None:
        self._push(self.now if at is None else at, actor)

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        """Run until no actor is runnable; an actor still blocked then is a deadlock."""
        while self._heap:
            t, _, token, actor = heapq.heappop(self._heap)
            if token != actor._token or actor.done:
                continue
            self.now = t
            actor._wake_at = None
            self.current = actor
            actor.glet.switch()
            self.current = None
        stuck = [a.name for a in self.actors if not a.done]
        if stuck:
            raise ModelError(f"deadlock: actors blocked forever: {', '.join(stuck)}")
