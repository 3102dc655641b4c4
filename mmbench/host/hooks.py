"""``RunHooks``: a typed facade over a per-run plugin manager's ``pm.hook`` (as tox 4 has).

Each event hook is declared once here from its hookspec, so ``kvm.hook.mmbench_reclaim(
kvm=kvm, nr_to_zap=n)`` has the spec's parameter and result types for a type checker:
a ``firstresult`` hook returns one answer (or None), any other returns every
implementation's result. Calls keep pluggy's semantics because they *are* pluggy's: the
instance holds each ``HookCaller`` under the hook's name, which shadows the (non-data)
descriptor below, so a hook call on the fault path costs no extra Python frame.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

import pluggy

from mmbench.host import hookspecs as hs

P = ParamSpec("P")
R = TypeVar("R")


class _Hook(Generic[P, R]):
    """Declares hook ``spec`` on RunHooks; only reached when no HookCaller shadows it."""

    firstresult = False

    def __init__(self, spec: Callable[P, R]) -> None:
        self.name = spec.__name__

    def _caller(self, obj: RunHooks) -> Any:
        return getattr(obj.pm.hook, self.name)


class _First(_Hook[P, R]):
    firstresult = True

    @overload
    def __get__(self, obj: None, owner: type) -> _First[P, R]: ...
    @overload
    def __get__(self, obj: RunHooks, owner: type) -> Callable[P, R | None]: ...
    def __get__(self, obj: RunHooks | None, owner: type) -> Any:
        return self if obj is None else self._caller(obj)


class _All(_Hook[P, R]):
    @overload
    def __get__(self, obj: None, owner: type) -> _All[P, R]: ...
    @overload
    def __get__(self, obj: RunHooks, owner: type) -> Callable[P, list[R]]: ...
    def __get__(self, obj: RunHooks | None, owner: type) -> Any:
        return self if obj is None else self._caller(obj)


class RunHooks:
    """The event hooks of one run, typed; ``pm`` is the run's plugin manager."""

    # selection hooks (firstresult: the policy's answer, else the arch's trylast default)
    mmbench_flush_shadow_memslot = _First(hs.mmbench_flush_shadow_memslot)
    mmbench_flush_shadow_all = _First(hs.mmbench_flush_shadow_all)
    mmbench_reclaim = _First(hs.mmbench_reclaim)
    mmbench_dirty_log_enable = _First(hs.mmbench_dirty_log_enable)
    mmbench_dirty_log_disable = _First(hs.mmbench_dirty_log_disable)
    mmbench_unmap_gfn_range = _First(hs.mmbench_unmap_gfn_range)
    # observer hooks (every monitor sees every event)
    mmbench_vm_created = _All(hs.mmbench_vm_created)
    mmbench_vm_destroyed = _All(hs.mmbench_vm_destroyed)
    mmbench_memslot_created = _All(hs.mmbench_memslot_created)
    mmbench_memslot_deleted = _All(hs.mmbench_memslot_deleted)
    mmbench_memslot_flags_changed = _All(hs.mmbench_memslot_flags_changed)
    mmbench_dirty_log_cleared = _All(hs.mmbench_dirty_log_cleared)
    mmbench_page_fault = _All(hs.mmbench_page_fault)
    mmbench_mmu_pages_reclaimed = _All(hs.mmbench_mmu_pages_reclaimed)
    mmbench_mmu_notifier_invalidated = _All(hs.mmbench_mmu_notifier_invalidated)
    mmbench_workload_event = _All(hs.mmbench_workload_event)

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self.calls: dict[str, int] = {}  # selection hook -> times called this run
        for name, first in declared().items():
            caller = getattr(pm.hook, name)
            # selection hooks run once per invalidation, not per fault: counting them is
            # free, and says whether the run's policy was ever asked (observers: no wrapper)
            setattr(self, name, self._counted(name, caller) if first else caller)

    def _counted(self, name: str, caller: Callable[..., Any]) -> Callable[..., Any]:
        calls = self.calls
        calls[name] = 0

        def call(**kwargs: Any) -> Any:
            calls[name] += 1
            return caller(**kwargs)

        call.get_hookimpls = caller.get_hookimpls  # type: ignore[attr-defined]  # as pluggy's
        call.name = name  # type: ignore[attr-defined]
        return call

    def implemented(self, name: str) -> bool:
        """Does any plugin of the run implement hook ``name`` (skip costly arguments)?"""
        return bool(getattr(self.pm.hook, name).get_hookimpls())

    def plugins(self) -> list[object]:
        """The run's plugin objects: arch backend, policies, monitors."""
        return list(self.pm.get_plugins())

    def raised_in(self, exc: BaseException) -> str | None:
        """Which plugin's hook raised ``exc``: the innermost hookimpl frame of its
        traceback, as ``"mmbench_flush_shadow_memslot of zap-slot"``; None if no hook did."""
        impls = {}
        for name in declared():
            for impl in getattr(self.pm.hook, name).get_hookimpls():
                who = getattr(impl.plugin, "name", None) or type(impl.plugin).__name__
                impls[impl.function.__code__] = f"{name} of {who}"
        where = None
        tb = exc.__traceback__
        while tb is not None:
            where = impls.get(tb.tb_frame.f_code, where)
            tb = tb.tb_next
        return where


def declared() -> dict[str, bool]:
    """Every hook the facade declares, with whether it is ``firstresult``."""
    return {
        name: value.firstresult
        for name, value in vars(RunHooks).items()
        if isinstance(value, _Hook)
    }
