"""What the core reads of every registered kind: one ``typing.Protocol`` each.

A plugin registers classes (``register(PolicyClass)``, see ``hookspecs``). The host checks each
against its Protocol when it is registered (``check``): every required attribute present
and of the right kind, every required method callable. An optional attribute has its
default here, in the Protocol's body (a value, ``DOC_LINE``, or a method marked
``@optional``); registration sets it on a class that lacks it, so the core reads plugin
attributes directly and never guesses with ``getattr(obj, name, default)``.

Nothing here imports the model at run time: annotations of attributes are real types
(checked), those of methods are strings (documentation for type checkers).
"""

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType, UnionType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, Union, get_args, get_origin

from mmbench.host import hookspecs
from mmbench.model.costs import Cost
from mmbench.workloads.base import Metric, Param

if TYPE_CHECKING:
    import argparse
    from pathlib import Path

    from mmbench.backends.vmapi import VmApi, VmSpec
    from mmbench.host.hooks import RunHooks
    from mmbench.model.kvm import Kvm
    from mmbench.model.vcpu import Vcpu
    from mmbench.workloads.base import WorkloadSpec

F = TypeVar("F", bound=Callable[..., Any])
DOC_LINE = "the first line of the class docstring"  # default of every ``description``
_OPTIONAL = "__mmbench_optional__"


def optional(fn: F) -> F:
    """Mark a Protocol method as optional: its body is the default a class gets."""
    setattr(fn, _OPTIONAL, True)
    return fn


class CostTable(Protocol):
    """An arch's cost table (``mmbench.model.costs.CostTable``): every primitive's charge in
    ns with its provenance; ``--costs FILE`` overlays a calibrated table."""

    name: str
    costs: Mapping[str, Cost]

    def with_overrides(self, path: "str | Path") -> "CostTable": ...
    def __getitem__(self, key: str) -> Cost: ...


class Policy(Protocol):
    """An invalidation policy (``mmbench_register_policies``), instantiated once per run with
    its options as keywords; its ``@hookimpl`` methods answer the selection hooks.

    ``paths`` declares the invalidation paths it serves; None derives them from the
    selection hooks it implements (``mmbench.run.paths``). ``year`` orders the default
    policies oldest first, so the baseline is the oldest mechanism; ``kernel`` names the
    kernel versions whose code it models (``mmbench list`` shows it)."""

    name: str
    archs: tuple[str, ...]
    description: str = DOC_LINE
    options: Mapping[str, Any] = MappingProxyType({})
    year: int = 9999
    kernel: str = ""
    paths: tuple[str, ...] | None = None

    def __init__(self, **options: Any) -> None: ...


class Arch(Protocol):
    """An arch backend (``mmbench_register_archs``): builds the MMU model and the guest's page
    tables, handles vCPU accesses, carries the cost table. Its selection-hook
    implementations are the kernel's defaults and must be ``@hookimpl(trylast=True)``.

    ``max_guest_bytes``: the largest guest the model holds; ``dirty_log``: it models
    ``KVM_MEM_LOG_DIRTY_PAGES``; ``region_granular``: faults and dirty-log clears come in
    whole 2 MiB regions (memslots of any 4 KiB multiple; dirty logging 2 MiB-aligned)."""

    name: str
    costs: CostTable
    max_guest_bytes: int
    description: str = DOC_LINE
    dirty_log: bool = False
    region_granular: bool = False

    def setup(self, kvm: "Kvm", areas_per_vcpu: list[list[tuple[int, int]]], pt_gfn: int) -> None:
        """Build ``kvm.mmu`` and the guest page tables (from ``pt_gfn`` on)."""

    def page_table_pages(self, areas_per_vcpu: list[list[tuple[int, int]]]) -> int:
        """Guest page-table pages the layout needs (guest RAM to reserve)."""

    def touch(self, kvm: "Kvm", vcpu: "Vcpu", gfn0: int, gfn1: int, write: bool) -> None:
        """A vCPU's access to ``[gfn0, gfn1)``: native where mapped, faults elsewhere."""


