"""Run configs in YAML, like mmtests' config files: which workload, policies, arch,
backend, parameters and repetitions. Every error names the field and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError
from mmbench.host.manager import Host, get_host
from mmbench.model.sched import KernelConfig
from mmbench.run.runner import RunRequest, parse_policy, resolve
from mmbench.workloads.base import resolve_params
from mmbench.yamlfile import load_yaml

KEYS = {
    "workload": "workload name (required)",
    "params": "mapping of workload parameter -> value",
    "policies": "list of policy specs, the first is the baseline",
    "arch": "arch backend name",
    "backend": "backend name",
    "reps": "repetitions per policy (int >= 1)",
    "costs": "cost table YAML file, relative to the config",
    "check": "attach the invariants monitor (bool)",
    "kernel": "host kernel: mapping with preempt (none|voluntary|full), hz, host_cpus",
    "description": "free text",
}


def load_config(path: str | Path, host: Host | None = None, doc: Any = None) -> RunRequest:
    """Read and validate ``path``; returns the run it describes (nothing runs yet).
    ``doc``: the config already read (a sweep's point); ``path`` then names it in errors
    and is where relative file names start."""
    host = host or get_host()
    p = Path(path)
    where = str(p)
    doc = load_yaml(p, "--config") if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError(where, "expected a mapping with keys: " + ", ".join(KEYS))

    def field(key: str) -> str:
        return f"{where}: {key}"

    unknown = sorted(set(doc) - set(KEYS))
    if unknown:
        raise ConfigError(field(unknown[0]), f"unknown key (allowed: {', '.join(KEYS)})")
    if "workload" not in doc:
        raise ConfigError(
            field("workload"),
            f"missing (required; available: {host.registry.names_str('workload')})",
        )
    workload = _str(doc, "workload", field)
    if workload not in host.registry.entries["workload"]:
        raise ConfigError(
            field("workload"),
            f"unknown workload {workload!r} (available: {host.registry.names_str('workload')})",
        )
    params = doc.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(field("params"), "expected a mapping of parameter -> value")
    wl = host.registry.get("workload", workload)
    try:
        resolve_params(wl.params, params)
    except ConfigError as exc:
        raise ConfigError(field(f"params.{_param_key(exc.field, wl)}"), exc.message) from None
    policies = doc.get("policies", [])
    if not isinstance(policies, list) or not all(isinstance(x, str) for x in policies):
        raise ConfigError(field("policies"), "expected a list of policy names")
    for i, spec in enumerate(policies):
        try:
            parse_policy(spec, host)
        except ConfigError as exc:
            raise ConfigError(field(f"policies[{i}]"), exc.message) from None
    arch = _str(doc, "arch", field, wl.default_arch)
    backend = _str(doc, "backend", field, "sim")
    for kind, name in (("arch", arch), ("backend", backend)):
        if name not in host.registry.entries[kind]:
            raise ConfigError(
                field(kind), f"unknown {kind} {name!r} (available: {host.registry.names_str(kind)})"
            )
    reps = doc.get("reps", 1)
    if not isinstance(reps, int) or isinstance(reps, bool) or not 1 <= reps <= 1000:
        raise ConfigError(field("reps"), f"expected an integer 1..1000, got {reps!r}")
    check = doc.get("check", False)
    if not isinstance(check, bool):
        raise ConfigError(field("check"), f"expected true or false, got {check!r}")
    costs = doc.get("costs")
    if costs is not None:
        if not isinstance(costs, str):
            raise ConfigError(field("costs"), "expected a file name")
        costs = str((p.parent / costs).resolve())
        if not Path(costs).is_file():
            raise ConfigError(field("costs"), f"no such file: {costs}")
    kernel = doc.get("kernel") or {}
    if not isinstance(kernel, dict):
        raise ConfigError(field("kernel"), "expected a mapping with keys preempt, hz, host_cpus")
    try:
        KernelConfig.from_options(kernel)
    except ConfigError as exc:
        key = exc.field.removeprefix("--").replace("-", "_").removeprefix("kernel.")
        raise ConfigError(field(f"kernel.{key}"), exc.message) from None
    req = RunRequest(workload, dict(params), list(policies), arch, backend, costs, check, reps=reps)
    req.kernel = dict(kernel)
    try:
        resolve(req, host)  # sizes, addresses, arch/policy pairs: what a run would refuse
    except ConfigError as exc:
        key = _param_key(exc.field, wl)
        where_in = f"params.{key}" if key != exc.field else _top_key(exc.field)
        raise ConfigError(field(where_in), exc.message) from None
    return req


def _top_key(cli_field: str) -> str:
    names = {"--policy": "policies", "--arch": "arch", "--backend": "backend", "--costs": "costs"}
    return names.get(cli_field, cli_field)


def _str(doc: dict, key: str, field, default: str | None = None) -> str:
    val = doc.get(key, default)
    if not isinstance(val, str) or not val:
        raise ConfigError(field(key), f"expected a name (string), got {val!r}")
    return val


def _param_key(flag_field: str, wl: Any) -> str:
    """Map a CLI-style field (``-m/--mb``) back to the parameter name a config uses."""
    for prm in wl.params:
        if flag_field in (prm.field, prm.name, *prm.cli):
            return prm.name
    return flag_field
