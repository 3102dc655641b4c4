"""Which workloads' headline figures depend on which constants of an arch's cost table.

A figure depends on a constant when changing the constant changes the figure, so this
asks the model: every workload that runs on the arch is run on the sim backend with its
default policies at its ``probe`` parameters (small sizes that still drive its paths),
once with the table as it is and once per constant with that constant doubled; a
``headline`` metric (``Workload.headline``, else the first metric) that moves under any
policy marks the dependency. An absent (0 ns) constant depends on nothing. The probe
sizes are small, so a constant that matters only at scale (a lock-break threshold that a
1 GiB guest never reaches) can be missed; none is invented.
"""

from __future__ import annotations

import math
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmbench.errors import ConfigError
from mmbench.host.manager import Host, get_host
from mmbench.run.assemble import run_once
from mmbench.run.runner import RunRequest, resolve

FACTOR = 2.0  # the perturbation: each constant doubled in turn


@dataclass
class Probe:
    """One workload on the arch: its default policies' headline figures."""

    workload: str
    params: dict[str, Any]
    policies: list[Any]
    headline: tuple[str, ...]
    base: dict[str, dict[str, float]] = field(default_factory=dict)  # policy -> metric


def headline_of(wl: Any) -> tuple[str, ...]:
    return tuple(wl.headline) or tuple(wl.metrics)[:1]


def probes(arch: str, host: Host | None = None) -> list[Probe]:
    """The workloads that run on ``arch`` (on sim), each at its probe parameters."""
    host = host or get_host()
    out = []
    for name in host.registry.names("workload"):
        wl = host.registry.get("workload", name)
        if wl.backends and "sim" not in wl.backends:
            continue
        req = RunRequest(name, params=dict(wl.probe), arch=arch)
        try:
            run = resolve(req, host)
        except ConfigError:
            continue  # the workload does not run on this arch (or has no policy for it)
        out.append(Probe(name, dict(wl.probe), run.policies, headline_of(wl)))
    return out


def _figures(p: Probe, arch: str, costs_file: str | None) -> dict[str, dict[str, float]]:
    out = {}
    for pol in p.policies:
        r = run_once(p.workload, p.params, pol, arch=arch, costs_file=costs_file)
        out[pol.label] = {m: float(r["metrics"].get(m, math.nan)) for m in p.headline}
    return out


def _moved(a: float, b: float) -> bool:
    if math.isnan(a) and math.isnan(b):
        return False
    return not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _perturbed(arch: str, name: str, ns: float, found: list[Probe]) -> dict[str, list[str]]:
    """The headline metrics each probe moves when ``name`` is doubled."""
    out = {}
    with tempfile.TemporaryDirectory(prefix="mmbench-costdeps-") as tmp:
        path = Path(tmp, f"{name}.yaml")
        doc = {"name": f"{arch}, {name} x{FACTOR:g}"}
        doc["costs"] = {name: {"ns": ns * FACTOR, "provenance": "mmbench list --costs"}}
        path.write_text(yaml.safe_dump(doc))
        for p in found:
            got = _figures(p, arch, str(path))
            moved = sorted(
                {m for pol, ms in p.base.items() for m, v in ms.items() if _moved(v, got[pol][m])}
            )
            if moved:
                out[p.workload] = moved
    return out


def dependencies(
    arch: str, host: Host | None = None, jobs: int | None = None
) -> dict[str, dict[str, list[str]]]:
    """For each constant of ``arch``'s table, ``{workload: [headline metrics it moves]}``;
    the perturbed runs are spread over ``jobs`` processes (default: one per CPU)."""
    host = host or get_host()
    table = host.registry.get("arch", arch).costs
    found = []
    for p in probes(arch, host):
        try:
            p.base = _figures(p, arch, None)
        except ConfigError:
            continue  # refused when it runs (x86-shadow models no dirty logging)
        found.append(p)
    deps: dict[str, dict[str, list[str]]] = {name: {} for name in table.costs}
    todo = [(n, c.ns) for n, c in table.costs.items() if c.ns != 0 and found]
    jobs = min(jobs or os.cpu_count() or 1, len(todo)) or 1
    if jobs == 1:
        for name, ns in todo:
            deps[name] = _perturbed(arch, name, ns, found)
        return deps
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_perturbed, arch, n, ns, found): n for n, ns in todo}
        for fut, name in futures.items():
            deps[name] = fut.result()
    return deps