class Workload(Protocol):
    """A workload (``mmbench_register_workloads``): what guest and host user space do.

    ``paths``: the invalidation paths it drives, the first being the one it is about;
    ``backends``: where it runs (empty: everywhere); ``phases`` and ``default_plots``: what
    ``mmbench plot`` draws by default; ``headline``: the metrics its README figures quote
    (empty: the first metric) and ``probe``: small parameters that still drive every path,
    for ``mmbench list --costs`` to find which costs those figures depend on. Optional:
    ``policies_for(spec, arch, given)``, the policies its parameters select when
    ``--policy`` names none (memslot-perf's ``-q``), and ``report_lines(params, series)``,
    lines ``mmbench run`` prints under the table (a selftest's own output)."""

    name: str
    params: tuple[Param, ...]
    metrics: Mapping[str, Metric]
    description: str = DOC_LINE
    paths: tuple[str, ...] = ()
    default_arch: str = "x86-shadow"
    backends: tuple[str, ...] = ()
    phases: tuple[str, ...] = ()
    default_plots: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    probe: Mapping[str, Any] = MappingProxyType({})

    def layout(self, p: "WorkloadSpec", arch: Arch) -> "VmSpec":
        """The VM to build; raises ConfigError on sizes or addresses the arch cannot take."""

    def run(self, vm: "VmApi", p: "WorkloadSpec") -> dict[str, float]:
        """Build the VM, play the workload, return its metrics."""


class Monitor(Protocol):
    """A monitor (``mmbench_register_monitors``): observes a run's event hooks; ``checks``
    counts what it verified (reported with the run)."""

    name: str
    description: str = DOC_LINE
    checks: int = 0


class Backend(Protocol):
    """A backend (``mmbench_register_backends``): where the VM API is played.

    ``exclusive``: runs must not overlap (real time). The VM it returns may have ``close()``
    (called after the workload, on errors too) and ``costs_name`` (recorded instead of the
    unused cost table's name): ``close_vm`` and ``costs_name`` below read them."""

    name: str
    description: str = DOC_LINE
    exclusive: bool = False
    traces: bool = False  # records the kernel's tracepoints: its VMs have enable_trace()

    def available(self) -> tuple[bool, str]: ...
    def create_vm(
        self, hook: "RunHooks", arch: Arch, costs: CostTable, kernel: Any = None
    ) -> "VmApi":
        """A VM on this backend; ``kernel`` is the run's ``KernelConfig`` (the model runs
        under it; a real kernel records its own instead)."""

    @optional
    def default_arch(self) -> str | None:
        """The arch this backend runs; None: the workload's ``default_arch``."""
        return None

    @optional
    def supported_policies(self, names: list[str], paths: tuple[str, ...] = ()) -> list[str]:
        """Of the default policy ``names``, those this backend can run on ``paths``."""
        return list(names)

    @optional
    def check_policies(self, names: list[str], arch: str, paths: tuple[str, ...] = ()) -> None:
        """Raise ConfigError, before anything runs, for a policy it cannot run."""
        return None


class Command(Protocol):
    """A CLI subcommand (``mmbench_register_commands``)."""

    name: str
    help: str
    description: str = DOC_LINE

    def add_arguments(self, parser: "argparse.ArgumentParser") -> None: ...
    def run(self, args: "argparse.Namespace") -> int: ...


CONTRACTS: dict[str, type] = {
    "policy": Policy,
    "arch": Arch,
    "workload": Workload,
    "monitor": Monitor,
    "backend": Backend,
    "command": Command,
}


# -- the VM's optional parts (a VM is not registered, so it has no class to fill) ---------
def close_vm(vm: Any) -> None:
    """``vm.close()`` where the backend's VM has one (real-kernel VMs hold fds)."""
    close = getattr(vm, "close", None)
    if close is not None:
        close()


def costs_name(vm: Any, costs: CostTable) -> str:
    """The cost table a result records: the VM's ``costs_name`` (kvm: none applies)."""
    return getattr(vm, "costs_name", costs.name)


def kernel_config(vm: Any) -> dict[str, Any] | None:
    """The host kernel configuration a result records: the one the model ran under
    (sim), or what the backend read of the running kernel (kvm); None if unknown."""
    kernel = getattr(vm, "kernel", None)
    if kernel is None:
        return None
    return dict(kernel.as_dict() if hasattr(kernel, "as_dict") else kernel)


# -- checking and filling ---------------------------------------------------------------
class ContractError(Exception):
    """A registered class does not meet its kind's Protocol (the host adds who sent it)."""


def members(proto: type) -> tuple[dict[str, Any], dict[str, Callable[..., Any]]]:
    """A Protocol's attributes (name -> annotation) and methods (name -> function)."""
    attrs = dict(proto.__dict__.get("__annotations__", {}))
    methods = {
        k: v
        for k, v in proto.__dict__.items()
        if callable(v) and (not k.startswith("__") or k == "__getitem__")
    }
    return attrs, methods


