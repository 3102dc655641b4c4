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


def skip_module_without_dev_kvm(need: str = "the kvm backend needs a KVM host") -> None:
    """At a real-kernel test module's top: skip it, saying why, where /dev/kvm cannot be
    opened read-write (absent, or no permission)."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        pytest.skip(f"cannot open /dev/kvm ({exc.strerror}): {need}", allow_module_level=True)


@pytest.fixture(scope="session", autouse=True)
def _bytecode_cache_for_cli_subprocesses(tmp_path_factory):
    """The tests start the CLI in several hundred subprocesses. Where
    PYTHONDONTWRITEBYTECODE is set (it is on these machines) each one compiles mmbench's
    source again, 0.3-0.5 s apiece; they share a bytecode cache of their own instead, in
    the session's temporary directory (PYTHONPYCACHEPREFIX), so nothing is written into
    the checkout."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
        mp.setenv("PYTHONPYCACHEPREFIX", str(tmp_path_factory.mktemp("pycache")))
        yield


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


SCHEMAS = REPO / "mmbench" / "report"


def check_schema(doc: dict, schema_file: str) -> None:
    """``doc`` against one of the JSON Schemas shipped in the repo (jsonschema itself,
    not mmbench's own validator)."""
    import jsonschema

    schema = json.loads((SCHEMAS / schema_file).read_text())
    jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def run_json(*args: str, env: dict | None = None) -> dict:
    """``mmbench run ARGS --json``: the document and the stored record, each checked
    against its schema."""
    proc = mmbench("run", *args, "--json", env=env, check=True)
    doc = json.loads(proc.stdout)
    check_schema(doc, "run.schema.json")
    where = {**os.environ, **(env or {})}.get("MMBENCH_RUNS_DIR") or "work/log"
    if "--runs-dir" in args:
        where = args[args.index("--runs-dir") + 1]
    stored = Path(where) / doc["name"] / "result.json"
    if stored.exists():
        check_schema(json.loads(stored.read_text()), "result.schema.json")
    return doc
