"""The plugin host: built-ins, entry points of group ``mmbench``, blocking, the registry.

Built-in workloads and monitors are modules of this package (``DEFAULT_PLUGINS``). Policies
and arch backends live under ``plugins/`` as their own distributions and arrive through the
entry-point group a third-party distribution uses. Load order is explicit: built-ins, then
entry points in ``importlib.metadata`` order, then plugins the caller passes.

Every plugin is named by where it came from (``Origin``): its distribution, version and
entry point, or the built-in module. Two kinds of fault, two outcomes:
- a plugin that *crashes* (fails to import, or its registration hook raises) is skipped
  with one warning line naming it and how to block it (``plugin_skipped``): someone else's
  broken install must not stop ``mmbench list`` or a run of the other plugins;
- a plugin that registers a class breaking its contract (``mmbench.host.contracts``: a
  missing attribute, an ``mmbench_*`` method without ``@hookimpl`` or naming no hook) is
  refused with one line naming it (``plugin_failed``), and ``mmbench`` exits 2: run
  without it, its policy's name would silently run something else.
``MMBENCH_BLOCK_PLUGINS`` takes entry-point or distribution names (comma separated) and
warns about a name that matches no plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pluggy

from mmbench.errors import ConfigError
from mmbench.host import contracts, hookspecs, trace

DEFAULT_PLUGINS: tuple[str, ...] = (
    "mmbench.backends.sim",
    "mmbench.workloads.rom_access",
    "mmbench.workloads.mmu_pressure",
    "mmbench.workloads.dirty_log",
    "mmbench.workloads.teardown",
    "mmbench.workloads.host_unmap",
    "mmbench.workloads.memslot_perf",
    "mmbench.monitors.invariants",
    "mmbench.report.plot_command",
)
BLOCK_ENV = "MMBENCH_BLOCK_PLUGINS"
KINDS = ("policy", "arch", "workload", "monitor", "backend", "command")
REGISTER_HOOKS = {kind: f"mmbench_register_{kind}s" for kind in KINDS}
REGISTER_HOOKS["policy"] = "mmbench_register_policies"


@dataclass(frozen=True)
class Origin:
    """Where a plugin came from: a distribution's entry point, a built-in, or the caller."""

    plugin: str  # the name it is registered under
    dist: str = ""  # distribution name and version; "" for built-ins and caller plugins
    entry_point: str = ""  # "name = module"

    @property
    def source(self) -> str:
        """For ``mmbench list``: the distribution and version, or "built-in"."""
        if self.dist:
            return self.dist
        return "built-in" if self.plugin in DEFAULT_PLUGINS else "registered by the caller"

    def __str__(self) -> str:
        if self.dist:
            return f"plugin {self.dist} (entry point {self.entry_point})"
        return f"{self.source} plugin {self.plugin}"


def _one_line(what: str, exc: BaseException | None) -> str:
    why = f": {type(exc).__name__}: {exc}" if exc is not None else ""
    return " ".join(f"{what}{why}".split())


def plugin_failed(origin: Origin, what: str, exc: BaseException | None = None) -> NoReturn:
    """A plugin breaks its contract: refuse it (one line, exit 2)."""
    raise ConfigError(str(origin), _one_line(what, exc))


def plugin_skipped(origin: Origin, what: str, exc: BaseException | None = None) -> None:
    """A plugin crashed while loading or registering: go on without it, saying so once."""
    warn(f"{origin} skipped: {_one_line(what, exc)} (to block it: {BLOCK_ENV}={origin.plugin})")


def warn(message: str) -> None:
    print(f"mmbench: warning: {message}", file=sys.stderr)


@dataclass
class Registry:
    """What every plugin registered, by kind and name, with the providing plugin."""

    entries: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: {} for k in KINDS})
    provider: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, kind: str, obj: Any, plugin: str) -> None:
        name = obj.name  # a str: the contract was checked
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


