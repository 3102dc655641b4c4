"""Resolve a run request against the registry and execute it, one policy at a time.

A run is one workload with one parameter set, on one arch and backend, for each of a list
of policies (the first is the comparison baseline). Policies are independent runs of
the model, so they go to separate processes when there are cores for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmbench.errors import BackendError, ConfigError, ModelError
from mmbench.host.manager import Host, get_host
from mmbench.model.sched import KernelConfig
from mmbench.run import paths, progress
from mmbench.run.assemble import run_once
from mmbench.run.policy_spec import PolicySpec, parse_policy
from mmbench.workloads.base import WorkloadSpec, resolve_params

__all__ = ["PolicySpec", "ResolvedRun", "RunRequest", "execute", "parse_policy", "resolve"]


@dataclass
class RunRequest:
    workload: str
    params: dict[str, Any] = field(default_factory=dict)
    policies: list[str] = field(default_factory=list)
    arch: str | None = None  # None: the workload's default_arch
    backend: str = "sim"
    costs_file: str | None = None
    check: bool = False  # attach the invariants monitor
    trace: bool = False  # the kernel's tracepoints (a backend with ``traces``)
    jobs: int = 0  # 0: one process per policy, up to the CPU count
    reps: int = 1  # repetitions per policy; seeded workloads use seed + i
    # the host kernel (--preempt, --hz, --host-cpus; a config's kernel:), None: defaults
    kernel: dict[str, Any] = field(default_factory=dict)

    @property
    def kernel_config(self) -> KernelConfig:
        return KernelConfig.from_options(self.kernel)


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
    req.kernel_config  # noqa: B018  (validates --preempt, --hz, --host-cpus)
    backend = host.registry.get("backend", req.backend)()
    ok, why = backend.available()
    if not ok:
        raise ConfigError("--backend", f"backend {req.backend!r} is unavailable here: {why}")
    if not req.arch:  # a real kernel runs its own MMU; the model, the workload's default
        req.arch = backend.default_arch() or workload_cls.default_arch
    arch_cls = host.registry.get("arch", req.arch)
    spec = resolve_params(workload_cls.params, req.params)
    if req.trace and not backend.traces:
        raise ConfigError(
            "--trace",
            f"backend {req.backend!r} has no tracepoints (the kernel's: --backend kvm); the"
            " model records its own events in every run's series",
        )
    allowed = workload_cls.backends
    if allowed and req.backend not in allowed:
        raise ConfigError("--backend", f"{req.workload} runs on: {', '.join(allowed)}")
    # a workload may choose its policy from its parameters (memslot-perf's -q: the quirk)
    chosen = getattr(workload_cls, "policies_for", None)
    chosen = chosen(spec, req.arch, list(req.policies or ())) if chosen else []
    names = req.policies or chosen or paths.default_policies(host.registry, workload_cls, req.arch)
    on = paths.workload_paths(workload_cls)
    if not req.policies:  # kvm: kernel knobs only
        names = backend.supported_policies(names, on)
    if not names:
        backend.check_policies([], req.arch, on)  # an arch the backend cannot run says why
        raise ConfigError(
            "--policy", f"backend {req.backend!r} has no policy for {req.workload} on {req.arch}"
        )
    policies = [parse_policy(p, host) for p in names]
    labels = [p.label for p in policies]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise ConfigError("--policy", f"{twice[0]!r} given twice (each policy runs once a run)")
    parts = [part.name for pol in policies for part in pol.parts]
    backend.check_policies(parts, req.arch, on)  # e.g. kvm: only policies with a kernel knob
    for pol in policies:
        paths.check_policy(
            host.registry, workload_cls, req.arch, pol.label, [p.name for p in pol.parts]
        )
    workload = workload_cls()
    workload.layout(spec, arch_cls())  # size and address checks, before any run
    if req.costs_file:
        arch_cls.costs.with_overrides(req.costs_file)
    return ResolvedRun(req, workload, spec, policies, arch_cls.name)


def run_one(
    req: RunRequest, policy: PolicySpec, rep: int = 0, task: int | None = None
) -> dict[str, Any]:
    """One repetition of one policy of a resolved request (``run_once``); ``task``: its
    slot on the progress board, if someone watches."""
    return run_once(
        req.workload,
        req.params,
        policy,
        arch=req.arch or "x86-shadow",
        backend=req.backend,
        costs_file=req.costs_file,
        check=req.check,
        trace=req.trace,
        rep=rep,
        kernel=req.kernel_config,
        progress=progress.reporter(task),
    )


def tasks_of(run: ResolvedRun) -> list[tuple[PolicySpec, int]]:
    """The run's tasks in order, (policy, repetition): a ``Board`` has one slot each."""
    return [(p, i) for p in run.policies for i in range(run.request.reps)]


