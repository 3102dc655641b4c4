"""One virtual timeline shared by vCPU threads and host threads.

Each actor (a vCPU, the VMM thread running rom.sh's ioctls, a kernel worker) is a greenlet
with its own code written as plain sequential calls; ``sleep`` and lock waits switch back
to the engine, which resumes actors in (time, sequence) order as simpy does, so ties
break deterministically and contention emerges from who holds mmu_lock when.

Time is an integer number of nanoseconds.
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
        engine.nr_running += 1

        def body() -> None:
            try:
                self.result = fn(*args)
            finally:
                self.done = True
                engine.nr_running -= 1

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

    # -- actors --------------------------------------------------------------------------
    def spawn(self, name: str, fn: Callable[..., Any], *args: Any) -> Actor:
        actor = Actor(self, name, fn, args)
        self.actors.append(actor)
        self._push(self.now, actor)
        return actor

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
        """Spend ``dt`` ns on the current actor. When nothing else is due before it would
        wake, the loop would resume it next anyway: the clock just moves on (no switch),
        which changes nothing but the model's own speed."""
        if dt <= 0:
            return
        t = self.now + int(dt)
        if self._nobody_due_by(t):  # the same timeline without a trip through the heap
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
        try:
            self.sleep(dt)
        finally:
            actor.idle = False
            self.nr_running += 1
            actor.slice_start = self.now

    def sleep_interruptible(self, dt: float, on_interrupt: Callable[[int], int]) -> int:
        """Spend up to ``dt`` ns; ``interrupt(actor)`` may cut it short.

        ``on_interrupt(now)`` returns the time at which the actor should stop instead
        (for example the end of the item being worked on). Returns the time slept.
        """
        start = self.now
        actor = self.current
        assert actor is not None
        t = self.now + int(dt)
        if dt > 0 and self._nobody_due_by(t):  # nobody runs meanwhile to interrupt it
            self.now = t
            return self.now - start
        actor.interrupt_hook = on_interrupt
        self._push(t, actor)
        self._switch_out()
        actor.interrupt_hook = None
        return self.now - start

    def interrupt(self, actor: Actor) -> None:
        """Ask a sleeping interruptible actor to stop at its next convenient boundary."""
        hook = actor.interrupt_hook
        if hook is None or actor._wake_at is None:
            return
        stop_at = max(self.now, min(hook(self.now), actor._wake_at))
        if stop_at < actor._wake_at:
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
