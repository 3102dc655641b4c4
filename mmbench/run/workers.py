"""The process pool of a parallel run: one worker process per policy, up to the cores.

Imported only when a run has several tasks and cores for them (``runner.execute``):
``concurrent.futures`` and ``multiprocessing`` are start-up cost a one-policy run, ``list``
or ``--help`` does not need.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from mmbench.run import progress
from mmbench.run.policy_spec import PolicySpec
from mmbench.run.runner import RunRequest, attempt


def run_parallel(
    req: RunRequest,
    tasks: list[tuple[PolicySpec, int]],
    jobs: int,
    slot: dict[tuple[str, int], int | None],
    cells: Any,
    finished: Callable[[str, int, dict[str, Any]], None],
    while_waiting: Callable[[], None] | None = None,
) -> None:
    """Every task on a pool of ``jobs`` processes; ``finished(label, rep, result)`` as each
    ends. ``cells``: the progress board's shared slots (None: no one watches).
    ``while_waiting()`` runs in a thread of this process once the workers exist (a fork
    pool starts them all at the first submit, so no thread is forked mid-import); it
    would otherwise be idle until the first result."""
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init, initargs=(cells,))
    try:
        futures = {
            pool.submit(attempt, req, p, i, slot[(p.label, i)]): (p.label, i) for p, i in tasks
        }
        if while_waiting is not None:
            threading.Thread(target=_quietly, args=(while_waiting,), daemon=True).start()
        for fut in as_completed(futures):
            finished(*futures[fut], fut.result())
    except BaseException:  # Ctrl-C or bad input: stop the others now
        _terminate_workers(pool)
        raise
    pool.shutdown()


def _quietly(work: Callable[[], None]) -> None:
    """Ahead-of-time work: a failure is left to the caller, who does the work again when
    it needs the result and reports it there."""
    with contextlib.suppress(Exception):
        work()


def _worker_init(cells: Any = None) -> None:
    """A worker must not outlive a killed ``mmbench run`` (SIGKILL, OOM), and Ctrl-C is
    the parent's to handle: a terminal sends SIGINT to the whole process group, and a
    worker that caught it would only report a KeyboardInterrupt and take the next task.
    ``cells``: the progress board it writes to (None: no one watches)."""
    progress.share(cells)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _terminate_workers(pool: ProcessPoolExecutor) -> None:
    """Drop the queued tasks and end the running ones at once: their results would be
    thrown away (nothing of an interrupted run is saved), so waiting only delays exit."""
    pool.shutdown(wait=False, cancel_futures=True)
    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=5)
