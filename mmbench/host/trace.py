"""``MMBENCH_TRACE_HOOKS=1``: every hook call on stderr, with the plugin that answered.

pluggy's ``add_hookcall_monitoring`` sees each call and its result but not which
implementation produced it, so while tracing each hookimpl's function is wrapped to note
that it ran and what it returned. Nothing is wrapped or monitored when tracing is off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pluggy

from mmbench.host.hookspecs import TRACE_ENV


def enabled() -> bool:
    return os.environ.get(TRACE_ENV, "") not in ("", "0")


def emit(line: str) -> None:
    print(f"mmbench: trace: {line}", file=sys.stderr)


def brief(value: Any) -> str:
    """A short rendering of a hook argument or result (never a whole bitmap)."""
    if value is None or isinstance(value, bool | int | float | str):
        return repr(value)
    if isinstance(value, list):  # every implementation's result
        return "[" + ", ".join(brief(v) for v in value) + "]"
    np = sys.modules.get("numpy")  # not imported: nothing can be an ndarray (start-up)
    if np is not None and isinstance(value, np.ndarray):
        return f"ndarray[{value.size}]"
    ident = getattr(value, "id", None)
    label = type(value).__name__
    return f"{label}#{ident}" if isinstance(ident, int) else label


def plugin_label(pm: pluggy.PluginManager, plugin: object) -> str:
    name = getattr(plugin, "name", None)
    own = name if isinstance(name, str) else pm.get_name(plugin)
    return f"{own} ({type(plugin).__name__})" if own != pm.get_name(plugin) else str(own)


def install(pm: pluggy.PluginManager) -> None:
    """Trace every call of ``pm``'s hooks from now on (call after registering plugins)."""
    answered: list[list[tuple[str, Any]]] = []

    for caller in vars(pm.hook).values():
        for impl in caller.get_hookimpls() if hasattr(caller, "get_hookimpls") else ():
            _wrap(impl, plugin_label(pm, impl.plugin), answered)

    def before(name: str, impls: Sequence[pluggy.HookImpl], kwargs: dict[str, Any]) -> None:
        answered.append([])

    def after(outcome: Any, name: str, impls: Sequence[Any], kwargs: dict[str, Any]) -> None:
        ran = answered.pop()
        args = ", ".join(f"{k}={brief(v)}" for k, v in kwargs.items() if k != "register")
        spec = getattr(pm.hook, name).spec
        if spec is not None and spec.opts.get("firstresult"):
            who = next((p for p, r in reversed(ran) if r is not None), None)
            by = f"answered by {who}" if who else "no answer"
        else:
            by = "called " + (", ".join(p for p, _ in ran) or "no plugin")
        result = "raised" if outcome.exception is not None else brief(outcome.get_result())
        emit(f"{name}({args}) -> {result} [{by}]")

    pm.add_hookcall_monitoring(before, after)


def _wrap(impl: pluggy.HookImpl, label: str, answered: list[list[tuple[str, Any]]]) -> None:
    inner: Callable[..., Any] = impl.function

    def traced(*args: Any) -> Any:
        result = inner(*args)
        if answered:
            answered[-1].append((label, result))
        return result

    setattr(impl, "function", traced)  # noqa: B010  (HookImpl.function is typed Final)
