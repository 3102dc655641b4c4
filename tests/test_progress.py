"""Progress within a run: on a terminal, passes done against planned per policy with an
ETA; nothing on pipes or with --json."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

from conftest import SMALL, mmbench

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONGER = ["-c", "2", "-m", "384", "--passes", "12", "--rom-interval-ms", "20"]


def _stderr_on_a_terminal(*args: str) -> tuple[int, str, str]:
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmbench", *args],
        stdout=subprocess.PIPE,
        stderr=sub,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
    )
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    proc.wait(timeout=120)
    os.close(main)
    err = ANSI.sub("", b"".join(chunks).decode(errors="replace")).replace("\r", "\n")
    return proc.returncode, out, err


def test_a_terminal_sees_passes_per_policy_with_an_eta(runs_dir):
    policies = ["--policy", "zap-all", "--policy", "zap-slot"]
    code, out, err = _stderr_on_a_terminal("run", "rom-access", *LONGER, *policies, "--reps", "2")
    assert code == 0, err
    rows = [line for line in err.splitlines() if " passes" in line]
    assert rows, err
    bar = re.compile(r"^zap-all\s.*\d+/48 passes, [0-2]/2 reps done.*ETA")
    assert any(bar.search(r) for r in rows), "\n".join(rows[:40])
    assert any(r.startswith("zap-slot ") for r in err.splitlines())  # a row per policy
    assert "saved:" in out and "passes, " not in out  # the bar is on stderr only


def test_no_progress_with_json_or_in_pipes(runs_dir):
    code, out, err = _stderr_on_a_terminal("run", "rom-access", *LONGER, "--json")
    assert code == 0 and "passes" not in err and out.lstrip().startswith("{")
    piped = mmbench("run", "rom-access", *SMALL, "--policy", "zap-slot")
    assert piped.returncode == 0 and piped.stderr == ""