def execute(
    run: ResolvedRun,
    progress_: Callable[[str], None] | None = None,
    board: progress.Board | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every repetition of every policy, in parallel processes when several cores are
    free; return one result per policy with the mean metrics and every repetition's.
    ``progress_(label)`` hears of each finished task; ``board`` gets every task's passes
    as they happen (``tasks_of`` order). ``while_waiting()``: work of the caller's to do in
    this process while worker processes run the tasks (not called when they run here)."""
    req = run.request
    tasks = tasks_of(run)
    jobs = req.jobs or min(len(tasks), os.cpu_count() or 1)
    if get_host().registry.get("backend", req.backend).exclusive:
        jobs = 1  # real-time backends: one run after another, or they skew the timings
    done: dict[tuple[str, int], dict[str, Any]] = {}
    slot = {(p.label, i): n if board else None for n, (p, i) in enumerate(tasks)}

    def finished(label: str, i: int, result: dict[str, Any]) -> None:
        done[(label, i)] = result
        if board is not None:
            board.finish(slot[(label, i)])
        if progress_:
            progress_(f"{label} rep {i + 1}/{req.reps}")

    if jobs <= 1 or len(tasks) == 1:
        progress.share(board.cells if board else None)
        try:
            for p, i in tasks:
                finished(p.label, i, attempt(req, p, i, slot[(p.label, i)]))
        finally:
            progress.share(None)
    else:
        from mmbench.run import workers  # the process pool: only for parallel runs

        cells = board.cells if board else None
        workers.run_parallel(req, tasks, jobs, slot, cells, finished, while_waiting)
    return [_aggregate([done[(p.label, i)] for i in range(req.reps)]) for p in run.policies]


def attempt(
    req: RunRequest, policy: PolicySpec, rep: int = 0, task: int | None = None
) -> dict[str, Any]:
    """``run_one``, but a policy that fails (a hook raised, or the model found a state the
    kernel could not reach, e.g. an invariant broken under ``--check``) fails alone: its
    result says why in one line, and the other policies' results stand. Bad input
    (ConfigError) and the kernel backend's errors still end the whole run."""
    try:
        return run_one(req, policy, rep, task)
    except (ConfigError, BackendError):
        raise
    except Exception as exc:
        notes = [n for n in getattr(exc, "__notes__", ()) if n.startswith("raised in ")]
        if not notes and not isinstance(exc, ModelError):
            raise  # a bug of mmbench's own: the traceback is for us
        where = f"{notes[-1]}: " if notes else ""
        reason = " ".join(f"{where}{type(exc).__name__}: {exc}".split())
        return {"policy": policy.label, "arch": req.arch, "backend": req.backend, "failed": reason}


def _aggregate(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """One policy's result: metrics are means over repetitions; each rep is kept. A
    policy with a failed repetition has failed (the first failure says why)."""
    first = reps[0]
    failed = [r for r in reps if "failed" in r]
    if failed:
        rep = f"repetition {reps.index(failed[0]) + 1}: " if len(reps) > 1 else ""
        return {**failed[0], "failed": rep + failed[0]["failed"]}
    keys = list(first["metrics"])
    out = {k: first[k] for k in ("policy", "arch", "backend", "costs")}
    if first.get("kernel") is not None:
        out["kernel"] = first["kernel"]
    out["metrics"] = {k: float(sum(r["metrics"][k] for r in reps) / len(reps)) for k in keys}
    out["reps"] = [r["metrics"] for r in reps]
    out["seeds"] = [r["seed"] for r in reps]
    out["checks"] = sum(r["checks"] for r in reps)
    calls = [r.get("policy_calls", {}) for r in reps]
    out["policy_calls"] = {h: sum(c.get(h, 0) for c in calls) for h in calls[0]}
    out["series"] = first["series"]  # repetition 0's time series, for plots
    if len(reps) > 1:  # the others', for percentiles over every repetition and plots of all
        out["rep_series"] = [r["series"] for r in reps[1:]]
    return out
