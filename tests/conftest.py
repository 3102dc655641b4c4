"""Shared fixtures: an isolated runs directory and a way to call the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMALL = ["-c", "2", "-m", "64", "--passes", "6", "--rom-interval-ms", "5"]


@pytest.fixture
def runs_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs"
    monkeypatch.setenv("MMBENCH_RUNS_DIR", str(d))
    return d


def mmbench(*args: str, env: dict | None = None, check: bool = False):
    """Run the installed ``mmbench`` console script in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "mmbench", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mmbench {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def run_json(*args: str, env: dict | None = None) -> dict:
    proc = mmbench("run", *args, "--json", env=env, check=True)
    return json.loads(proc.stdout)
