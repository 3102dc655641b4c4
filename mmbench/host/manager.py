"""The plugin host: built-ins, entry points of group ``mmbench``, blocking, the registry.

Built-in workloads and monitors are modules of this package. Policies and arch backends
live under ``plugins/`` as their own packages and arrive through the same entry-point
group a third-party distribution would use.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from mmbench.errors import ConfigError
from mmbench.host import hookspecs

DEFAULT_PLUGINS: tuple[str, ...] = (
    "mmbench.backends.sim",
    "mmbench.workloads.rom_access",
    "mmbench.workloads.mmu_pressure",
    "mmbench.workloads.dirty_log",
    "mmbench.workloads.teardown",
    "mmbench.monitors.invariants",
    "mmbench.report.plots",
)
BLOCK_ENV = "MMBENCH_BLOCK_PLUGINS"
KINDS = ("policy", "arch", "workload", "monitor", "backend", "command")


@dataclass
class Registry:
    """What every plugin registered, by kind and name, with the providing plugin."""

    entries: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in KINDS})
    provider: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, kind: str, obj: Any, plugin: str) -> None:
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{plugin}: registered {kind} {obj!r} has no 'name'")
        if name in self.entries[kind]:
            first = self.provider[(kind, name)]
            raise ConfigError(
                "plugins", f"{kind} {name!r} registered twice: by {first} and by {plugin}"
            )
        self.entries[kind][name] = obj
        self.provider[(kind, name)] = plugin

    def get(self, kind: str, name: str) -> Any:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise ConfigError(
                f"--{kind}", f"unknown {kind} {name!r} (available: {self.names_str(kind)})"
            ) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def names_str(self, kind: str) -> str:
        return ", ".join(self.names(kind)) or "none"


def blocked_names() -> set[str]:
    """Plugin names blocked through ``MMBENCH_BLOCK_PLUGINS`` (comma separated)."""
    return {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))


class Host:
    """The host plugin manager and the registry it filled."""

    def __init__(self, extra_plugins: Iterable[object] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        for name in blocked_names():
            self.pm.set_blocked(name)
        for modname in DEFAULT_PLUGINS:
            if self.pm.is_blocked(modname):
                continue
            try:
                module = importlib.import_module(modname)
            except ImportError as exc:
                raise ImportError(f"built-in plugin {modname} failed to import: {exc}") from exc
            self.pm.register(module, name=modname)
        try:
            self.pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        except Exception as exc:  # re-raise with the plugin's name, as pytest does
            raise ImportError(f"mmbench plugin failed to load: {exc!r}") from exc
        for plugin in extra_plugins:
            self.pm.register(plugin)
        self.pm.check_pending()
        self.registry = Registry()
        self._collect()

    def _collect(self) -> None:
        hooks = {
            "policy": "mmbench_register_policies",
            "arch": "mmbench_register_archs",
            "workload": "mmbench_register_workloads",
            "monitor": "mmbench_register_monitors",
            "backend": "mmbench_register_backends",
            "command": "mmbench_register_commands",
        }
        for kind, hookname in hooks.items():
            caller = getattr(self.pm.hook, hookname)
            for impl in caller.get_hookimpls():
                plugin_name = _plugin_name(self.pm, impl.plugin)

                def register(obj: Any, _kind: str = kind, _p: str = plugin_name) -> None:
                    self.registry.add(_kind, obj, _p)

                impl.function(register=register)

    def plugins(self) -> list[tuple[str, list[str]]]:
        """(plugin name, hooks it implements) for every loaded plugin."""
        out = []
        for plugin in self.pm.get_plugins():
            name = _plugin_name(self.pm, plugin)
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append((name, hooks))
        return sorted(out)

    def dist_of(self, plugin_name: str) -> str | None:
        """The distribution an entry-point plugin came from, for ``mmbench list``."""
        for plugin, dist in self.pm.list_plugin_distinfo():
            if _plugin_name(self.pm, plugin) == plugin_name:
                return f"{dist.project_name} {dist.version}"
        return None


_host: Host | None = None


def get_host() -> Host:
    """The process-wide host, built on first use."""
    global _host
    if _host is None:
        _host = Host()
    return _host


def reset_host() -> None:
    """Forget the host so the next ``get_host()`` re-discovers plugins (tests, installs)."""
    global _host
    _host = None


def run_manager(*plugins: object) -> pluggy.PluginManager:
    """A fresh manager for one run: event hooks only, with the run's arch, policy, monitors.

    Order matters for ``firstresult`` hooks: pluggy calls the last registered first, so
    pass the arch backend before the policy.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    return pm
