"""Named runs on disk, like mmtests' work/log/<name>: one directory per run.

Nothing half-written is ever seen, and nothing a run leaves behind can hide another:
- a run reserves its name when it *starts* (``.reserved-NAME``, created with O_EXCL and
  holding the writer's pid), so a second run with that name is refused before it runs,
  and a runs dir that cannot be written is found out before the workload, not after;
- the record is written into a temporary directory (``.tmp-PID-NAME-*``) and renamed into
  place, so a killed writer leaves only dot-entries, which listing skips and the next
  writer removes once their process is gone;
- every record read back is validated against ``result.schema.json`` (a versioned JSON
  Schema, checked with ``jsonschema``): a damaged run is reported as damaged, with the
  reason, and never stops the others from being listed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError

RUNS_DIR_ENV = "MMBENCH_RUNS_DIR"
RESULT_FILE = "result.json"
SCHEMA_VERSION = 3
SCHEMA_FILE = Path(__file__).with_name("result.schema.json")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_RESERVED = ".reserved-"
_TMP = ".tmp-"


class DamagedRun(ConfigError):
    """A stored run that cannot be read back: ``reason`` says why (exit 2, one line)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__("run", f"{name!r} is damaged: {reason}")
        self.reason = reason


def runs_dir(override: str | None = None) -> Path:
    if override is not None and not override.strip():
        raise ConfigError("--runs-dir", "must not be empty")
    return Path(override or os.environ.get(RUNS_DIR_ENV) or "work/log")


def check_name(name: str, field: str = "--name") -> None:
    """A run name is one path component: no separators, no leading dot (so ``show``
    reads only inside the runs dir)."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            field, f"{name!r}: use letters, digits and . _ + - (at most 128, no leading dot)"
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner(path: Path) -> int | None:
    """The pid a dot-entry belongs to (in its name or, for a reservation, its content)."""
    try:
        if path.name.startswith(_TMP):
            return int(path.name.split("-")[1])
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError, IndexError):
        return None


def remove_stale(root: Path) -> None:
    """Drop the temporary directories and reservations of writers that died (SIGKILL,
    OOM, power loss); those of live processes stay."""
    for entry in [*root.glob(_TMP + "*"), *root.glob(_RESERVED + "*")]:
        pid = _owner(entry)
        if pid is not None and _pid_alive(pid):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


@dataclass
class Reservation:
    """A run name held by this process until the record is saved or the run fails."""

    root: Path
    name: str

    def save(self, record: dict[str, Any]) -> Path:
        """Write ``record`` as the run, atomically; returns the run directory."""
        record = {"schema_version": SCHEMA_VERSION, **record}
        validate(record, self.name)  # never store what could not be read back
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP}{os.getpid()}-{self.name}-", dir=self.root))
        try:
            with open(tmp / RESULT_FILE, "w", encoding="utf-8") as f:
                json.dump(record, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a run is for everyone to read
            final = self.root / self.name
            os.rename(tmp, final)  # atomic on one filesystem
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


@contextmanager
def reserve(root: Path, name: str) -> Iterator[Reservation]:
    """Hold run ``name`` in ``root`` for the duration of a run.

    Refuses (ConfigError, before anything runs) a bad name, a name taken by a stored run
    or by a live writer, and a runs dir that cannot be created or written. The
    reservation goes when the block ends, saved or not.
    """
    check_name(name)
    marker = root / f"{_RESERVED}{name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale(root)
        if (root / name).exists():
            raise ConfigError("--name", f"run {name!r} already exists in {root}")
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        if not root.is_dir():
            raise ConfigError("--runs-dir", f"{root}: exists and is not a directory") from None
        raise ConfigError(
            "--name", f"run {name!r} is being written by another mmbench (pid {_owner(marker)})"
        ) from None
    except OSError as exc:
        raise ConfigError(
            "--runs-dir", f"{root}: cannot store runs there ({exc.strerror or exc})"
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield Reservation(root, name)
    finally:
        marker.unlink(missing_ok=True)


@cache
def _validator() -> Any:
    """The schema's validator (jsonschema imported on first use). The schema itself is
    checked against its metaschema by the tests, not by every run (50 ms)."""
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return jsonschema.validators.validator_for(schema)(schema)


def prepare() -> None:
    """Build the schema validator now (jsonschema's import is 0.1-0.3 s here): a parallel
    run's parent calls it while its workers compute, so that ``save`` finds it built."""
    _validator()


def validate(record: Any, name: str) -> None:
    """Raise DamagedRun naming the first field that breaks the schema."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator().iter_errors(record))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.path)
        raise DamagedRun(name, f"{RESULT_FILE}{where}: {error.message}"[:300])


def load(root: Path, name: str) -> dict[str, Any]:
    """Read run ``name`` back; a missing run lists the runs there, a damaged one says why."""
    check_name(name, "RUN")
    path = root / name / RESULT_FILE
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        known = ", ".join(list_runs(root)) or "none"
        raise ConfigError("RUN", f"no run {name!r} in {root} (runs: {known})") from None
    except UnicodeDecodeError as exc:
        raise DamagedRun(name, f"{RESULT_FILE} is not UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise DamagedRun(name, f"{RESULT_FILE}: {exc.strerror or exc}") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = f"{RESULT_FILE} is not JSON ({exc.msg}, line {exc.lineno})"
        raise DamagedRun(name, reason) from None
    validate(record, name)
    return record


def load_same_workload(root: Path, names: list[str]) -> list[dict[str, Any]]:
    """Runs ``names``, refused unless they ran one workload: their metrics and series
    only line up then (``compare``, ``plot``)."""
    records = [load(root, name) for name in names]
    workloads = sorted({r["workload"] for r in records})
    if len(workloads) > 1:
        raise ConfigError("RUN", f"runs of different workloads: {', '.join(workloads)}")
    return records


def list_runs(root: Path) -> list[str]:
    """Every stored run's name, damaged ones included; dot-entries (reservations and
    temporary directories of writers) are not runs."""
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if not p.name.startswith(".") and p.is_dir() and (p / RESULT_FILE).exists()
    )