def _fits(value: Any, tp: Any) -> bool:
    """Is ``value`` of the annotated kind (str, int, tuple[X, ...], Mapping, unions...)?"""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    origin = get_origin(tp)
    if origin in (Union, UnionType):
        return any(_fits(value, a) for a in get_args(tp))
    if origin is tuple:
        item = get_args(tp)[0]
        ok = isinstance(value, Sequence) and not isinstance(value, str)
        return ok and all(_fits(v, item) for v in value)
    if origin is not None and issubclass(origin, Mapping):
        return isinstance(value, Mapping) and all(_fits(v, get_args(tp)[1]) for v in value.values())
    if getattr(tp, "_is_protocol", False):
        return not problems(value, tp)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _kind_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def problems(obj: Any, proto: type) -> list[str]:
    """What ``obj`` (a class or an instance) lacks of ``proto``; optional members count
    only when present and of the wrong kind."""
    out = []
    attrs, methods = members(proto)
    for name, tp in attrs.items():
        if not hasattr(obj, name):
            if name not in proto.__dict__:
                out.append(f"has no {name!r} ({_kind_name(tp)})")
        elif not _fits(getattr(obj, name), tp):
            out.append(f"{name!r} is {getattr(obj, name)!r}, not {_kind_name(tp)}")
    for name, fn in methods.items():
        if not hasattr(obj, name):
            if not getattr(fn, _OPTIONAL, False):
                out.append(f"has no method {name}()")
        elif not callable(getattr(obj, name)):
            out.append(f"{name!r} is not a method")
    return out


def check(kind: str, cls: Any) -> None:
    """Raise ContractError unless ``cls`` meets the ``kind``'s Protocol."""
    found = problems(cls, CONTRACTS[kind])
    if found:
        raise ContractError(f"{kind} {_label(cls)}: {'; '.join(found)}")


def fill_defaults(kind: str, cls: Any) -> None:
    """Give ``cls`` the documented default of every optional member it lacks."""
    proto = CONTRACTS[kind]
    attrs, methods = members(proto)
    for name in attrs:
        if name in proto.__dict__ and not hasattr(cls, name):
            value = proto.__dict__[name]
            if value is DOC_LINE:
                doc = (cls.__doc__ or "").strip()
                value = doc.splitlines()[0] if doc else ""
            setattr(cls, name, value)
    for name, fn in methods.items():
        if getattr(fn, _OPTIONAL, False) and not hasattr(cls, name):
            setattr(cls, name, fn)


def _label(cls: Any) -> str:
    name = getattr(cls, "name", None)
    qual = getattr(cls, "__qualname__", type(cls).__qualname__)
    return f"{name!r} ({qual})" if isinstance(name, str) else qual


# -- the hook marker --------------------------------------------------------------------
@functools.cache
def hook_specs() -> dict[str, inspect.Signature]:
    """Every hookspec's name and signature."""
    return {
        name: inspect.signature(fn)
        for name, fn in vars(hookspecs).items()
        if hasattr(fn, hookspecs.SPEC_MARK)
    }


def implemented_hooks(obj: Any) -> list[str]:
    """The hooks ``obj`` (a class, instance or module) implements with ``@hookimpl``: what
    pluggy will call, never a same-named attribute without the marker."""
    return [n for n in dir(obj) if n.startswith("mmbench_") and hasattr(getattr(obj, n), _IMPL)]


def marker_problems(obj: Any, kind: str | None = None) -> list[str]:
    """``mmbench_*`` attributes pluggy would silently ignore or reject: a hook without
    ``@hookimpl``, a name that is no hook (misspelled), parameters the hook does not
    pass; and an arch default that is not ``trylast``. Of a module, only functions count
    (it may import modules named ``mmbench_*``)."""
    specs = hook_specs()
    firstresult = {n for n, fn in vars(hookspecs).items() if _opts(fn, hookspecs.SPEC_MARK)}
    out = []
    for name in dir(obj):
        value = getattr(obj, name)
        if not name.startswith("mmbench_") or (
            inspect.ismodule(obj) and not inspect.isfunction(value)
        ):
            continue
        if name not in specs:
            out.append(f"{name} is no mmbench hook (misspelled?)")
        elif not hasattr(value, _IMPL):
            out.append(f"{name} lacks @hookimpl, so pluggy would ignore it")
        else:
            params = [p for p in inspect.signature(value).parameters if p != "self"]
            extra = sorted(set(params) - set(specs[name].parameters))
            if extra:
                out.append(f"{name} takes {', '.join(extra)}, which the hook does not pass")
            elif kind == "arch" and name in firstresult and not _opts(value, _IMPL, "trylast"):
                out.append(f"{name} is an arch default: mark it @hookimpl(trylast=True)")
    return out


_IMPL = hookspecs.IMPL_MARK


def _opts(fn: Any, mark: str, key: str = "firstresult") -> bool:
    return bool((getattr(fn, mark, None) or {}).get(key))
