"""Which invalidation path a policy applies to, and which paths a workload exercises.

A policy for memslot delete means nothing to a teardown run. A policy may say so with a
``paths`` attribute; otherwise its paths follow from the selection hooks it implements
with ``@hookimpl`` (a same-named method without the marker is refused at registration:
pluggy would never call it).
A workload names the paths it drives with ``paths``, the first being the one it is about:
the default policies are those of that path, and a composed policy (``zap-slot+lru-scan``)
must have a part on it; every part must fit one of the workload's paths. Defaults run in
the order the mechanisms appeared (a policy's ``year``), so the baseline is the oldest.
"""

from __future__ import annotations

from typing import Any

from mmbench.errors import ConfigError
from mmbench.host.contracts import implemented_hooks

HOOK_PATHS = {
    "mmbench_flush_shadow_memslot": "memslot-delete",
    "mmbench_dirty_log_enable": "dirty-log-start",
    "mmbench_dirty_log_disable": "dirty-log-stop",
    "mmbench_flush_shadow_all": "teardown",
    "mmbench_reclaim": "reclaim",
    "mmbench_unmap_gfn_range": "mmu-notifier",
}


def policy_paths(cls: Any) -> tuple[str, ...]:
    """``cls.paths`` if declared, else the paths of the selection hooks it implements."""
    if cls.paths is not None:
        return tuple(cls.paths)
    marked = implemented_hooks(cls)
    return tuple(path for hook, path in HOOK_PATHS.items() if hook in marked)


def workload_paths(cls: Any) -> tuple[str, ...]:
    return tuple(cls.paths)


def applies(policy_cls: Any, workload_cls: Any, arch: str, primary: bool = False) -> bool:
    """Does the policy fit the arch and (one of, or the primary of) the workload's paths?"""
    wanted = workload_paths(workload_cls)[: 1 if primary else None]
    on_path = not wanted or bool(set(policy_paths(policy_cls)) & set(wanted))
    return arch in policy_cls.archs and on_path


def chronology(registry: Any, name: str) -> tuple[int, str]:
    """Sort key: the year the mechanism appeared (unknown: last), then the name."""
    return (registry.get("policy", name).year, name)


def pairs(registry: Any, workload_cls: Any) -> str:
    """Every (arch, policy) pair that exists for the workload, for error messages."""
    out = []
    for name in registry.names("policy"):
        cls = registry.get("policy", name)
        if any(applies(cls, workload_cls, a) for a in cls.archs):
            out.append(f"{name} ({', '.join(cls.archs)})")
    return "; ".join(out) or "none"


def default_policies(registry: Any, workload_cls: Any, arch: str) -> list[str]:
    names = [
        n
        for n in registry.names("policy")
        if applies(registry.get("policy", n), workload_cls, arch, primary=True)
    ]
    names.sort(key=lambda n: chronology(registry, n))
    if not names:
        raise ConfigError(
            "--arch",
            f"no policy for workload {workload_cls.name!r} on arch {arch!r}"
            f" (pairs that exist: {pairs(registry, workload_cls)})",
        )
    return names


def check_pair(registry: Any, workload_cls: Any, arch: str, policy: str) -> None:
    if not applies(registry.get("policy", policy), workload_cls, arch):
        raise ConfigError(
            "--policy",
            f"{policy!r} does not apply to workload {workload_cls.name!r} on arch {arch!r}"
            f" (pairs that exist: {pairs(registry, workload_cls)})",
        )


def check_policy(registry: Any, workload_cls: Any, arch: str, label: str, parts: list[str]):
    """Every part of a (composed) policy fits; some part serves the workload's main path."""
    for part in parts:
        check_pair(registry, workload_cls, arch, part)
    wanted = workload_paths(workload_cls)
    if wanted and not any(
        applies(registry.get("policy", p), workload_cls, arch, primary=True) for p in parts
    ):
        fits = [
            n
            for n in registry.names("policy")
            if applies(registry.get("policy", n), workload_cls, arch, primary=True)
        ]
        raise ConfigError(
            "--policy",
            f"{workload_cls.name} needs a {wanted[0]} policy in {label!r} ({', '.join(fits)});"
            " compose with + (e.g. zap-slot+lru-scan)",
        )
