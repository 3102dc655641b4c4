"""The kernel's own account of an invalidation: tracepoints in a private tracefs instance.

``--trace`` on ``--backend kvm`` makes a tracefs instance ``instances/mmbench-PID``, so
nothing else tracing on the host is disturbed, enables the ``kvmmmu`` tracepoints of the
workload's paths there, on the monotonic clock that ``time.perf_counter_ns`` reads, and
reads what each timed host operation (a memslot delete, a teardown) emitted. The
tracepoints are system-wide, so each line records its task's TGID (``options/record-tgid``)
and only this process's count: on a shared host other VMs zap too. The
instance is removed when the run ends, on errors too; one left behind by a process that
was SIGKILLed is removed by the next run (its PID is gone).
"""

from __future__ import annotations

import bisect
import contextlib
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mmbench.errors import ConfigError

TRACEFS = Path("/sys/kernel/tracing")
PREFIX = "mmbench-"
BUFFER_KB = 16384  # per CPU: one delete of a 16 GiB shadow-paged guest is ~10^4 events

# kvm_mmu_prepare_zap_page: one per sp zapped (__kvm_mmu_prepare_zap_page, mmu.c);
# kvm_mmu_zap_all_fast: one per fast invalidate (kvm_mmu_zap_all_fast);
# kvm_mmu_get_page: one per sp allocated or reused (kvm_mmu_get_shadow_page)
PATH_EVENTS: dict[str, tuple[str, ...]] = {
    "memslot-delete": ("kvm_mmu_prepare_zap_page", "kvm_mmu_zap_all_fast", "kvm_mmu_get_page"),
    "teardown": ("kvm_mmu_prepare_zap_page",),
    "reclaim": ("kvm_mmu_prepare_zap_page", "kvm_mmu_get_page"),
    "dirty-log-stop": ("kvm_mmu_prepare_zap_page", "kvm_mmu_split_huge_page"),
    # kvm:kvm_unmap_hva_range: one per kvm_mmu_notifier_invalidate_range_start (kvm_main.c)
    "mmu-notifier": ("kvm:kvm_unmap_hva_range", "kvm_mmu_prepare_zap_page"),
}
SYSTEM = "kvmmmu"
LINE = re.compile(
    r"^\s*.+?-\d+\s+(?:\(\s*(?P<tgid>\d+|-+)\)\s+)?\[\d+\]\s+(?:\S+\s+)?"
    r"(?P<ts>\d+\.\d+):\s+(?P<event>\w+):"
)


def tracefs_root() -> Path:
    """The mounted tracefs, or a one-line refusal saying how to mount it."""
    if not (TRACEFS / "instances").is_dir():
        raise ConfigError(
            "--trace",
            f"tracefs is not mounted at {TRACEFS} (mount -t tracefs nodev {TRACEFS}, as root)",
        )
    if not (TRACEFS / "events" / SYSTEM).is_dir():
        raise ConfigError("--trace", f"this kernel has no {SYSTEM} tracepoints (kvm not loaded?)")
    return TRACEFS


