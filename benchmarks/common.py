"""Helpers shared by the asv suite. Keep them stable: editing a benchmark's source starts a
new history. asv runs this suite against older commits too, so each helper uses the public
run API (``mmbench.run.run_once``) where the commit has it and falls back to the module
paths of older layouts (``mmbench.host.manager`` + ``mmbench.run.runner``, then
``mmbench.plugins`` + ``mmbench.runner``); a workload or policy a commit lacks raises
NotImplementedError, which asv reports as skipped."""

from __future__ import annotations

import importlib
import os


def _first_module(*names: str):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise NotImplementedError(f"this commit has none of {', '.join(names)}")


def get_host():
    return _first_module("mmbench.host.manager", "mmbench.plugins").get_host()


def registry():
    return get_host().registry


def require(kind: str, name: str) -> None:
    if name not in registry().entries.get(kind, {}):
        raise NotImplementedError(f"this commit has no {kind} {name!r}")


def run_model(
    workload: str, params: dict, policy: str, arch: str = "x86-shadow", backend: str = "sim"
) -> dict:
    """One run of one policy on the model (or another backend); returns its metrics."""
    require("workload", workload)
    require("arch", arch)
    require("policy", policy.split(":")[0])
    if backend != "sim":
        require("backend", backend)
    try:
        from mmbench.run import run_once
    except ImportError:  # a commit before the public run API
        pass
    else:
        return resolved(run_once(workload, dict(params), policy, arch=arch, backend=backend))
    runner = _first_module("mmbench.run.runner", "mmbench.runner")
    spec = runner.parse_policy(policy, get_host()) if ":" in policy else runner.PolicySpec(policy)
    req = runner.RunRequest(
        workload=workload, params=dict(params), policies=[policy], arch=arch, backend=backend
    )
    return resolved(runner.run_one(req, spec))


def resolved(result: dict) -> dict:
    """A result's metrics to what the model resolves: its clock counts whole ns, so a
    value in ms has 6 decimals (186.394225, not 186.39422499999998 from ns / 1e6)."""
    return {k: round(float(v), 6) for k, v in result["metrics"].items()}


def have_dev_kvm() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


def mmbench_cli(args: list[str], env: dict[str, str] | None = None) -> None:
    """``mmbench ARGS`` as a user types it: a fresh interpreter (``python -m mmbench``),
    output discarded; a failure raises with the command's last stderr line."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mmbench", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"mmbench {' '.join(args)}: exit {done.returncode}: {last}")
