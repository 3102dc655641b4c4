"""Assemble one run and play it: the one public way to do it (``from mmbench.run import ...``).

A run is an arch backend, its cost table (optionally overlaid by ``--costs FILE``), the
policy objects of one policy spec (``zap-slot+lru-scan:...``), monitors, all on a fresh
per-run plugin manager, and a backend VM whose hooks are that manager's (``RunHooks``).
``assemble`` builds that and returns the VM ready for a workload; ``run_once`` plays a
workload on it for one repetition and returns the result the runner records. The runner,
``mmbench validate``, the asv suite and the tests all go through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from mmbench.backends.vmapi import VmApi
from mmbench.host import contracts
from mmbench.host.contracts import Arch, CostTable, Monitor, Policy
from mmbench.host.hooks import RunHooks
from mmbench.host.manager import Host, get_host, run_manager
from mmbench.model.sched import KernelConfig
from mmbench.run.policy_spec import PolicySpec, parse_policy, policy_hooks
from mmbench.workloads.base import resolve_params


@dataclass
class AssembledRun:
    """One run's objects. ``vm`` is created but empty: a workload calls ``vm.create``.
    Use it as a context manager, or call ``close()``: real-kernel VMs hold fds."""

    vm: VmApi
    arch: Arch
    costs: CostTable
    policy: PolicySpec | None
    policies: list[Policy]
    monitors: list[Monitor]
    hooks: RunHooks

    @property
    def label(self) -> str:
        return self.policy.label if self.policy else ""

    def close(self) -> None:
        contracts.close_vm(self.vm)

    def __enter__(self) -> AssembledRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def as_policy_spec(policy: str | PolicySpec | None, host: Host) -> PolicySpec | None:
    return parse_policy(policy, host) if isinstance(policy, str) else policy


def assemble(
    policy: str | PolicySpec | None = None,
    *,
    arch: str = "x86-shadow",
    costs_file: str | None = None,
    check: bool = False,
    monitors: Sequence[str] = (),
    backend: str = "sim",
    plugins: Iterable[object] = (),
    host: Host | None = None,
    kernel: KernelConfig | None = None,
) -> AssembledRun:
    """The VM of one run: ``policy`` (a spec or ``NAME[:opts][+NAME...]``; None: the arch's
    defaults only) on ``arch``, monitors by name (``check`` adds ``invariants``) and
    ``plugins``, extra plugin objects (a test's broken policy), on ``backend``, under the
    host ``kernel`` configuration (None: ``KernelConfig()``, the defaults)."""
    host = host or get_host()
    reg = host.registry
    spec = as_policy_spec(policy, host)
    arch_obj = reg.get("arch", arch)()
    costs = arch_obj.costs.with_overrides(costs_file) if costs_file else arch_obj.costs
    parts = spec.parts if spec else ()
    policy_objs = [reg.get("policy", p.name)(**dict(p.options)) for p in parts]
    names = [*monitors, *(["invariants"] if check and "invariants" not in monitors else [])]
    monitor_objs = [reg.get("monitor", n)() for n in names]
    hooks = RunHooks(run_manager(arch_obj, *plugins, *policy_objs, *monitor_objs))
    vm = reg.get("backend", backend)().create_vm(
        hooks, arch_obj, costs, kernel=kernel or KernelConfig()
    )
    return AssembledRun(vm, arch_obj, costs, spec, policy_objs, monitor_objs, hooks)


def run_once(
    workload: str,
    params: dict[str, Any] | None = None,
    policy: str | PolicySpec | None = None,
    *,
    arch: str = "x86-shadow",
    backend: str = "sim",
    costs_file: str | None = None,
    check: bool = False,
    trace: bool = False,
    rep: int = 0,
    host: Host | None = None,
    kernel: KernelConfig | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> dict[str, Any]:
    """One repetition of ``workload`` under one policy; returns ``{"policy", "arch",
    "backend", "costs", "kernel", "metrics", "series", "checks", "seed", "policy_calls"}``
    (how often each selection hook the policy implements was called). Repetition ``i``
    of a workload with a ``seed`` parameter runs with seed + i. ``trace``: the backend
    records the kernel's tracepoints of the workload's paths (``--trace``).
    ``progress(done, planned)`` hears of every guest pass (backends that have passes)."""
    host = host or get_host()
    wl = host.registry.get("workload", workload)()
    spec = resolve_params(wl.params, params or {})
    if "seed" in spec.values:
        spec.values["seed"] += rep
    run = assemble(
        policy,
        arch=arch,
        costs_file=costs_file,
        check=check,
        backend=backend,
        host=host,
        kernel=kernel,
    )
    if progress is not None and hasattr(run.vm, "on_progress"):
        run.vm.on_progress = progress  # (passes done, planned) after every guest pass
    with run:
        if trace:
            run.vm.enable_trace(tuple(wl.paths))
        try:
            metrics = wl.run(run.vm, spec)
        except Exception as exc:  # say whose hook it was: the runner records it per policy
            where = run.hooks.raised_in(exc)
            if where:
                exc.add_note(f"raised in {where}")
            raise
        series = run.vm.series()
    asked = {
        hook: n
        for pol in run.policies
        for hook in policy_hooks(type(pol))
        if (n := run.hooks.calls.get(hook)) is not None
    }
    if host.registry.get("backend", backend).exclusive:
        asked = {}  # the kernel plays a policy's knob, not its hooks: nothing to count
    return {
        "policy": run.label,
        "policy_calls": asked,
        "arch": run.arch.name,
        "backend": run.vm.backend,
        "costs": contracts.costs_name(run.vm, run.costs),
        "kernel": contracts.kernel_config(run.vm),
        "metrics": metrics,
        "series": {k: [_plain(x) for x in v] for k, v in series.items()},
        "checks": sum(m.checks for m in run.monitors),
        "seed": spec.values.get("seed"),
    }


def _plain(item: tuple) -> list:
    """A series event as JSON-ready values (NumPy scalars become floats)."""
    return [x if isinstance(x, int | float | str | dict) else float(x) for x in item]
