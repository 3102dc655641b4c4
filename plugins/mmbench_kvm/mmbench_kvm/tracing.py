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

import contextlib
import os
import re
from collections import Counter
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


class TraceInstance:
    """One private tracefs instance with the tracepoints of ``paths`` enabled."""

    def __init__(self, paths: tuple[str, ...]) -> None:
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
            self._write("tracing_on", "1")
        except BaseException:
            self.close()
            raise

    def _write(self, name: str, value: str) -> None:
        (self.dir / name).write_text(value)

    def clear(self) -> None:
        """Empty the buffer (``echo > trace``): what follows belongs to the next operation."""
        self._write("trace", "")

    def take(self) -> tuple[Counter[str], float, float, int]:
        """The events since ``clear``: counts per tracepoint, first and last timestamp
        (s, monotonic), and events lost to a full buffer; the buffer is emptied. Events of
        other processes (another VM on the host) are not counted."""
        self._write("tracing_on", "0")
        text = (self.dir / "trace").read_text()
        self.clear()
        self._write("tracing_on", "1")
        counts: Counter[str] = Counter()
        me = str(os.getpid())
        first = last = 0.0
        lost = 0
        for line in text.splitlines():
            if line.startswith("#"):
                m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", line)
                if m:
                    lost = int(m.group(2)) - int(m.group(1))
                continue
            m = LINE.match(line)
            if m and m.group("tgid") not in (None, me):
                continue
            if m and m.group("event") in self.events:
                ts = float(m.group("ts"))
                first = ts if not counts else first
                last = ts
                counts[m.group("event")] += 1
        return counts, first, last, lost

    def close(self) -> None:
        """Disable and remove the instance (idempotent)."""
        if self.dir.exists():
            with contextlib.suppress(OSError):
                self._write("tracing_on", "0")
            with contextlib.suppress(OSError):
                self.dir.rmdir()
