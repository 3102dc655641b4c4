"""One watchdog thread per VM that kicks a hung one-shot guest access out of KVM_RUN.

``guest_access`` (rom.sh's read of the ROM, memslot-perf's rw test) used to start a
``threading.Timer`` per call. ``Thread.start()`` returns only once the new thread has run,
and ``cancel()`` + ``join()`` only once it has exited: with every host CPU busy running
vCPUs, each of those waits lasted until the scheduler gave the new thread a CPU. On this
development host (2 CPUs, two vCPU threads running, 6.18) an access took 4.2 ms at the
median against 0.25 ms for the KVM_RUN inside it, which stretched the kernel side of
validate's ``rom-running`` from the 1 ms rom.sh pause it plays to 11 ms between deletes:
the harness, not KVM. Here ``arm()`` and ``disarm()`` only take a lock; the thread is
started once and woken only when it must watch an earlier deadline than it does.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Kickable(Protocol):
    def request_stop(self) -> None: ...

    def kick(self) -> None: ...


class Watchdog:
    """``arm(vcpu, budget_s)`` before a KVM_RUN, ``disarm()`` after it; past the budget the
    watchdog calls ``vcpu.request_stop()`` and ``vcpu.kick()`` so that ``run()`` returns
    None, as the per-call Timer did."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._vcpu: Kickable | None = None
        self._deadline: float | None = None
        self._watching: float | None = None  # the deadline the thread sleeps until (None: none)
        self._thread: threading.Thread | None = None
        self._closed = False

    def arm(self, vcpu: Kickable, budget_s: float) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the watchdog is closed")
            self._vcpu, self._deadline = vcpu, time.monotonic() + budget_s
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="kvm-watchdog", daemon=True)
                self._thread.start()
            elif self._watching is None or self._watching > self._deadline:
                self._cond.notify()

    def disarm(self) -> None:
        """No wake-up: the thread finds nothing armed when its sleep ends."""
        with self._cond:
            self._vcpu = self._deadline = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._vcpu = self._deadline = None
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                deadline = self._deadline
                if deadline is None:
                    self._watching = None
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._watching = deadline
                    self._cond.wait(left)
                    continue
                vcpu, self._vcpu, self._deadline = self._vcpu, None, None
                if vcpu is not None:
                    vcpu.request_stop()
                    vcpu.kick()
