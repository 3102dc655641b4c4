"""Named runs on disk, like mmtests' work/log/<name>: one directory per run.

A run directory is written under a temporary name and renamed into place, so a run that
fails or is interrupted leaves no partial directory and never touches earlier runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError

RUNS_DIR_ENV = "MMBENCH_RUNS_DIR"
RESULT_FILE = "result.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def runs_dir(override: str | None = None) -> Path:
    return Path(override or os.environ.get(RUNS_DIR_ENV) or "work/log")


def check_name(name: str, root: Path) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(
            "--name", f"{name!r}: use letters, digits and . _ + - (at most 128, no leading dot)"
        )
    if (root / name).exists():
        raise ConfigError("--name", f"run {name!r} already exists in {root}")


def _remove_stale_tmp(root: Path) -> None:
    """Drop temporary directories left by writers that were killed (SIGKILL, power)."""
    for d in root.glob(".tmp-*"):
        try:
            pid = int(d.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, IndexError, PermissionError):
            continue


def save(root: Path, name: str, record: dict[str, Any]) -> Path:
    """Write ``record`` as run ``name`` atomically; returns the run directory."""
    check_name(name, root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{name}-", dir=root))
    try:
        with open(tmp / RESULT_FILE, "w") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        final = root / name
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a run is for everyone to read
        os.rename(tmp, final)  # atomic on one filesystem; fails if someone took the name
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load(root: Path, name: str) -> dict[str, Any]:
    path = root / name / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        known = ", ".join(list_runs(root)) or "none"
        raise ConfigError("run", f"no run {name!r} in {root} (runs: {known})") from None


def list_runs(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / RESULT_FILE).is_file())
