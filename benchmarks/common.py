"""Helpers shared by the asv suite. Keep them stable: editing a benchmark's source starts a
new history. They use only APIs present since mmbench's first commit, so the suite runs
against older commits; a workload or policy a commit lacks raises NotImplementedError,
which asv reports as skipped."""

from __future__ import annotations

import os


def registry():
    from mmbench.plugins import get_host

    return get_host().registry


def require(kind: str, name: str) -> None:
    if name not in registry().entries.get(kind, {}):
        raise NotImplementedError(f"this commit has no {kind} {name!r}")


def run_model(
    workload: str, params: dict, policy: str, arch: str = "x86-shadow", backend: str = "sim"
) -> dict:
    """One run of one policy on the model (or another backend); returns its metrics."""
    from mmbench.plugins import get_host
    from mmbench.runner import PolicySpec, RunRequest, parse_policy, run_one

    require("workload", workload)
    require("arch", arch)
    name = policy.split(":")[0]
    require("policy", name)
    spec = parse_policy(policy, get_host()) if ":" in policy else PolicySpec(policy)
    if backend != "sim":
        require("backend", backend)
    req = RunRequest(
        workload=workload, params=dict(params), policies=[policy], arch=arch, backend=backend
    )
    return run_one(req, spec)["metrics"]


def have_dev_kvm() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)
