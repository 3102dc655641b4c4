"""Which invalidation path a policy applies to, and which paths a workload exercises.

A policy for memslot delete means nothing to a teardown run. A policy may say so with a
``paths`` attribute; otherwise its paths follow from the selection hooks it implements.
A workload names the paths it drives with ``paths``. The runner uses both for the default
policy set and to refuse pairs that do not exist, listing the ones that do.
"""

from __future__ import annotations

from typing import Any

from mmbench.errors import ConfigError

HOOK_PATHS = {
    "mmbench_flush_shadow_memslot": "memslot-delete",
    "mmbench_dirty_log_enable": "dirty-log-start",
    "mmbench_dirty_log_disable": "dirty-log-stop",
    "mmbench_flush_shadow_all": "teardown",
}


def policy_paths(cls: Any) -> tuple[str, ...]:
    """``cls.paths`` if declared, else the paths of the selection hooks it implements."""
    declared = getattr(cls, "paths", None)
    if declared is not None:
        return tuple(declared)
    return tuple(path for hook, path in HOOK_PATHS.items() if callable(getattr(cls, hook, None)))


def workload_paths(cls: Any) -> tuple[str, ...]:
    return tuple(getattr(cls, "paths", ()))


def applies(policy_cls: Any, workload_cls: Any, arch: str) -> bool:
    wanted = workload_paths(workload_cls)
    on_path = not wanted or bool(set(policy_paths(policy_cls)) & set(wanted))
    return arch in getattr(policy_cls, "archs", ()) and on_path


def pairs(registry: Any, workload_cls: Any) -> str:
    """Every (arch, policy) pair that exists for the workload, for error messages."""
    out = []
    for name in registry.names("policy"):
        cls = registry.get("policy", name)
        if any(applies(cls, workload_cls, a) for a in getattr(cls, "archs", ())):
            out.append(f"{name} ({', '.join(cls.archs)})")
    return "; ".join(out) or "none"


def default_policies(registry: Any, workload_cls: Any, arch: str) -> list[str]:
    names = [
        n
        for n in registry.names("policy")
        if applies(registry.get("policy", n), workload_cls, arch)
    ]
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