def remove_stale(root: Path) -> list[str]:
    """Remove instances left by mmbench processes that no longer run; returns their names."""
    gone = []
    for inst in (root / "instances").glob(PREFIX + "*"):
        pid = inst.name[len(PREFIX) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                inst.rmdir()
                gone.append(inst.name)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A thread's wake-ups and when it next got a CPU (``track_thread``): sched_wakeup is
# recorded in the waker's context and sched_switch in the previous task's, so these lines
# carry other TGIDs; the kernel-side filters keep only the tracked thread's.
WAKE_EVENTS = ("sched_wakeup", "sched_switch")


@dataclass
class Window:
    """What one timed operation emitted: counts per tracepoint, the first and last event's
    timestamp (s), and the tracked thread's wake-ups (woken, back on a CPU) inside it."""

    counts: Counter[str]
    first: float
    last: float
    wakeups: list[tuple[float, float]]


class TraceInstance:
    """One private tracefs instance with the tracepoints of ``paths`` enabled, and with
    ``track_thread``, that thread's wake-ups (per span, ``windows``)."""

    def __init__(self, paths: tuple[str, ...], track_thread: int | None = None) -> None:
        root = tracefs_root()
        remove_stale(root)
        names = tuple(dict.fromkeys(e for p in paths for e in PATH_EVENTS.get(p, ())))
        self.events = tuple(n.split(":")[-1] for n in names)  # as the trace lines name them
        self._dirs = [n.replace(":", "/") if ":" in n else f"{SYSTEM}/{n}" for n in names]
        missing = [d for d in self._dirs if not (root / "events" / d).is_dir()]
        if missing:
            raise ConfigError(
                "--trace", f"this kernel lacks tracepoint {missing[0].replace('/', ':')}"
            )
        n = 0
        while (root / "instances" / f"{PREFIX}{os.getpid()}-{n}").exists():
            n += 1
        self.dir = root / "instances" / f"{PREFIX}{os.getpid()}-{n}"
        self.dir.mkdir()
        try:
            self._write("tracing_on", "0")
            self._write("trace_clock", "mono")  # CLOCK_MONOTONIC, as time.perf_counter_ns
            self._write("buffer_size_kb", str(BUFFER_KB))
            self._write("options/record-tgid", "1")  # whose VM: see take()
            for d in self._dirs:
                self._write(f"events/{d}/enable", "1")
            if track_thread is not None:
                self._write("events/sched/sched_wakeup/filter", f"pid == {track_thread}")
                self._write("events/sched/sched_switch/filter", f"next_pid == {track_thread}")
                for e in WAKE_EVENTS:
                    self._write(f"events/sched/{e}/enable", "1")
            self._write("tracing_on", "1")
        except BaseException:
            self.close()
            raise

    def _write(self, name: str, value: str) -> None:
        (self.dir / name).write_text(value)

    def clear(self) -> None:
        """Empty the buffer (``echo > trace``): what follows belongs to the next operation."""
        self._write("trace", "")

    def _read(self) -> str:
        """The buffer's text; the buffer is emptied."""
        self._write("tracing_on", "0")
        text = (self.dir / "trace").read_text()
        self.clear()
        self._write("tracing_on", "1")
        return text

    def _parse(self, text: str) -> tuple[list[tuple[float, str]], list[tuple[float, float]], int]:
        """This process's events of ``events`` (timestamp s, name), the tracked thread's
        wake-ups (woken, back on a CPU), and the events lost to a full buffer."""
        me = str(os.getpid())
        events: list[tuple[float, str]] = []
        wakeups: list[tuple[float, float]] = []
        lost = 0
        woke: float | None = None
        for line in text.splitlines():
            if line.startswith("#"):
                m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", line)
                if m:
                    lost = int(m.group(2)) - int(m.group(1))
                continue
            m = LINE.match(line)
            if not m:
                continue
            if m.group("event") in WAKE_EVENTS:  # the tracked thread's, by filter
                ts = float(m.group("ts"))
                if m.group("event") == "sched_wakeup":
                    woke = ts
                elif woke is not None:  # back on a CPU after that wake-up
                    wakeups.append((woke, ts))
                    woke = None
                continue
            if m.group("tgid") not in (None, me):
                continue
            if m.group("event") in self.events:
                events.append((float(m.group("ts")), m.group("event")))
        return events, wakeups, lost

    def take(self) -> tuple[Counter[str], float, float, int]:
        """The events since ``clear``: counts per tracepoint, first and last timestamp
        (s, monotonic), and events lost to a full buffer; the buffer is emptied. Events of
        other processes (another VM on the host) are not counted."""
        events, _, lost = self._parse(self._read())
        counts = Counter(e for _, e in events)
        first, last = (events[0][0], events[-1][0]) if events else (0.0, 0.0)
        return counts, first, last, lost

    @staticmethod
    def now() -> float:
        """The trace clock now (s): ``mono`` is CLOCK_MONOTONIC, as ``time.monotonic``."""
        return time.monotonic()

    def windows(self, spans: list[tuple[float, float]]) -> tuple[list[Window], int]:
        """Read the buffer once and split it by ``spans`` (trace-clock s): per span, the
        counts of its events, their first and last timestamp and the tracked thread's
        wake-ups in it; and the events lost. Reading once at the end keeps the run's
        timing (a read per operation took ~50 ms and stretched rom.sh's rounds)."""
        events, wakeups, lost = self._parse(self._read())
        ev_ts = [t for t, _ in events]
        wk_ts = [w for w, _ in wakeups]
        out = []
        for t0, t1 in spans:
            inside = events[bisect.bisect_left(ev_ts, t0) : bisect.bisect_right(ev_ts, t1)]
            woken = wakeups[bisect.bisect_left(wk_ts, t0) : bisect.bisect_right(wk_ts, t1)]
            first, last = (inside[0][0], inside[-1][0]) if inside else (0.0, 0.0)
            out.append(Window(Counter(e for _, e in inside), first, last, woken))
        return out, lost

    def close(self) -> None:
        """Disable and remove the instance (idempotent)."""
        if self.dir.exists():
            with contextlib.suppress(OSError):
                self._write("tracing_on", "0")
            with contextlib.suppress(OSError):
                self.dir.rmdir()
