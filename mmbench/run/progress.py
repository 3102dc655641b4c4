"""Progress within a run: each task (one repetition of one policy) publishes the guest
passes it has done against those planned so far, as two doubles in shared memory.

Workers write their own slot (no lock: a torn read shows a value one pass old, and the
reader only draws it), the terminal's bar reads every slot a few times a second. A pass
is milliseconds to seconds of the model's work, so one store per pass costs nothing
measurable; nothing is sent over pipes and nothing is written when no one watches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Reporter = Callable[[float, float], None]

_board: Any = None  # this process's view of the shared slots (set in workers and parent)


class Board:
    """``(done, total)`` per task, in memory shared with the worker processes."""

    def __init__(self, tasks: int) -> None:
        import multiprocessing  # a bar is drawn: only then (start-up of every other run)

        self.cells = multiprocessing.Array("d", 2 * tasks, lock=False)
        self.tasks = tasks

    def read(self, task: int) -> tuple[float, float]:
        return self.cells[2 * task], self.cells[2 * task + 1]

    def finish(self, task: int) -> None:
        total = max(self.cells[2 * task + 1], 1.0)
        self.cells[2 * task], self.cells[2 * task + 1] = total, total


def share(cells: Any) -> None:
    """Use ``cells`` (a ``Board``'s) in this process: a worker's initializer calls it."""
    global _board
    _board = cells


def reporter(task: int | None) -> Reporter | None:
    """The callback a run uses to publish task ``task``'s progress (None: no one reads)."""
    cells = _board
    if cells is None or task is None:
        return None

    def report(done: float, total: float) -> None:
        cells[2 * task] = done
        cells[2 * task + 1] = total

    return report
