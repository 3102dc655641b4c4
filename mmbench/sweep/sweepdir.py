"""A sweep's directory: ``RUNS_DIR/NAME/`` is a runs dir of its own, one stored run per
point (``p0000``...), plus ``index.json``, what the sweep is and which points are done.

Every write is atomic, so a sweep killed at any moment loses no finished point: a point
is saved by the store (reserved, written under a temporary name, renamed), and the index
is rewritten under a temporary name and renamed over the old one after each point. The
index is a convenience, not the truth: a point is done when its run is stored and reads
back, so ``--resume`` after a kill between the two writes still skips it. One writer at
a time holds ``.lock`` (O_EXCL, with its pid; a dead writer's lock is taken over).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError
from mmbench.report import store
from mmbench.sweep.spec import Sweep

INDEX = "index.json"
LOCK = ".lock"
FORMAT = 1


def point_plan(sweep: Sweep) -> list[dict[str, Any]]:
    """What the index records of each point: its id and swept values."""
    return [{"id": p.id, "values": p.values} for p in sweep.points]


def _write_json(path: Path, doc: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_index(sweep_dir: Path, field: str = "DIR") -> dict[str, Any]:
    try:
        doc = json.loads((sweep_dir / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(field, f"{sweep_dir}: not a sweep (no {INDEX})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(field, f"{sweep_dir / INDEX}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "points" not in doc:
        raise ConfigError(field, f"{sweep_dir / INDEX}: not a sweep index of format {FORMAT}")
    return doc


def done_points(sweep_dir: Path, ids: list[str]) -> set[str]:
    """The points whose run is stored and reads back (a damaged one runs again)."""
    done = set()
    for pid in ids:
        try:
            store.load(sweep_dir, pid)
        except ConfigError:
            continue
        done.add(pid)
    return done


@contextmanager
def _lock(sweep_dir: Path) -> Iterator[None]:
    marker = sweep_dir / LOCK
    for _ in range(2):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(marker.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and store._pid_alive(pid):
                raise ConfigError(
                    "--name", f"{sweep_dir} is being written by another mmbench (pid {pid})"
                ) from None
            marker.unlink(missing_ok=True)  # its writer died
    else:
        raise ConfigError("--name", f"{sweep_dir}: cannot take {LOCK}")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


class SweepDir:
    """The open sweep directory of one ``mmbench sweep``: saves points, keeps the index."""

    def __init__(self, path: Path, sweep: Sweep, name: str, index: dict[str, Any]) -> None:
        self.path, self.sweep, self.name, self.index = path, sweep, name, index

    def save_point(self, record: dict[str, Any]) -> Path:
        with store.reserve(self.path, record["name"]) as slot:
            run = slot.save(record)
        self.index["done"] = sorted({*self.index["done"], record["name"]})
        self.index["updated"] = _now()
        _write_json(self.path / INDEX, self.index)
        return run


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextmanager
def open_sweep(root: Path, name: str, sweep: Sweep, resume: bool) -> Iterator[SweepDir]:
    """The sweep directory ``root/name``: new (refused if it exists, unless ``resume``)
    or resumed (refused unless it holds this sweep's points). Checked before any point
    runs; a new directory holds its index before the first point is submitted."""
    store.check_name(name)
    path = root / name
    plan = point_plan(sweep)
    if resume and path.is_dir():
        index = read_index(path, "--resume")
        if index["points"] != json.loads(json.dumps(plan)):
            raise ConfigError(
                "--resume",
                f"{path} holds another sweep's points ({len(index['points'])}); the file now"
                f" gives {len(plan)} different ones (use a new --name)",
            )
        with _lock(path):
            store.remove_stale(path)
            index["done"] = sorted(done_points(path, [p["id"] for p in plan]))
            yield SweepDir(path, sweep, name, index)
        return
    if path.exists():
        hint = " (--resume runs its missing points)" if path.is_dir() else ""
        raise ConfigError("--name", f"{path} already exists{hint}")
    try:
        root.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except FileExistsError:
        raise ConfigError("--name", f"{path} already exists") from None
    except OSError as exc:
        raise ConfigError("--runs-dir", f"{root}: cannot store a sweep there ({exc})") from None
    index = {
        "format": FORMAT,
        "name": name,
        "file": str(sweep.path),
        "created": _now(),
        "updated": _now(),
        "workload": sweep.workload,
        "axes": sweep.axes,
        "policies": sweep.policies,
        "reps": sweep.reps,
        "claims": [c.text for c in sweep.claims],
        "sweep": sweep.doc,
        "points": plan,
        "done": [],
    }
    with _lock(path):
        _write_json(path / INDEX, index)
        yield SweepDir(path, sweep, name, index)
