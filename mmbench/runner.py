"""Resolve a run request against the registry and execute it, one policy at a time.

A run is one workload with one parameter set, on one arch and backend, for each of a list
of policies (the first is the comparison baseline). Policies are independent runs of
the model, so they go to separate processes when there are cores for it.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from mmbench import paths
from mmbench.errors import ConfigError
from mmbench.plugins import Host, get_host, run_manager
from mmbench.workloads.base import WorkloadSpec, resolve_params


@dataclass(frozen=True)
class PolicySpec:
    """``NAME`` or ``NAME:opt=value,opt=value`` as typed after ``--policy``."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options)


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _convert_option(name: str, key: str, raw: str, default: Any) -> Any:
    field_name = f"--policy {name}:{key}"
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(field_name, f"expected true or false, got {raw!r}")
    try:
        return type(default)(raw)
    except ValueError:
        raise ConfigError(field_name, f"expected {type(default).__name__}, got {raw!r}") from None


def parse_policy(text: str, host: Host) -> PolicySpec:
    name, _, opts = text.partition(":")
    cls = host.registry.get("policy", name)
    known: dict[str, Any] = dict(getattr(cls, "options", {}))
    options = []
    for item in filter(None, opts.split(",")):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ConfigError(f"--policy {name}", f"option {item!r} must be key=value")
        if key not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"--policy {name}", f"unknown option {key!r} (options: {allowed})")
        options.append((key, _convert_option(name, key, raw, known[key])))
    return PolicySpec(name, tuple(options))


@dataclass
class RunRequest:
    workload: str
    params: dict[str, Any] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    arch: str = "x86-shadow"
    backend: str = "sim"
    costs_file: str | None = None
    check: bool = False  # attach the invariants monitor
    jobs: int = 0  # 0: one process per policy, up to the CPU count


@dataclass
class ResolvedRun:
    request: RunRequest
    workload: Any
    spec: WorkloadSpec
    policies: list[PolicySpec]
    arch_name: str


def resolve(req: RunRequest, host: Host | None = None) -> ResolvedRun:
    """Check every name and value before anything runs or is written."""
    host = host or get_host()
    workload_cls = host.registry.get("workload", req.workload)
    arch_cls = host.registry.get("arch", req.arch)
    backend = host.registry.get("backend", req.backend)()
    ok, why = backend.available()
    if not ok:
        raise ConfigError("--backend", f"backend {req.backend!r} is unavailable here: {why}")
    spec = resolve_params(workload_cls.params, req.params)
    names = req.policies or paths.default_policies(host.registry, workload_cls, req.arch)
    names = sorted(names, key=lambda n: _default_order(n)) if not req.policies else names
    policies = [parse_policy(p, host) for p in names]
    for p in policies:
        paths.check_pair(host.registry, workload_cls, req.arch, p.name)
    workload = workload_cls()
    if hasattr(workload, "layout"):
        workload.layout(spec, arch_cls())  # size and address checks, before any run
    if req.costs_file:
        arch_cls.costs.with_overrides(req.costs_file)
    return ResolvedRun(req, workload, spec, policies, arch_cls.name)


# The seeds' chronology: the baseline first, as in their Before/After tables.
_SEED_ORDER = (
    "zap-all",
    "fast-invalidate",
    "zap-slot",
    "collapse-sync",
    "lazy-collapse",
    "recover-in-place",
    "s2-unmap",
    "s2-elide",
)


def _default_order(name: str) -> tuple[int, str]:
    return (_SEED_ORDER.index(name), name) if name in _SEED_ORDER else (len(_SEED_ORDER), name)


def run_one(req: RunRequest, policy: PolicySpec) -> dict[str, Any]:
    """One policy on the model; returns ``{"policy", "arch", "backend", "metrics", ...}``."""
    host = get_host()
    arch = host.registry.get("arch", req.arch)()
    costs = arch.costs.with_overrides(req.costs_file) if req.costs_file else arch.costs
    policy_obj = host.registry.get("policy", policy.name)(**dict(policy.options))
    monitors = [host.registry.get("monitor", "invariants")()] if req.check else []
    pm = run_manager(arch, policy_obj, *monitors)
    vm = host.registry.get("backend", req.backend)().create_vm(pm.hook, arch, costs)
    workload = host.registry.get("workload", req.workload)()
    spec = resolve_params(workload.params, req.params)
    metrics = workload.run(vm, spec)
    return {
        "policy": policy.label,
        "arch": arch.name,
        "backend": vm.backend,
        "costs": costs.name,
        "metrics": metrics,
        "series": {k: [list(_plain(x)) for x in v] for k, v in vm.series().items()},
        "checks": sum(getattr(m, "checks", 0) for m in monitors),
    }


def _plain(item: tuple) -> list:
    out = []
    for x in item:
        out.append(x if isinstance(x, int | float | str | dict) else float(x))
    return out


def execute(run: ResolvedRun) -> list[dict[str, Any]]:
    """Run every policy; in parallel processes when several cores are free."""
    req = run.request
    jobs = req.jobs or min(len(run.policies), os.cpu_count() or 1)
    if jobs <= 1 or len(run.policies) == 1:
        return [run_one(req, p) for p in run.policies]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, req, p) for p in run.policies]
        return [f.result() for f in futures]