class Host:
    """The host plugin manager and the registry it filled."""

    def __init__(self, extra_plugins: Iterable[object] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.origins: dict[str, Origin] = {}
        self.blocked = blocked_names()
        self._block_matched: set[str] = set()
        for name in self.blocked:
            self.pm.set_blocked(name)
        for modname in DEFAULT_PLUGINS:
            if self.pm.is_blocked(modname):
                self._block_matched.add(modname)
            else:
                self._load(Origin(modname), lambda m=modname: importlib.import_module(m))
        self._load_entry_points()
        for name in sorted(self.blocked - self._block_matched):
            warn(f"{BLOCK_ENV}: no plugin or distribution is named {name!r}")
        for i, plugin in enumerate(extra_plugins):
            self._register(plugin, Origin(getattr(plugin, "__name__", f"caller-{i}")))
        self.pm.check_pending()
        self.registry = Registry()
        self.tracing = trace.enabled()
        for kind in KINDS:
            self._collect(kind)

    def _load_entry_points(self) -> None:
        """Group ``mmbench`` of every installed distribution, as pluggy's
        ``load_setuptools_entrypoints`` does, but each plugin keeps its origin."""
        for dist in importlib.metadata.distributions():
            eps = [ep for ep in dist.entry_points if ep.group == hookspecs.PROJECT]
            if not eps:
                continue  # (reading every distribution's METADATA costs 0.2 s at start-up)
            dist_name = dist.metadata["Name"]
            for ep in eps:
                hit = self.blocked & {ep.name, dist_name}
                if hit:
                    self._block_matched |= hit
                    continue
                if self.pm.get_plugin(ep.name) is not None:
                    continue  # the same distribution seen twice on sys.path
                label = f"{dist_name} {dist.version}"
                self._load(Origin(ep.name, label, f"{ep.name} = {ep.value}"), ep.load)

    def _load(self, origin: Origin, load: Callable[[], object]) -> None:
        try:
            plugin = load()
        except Exception as exc:
            plugin_skipped(origin, "failed to import", exc)
            return
        self._register(plugin, origin)

    def _register(self, plugin: object, origin: Origin) -> None:
        found = contracts.marker_problems(plugin)
        if found:
            plugin_failed(origin, "; ".join(found))
        if self.pm.is_registered(plugin):
            first = self.origins[self.pm.get_name(plugin) or ""]
            plugin_failed(origin, f"its module is already loaded as {first}")
        try:
            self.pm.register(plugin, name=origin.plugin)
        except (pluggy.PluginValidationError, ValueError) as exc:
            plugin_failed(origin, "refused by pluggy", exc)
        self.origins[origin.plugin] = origin

    def _collect(self, kind: str) -> None:
        """Call each plugin's registration hook for ``kind``, checking what it registers."""
        for impl in getattr(self.pm.hook, REGISTER_HOOKS[kind]).get_hookimpls():
            origin = self.origins.get(impl.plugin_name)
            if origin is None:  # skipped while registering another kind
                continue

            def register(obj: Any, _origin: Origin = origin) -> None:
                self._admit(kind, obj, _origin)

            try:
                impl.function(register=register)
            except ConfigError:
                raise
            except Exception as exc:
                self._drop(origin)
                plugin_skipped(origin, f"{REGISTER_HOOKS[kind]} raised", exc)

    def _drop(self, origin: Origin) -> None:
        """Forget a plugin whose registration crashed, and whatever it registered so far."""
        for (kind, name), provider in list(self.registry.provider.items()):
            if provider == origin.plugin:
                del self.registry.provider[(kind, name)]
                del self.registry.entries[kind][name]
        plugin = self.pm.get_plugin(origin.plugin)
        if plugin is not None:
            self.pm.unregister(plugin)
        del self.origins[origin.plugin]

    def _admit(self, kind: str, obj: Any, origin: Origin) -> None:
        """One registered class: its contract, its hook markers, then the registry."""
        try:
            contracts.check(kind, obj)
        except contracts.ContractError as exc:
            plugin_failed(origin, str(exc))
        found = contracts.marker_problems(obj, kind)
        if found:
            plugin_failed(origin, f"{kind} {obj.name!r}: {'; '.join(found)}")
        contracts.fill_defaults(kind, obj)
        self.registry.add(kind, obj, origin.plugin)
        if self.tracing:
            trace.emit(f"{REGISTER_HOOKS[kind]} [{origin}] registered {kind} {obj.name!r}")

    def plugins(self) -> list[tuple[Origin, list[str]]]:
        """(origin, hooks it implements) for every loaded plugin, by name."""
        out = []
        for plugin in self.pm.get_plugins():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append((self.origins[self.pm.get_name(plugin) or ""], hooks))
        return sorted(out, key=lambda item: item[0].plugin)


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
    """A fresh manager for one run: event hooks only, with the run's arch, policies and
    monitors, in any order.

    Order does not decide who answers a ``firstresult`` hook: an arch backend's
    implementations are ``trylast`` (the registry refuses one that is not), so a policy's
    answer comes first and the arch's is the fallback. Between two policies answering
    the same hook (refused by ``parse_policy``) pluggy would call the last registered first.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    pm.check_pending()
    if trace.enabled():
        trace.install(pm)
    return pm
