"""``mmbench run``: flags and configs into a run request, the run, the stored record."""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from mmbench.commands.parsing import int_choice, nonempty, positive_int
from mmbench.errors import ConfigError
from mmbench.host.manager import get_host
from mmbench.model.sched import (
    DEFAULT_HOST_CPUS,
    DEFAULT_HZ,
    DEFAULT_PREEMPT,
    DEFAULT_SCHED,
    HZ_CHOICES,
    PREEMPT_MODELS,
    SCHEDULERS,
)
from mmbench.report import environment, store
from mmbench.report import record as record_mod
from mmbench.report.compare import compare, render_terminal
from mmbench.run.config import load_config
from mmbench.run.progress import Board
from mmbench.run.runner import RunRequest, execute, resolve, tasks_of


def add_policy_and_arch(
    p: argparse.ArgumentParser, default: object, policy_help: str, arch_help: str
) -> None:
    """``--policy`` (repeatable) and ``--arch``, as ``run`` and ``bench`` take them."""
    p.add_argument(
        "--policy",
        action="append",
        default=default,
        metavar="NAME[:opt=val,...]",
        type=nonempty,
        help=policy_help,
    )
    p.add_argument("--arch", type=nonempty, default=default, help=arch_help)


def _common_run_options(p: argparse.ArgumentParser, sub: bool) -> None:
    """Options valid both before and after WORKLOAD (subparser copies must not reset
    what the parent parsed, hence SUPPRESS)."""
    d = argparse.SUPPRESS if sub else None
    add_policy_and_arch(
        p,
        d,
        "policy to run; repeat to compare (first is the baseline; default: all)",
        "arch backend (default: the workload's)",
    )
    p.add_argument(
        "--backend", type=nonempty, default=d, help="backend (default: sim; see mmbench list)"
    )
    p.add_argument(
        "--costs",
        metavar="FILE",
        type=nonempty,
        default=d,
        help="cost table YAML to apply (from mmbench calibrate)",
    )
    p.add_argument(
        "--reps", type=positive_int, default=d, help="repetitions per policy (default: 1)"
    )
    p.add_argument(
        "--preempt",
        choices=PREEMPT_MODELS,
        default=d,
        help=f"host kernel preemption model (default: {DEFAULT_PREEMPT}; contention-driven"
        " lock-breaks only under full)",
    )
    p.add_argument(
        "--hz",
        type=int_choice(HZ_CHOICES),
        default=d,
        metavar="N",
        help=f"host CONFIG_HZ, the scheduler tick (default: {DEFAULT_HZ})",
    )
    p.add_argument(
        "--host-cpus",
        type=positive_int,
        default=d,
        metavar="N",
        help="host CPUs shared by the vCPU threads, the VMM and kernel workers"
        f" (default: {DEFAULT_HOST_CPUS})",
    )
    p.add_argument(
        "--sched",
        choices=SCHEDULERS,
        default=d,
        help=f"host fair scheduler (default: {DEFAULT_SCHED}; eevdf, 6.6+: tick-driven"
        " lock breaks come after its base slice)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=d,
        help="print one JSON document instead of the table",
    )
    p.add_argument(
        "--name", type=nonempty, default=d, help="name of the stored run (default: WORKLOAD-time)"
    )
    p.add_argument(
        "--runs-dir",
        type=nonempty,
        default=d,
        help=f"where runs are stored (default: ${store.RUNS_DIR_ENV} or work/log)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        default=d,
        help="check invariants after every invalidation (slower)",
    )
    p.add_argument(
        "--trace",
        action="store_true",
        default=d,
        help="--backend kvm: record the kernel's kvmmmu tracepoints of the workload's paths"
        " (series trace:OP, beside the model's)",
    )
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=d,
        help="processes (default: one per policy, up to CPUs)",
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        type=nonempty,
        default=d,
        help="also draw the run's time series (as mmbench plot does)",
    )


def run_parser(sub: argparse._SubParsersAction, reg) -> None:
    run = sub.add_parser(
        "run",
        help="run a workload under one or more policies",
        description="mmbench run WORKLOAD [options], or mmbench run --config FILE [options]",
    )
    run.add_argument(
        "--config", metavar="FILE", type=nonempty, help="YAML run config (see configs/)"
    )
    _common_run_options(run, sub=False)
    run.set_defaults(func=cmd_run)
    add_workload_parsers(run, reg, _common_run_options)


def add_workload_parsers(
    parent: argparse.ArgumentParser,
    reg,
    options: Callable[[argparse.ArgumentParser, bool], None],
) -> None:
    """One subparser per workload under ``parent`` (dest ``workload``), with the
    workload's parameters as ``param_NAME`` and ``options(p, sub=True)`` after them: the
    one parsing of workload flags that ``run`` and ``bench`` share."""
    wsub = parent.add_subparsers(dest="workload", metavar="WORKLOAD")
    for name in reg.names("workload"):
        wl = reg.get("workload", name)
        p = wsub.add_parser(
            name,
            help=wl.description,
            description=workload_description(wl),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for prm in wl.params:
            if prm.switch:  # a flag alone sets it, as the selftest's getopt switches
                p.add_argument(
                    *prm.cli,
                    dest=f"param_{prm.name}",
                    default=None,
                    action="store_const",
                    const="true",
                    help=prm.help_text(),
                )
                continue
            p.add_argument(
                *prm.cli,
                dest=f"param_{prm.name}",
                default=None,
                metavar=prm.metavar,
                help=prm.help_text(),
            )
        options(p, True)


def workload_description(wl: type) -> str:
    """A workload's paragraph for ``--help``: its one-line description, then its class
    docstring or, failing that, its module's (what it models and after which tool)."""
    doc = wl.__doc__ or getattr(sys.modules.get(wl.__module__), "__doc__", None) or ""
    return f"{wl.description}\n\n{inspect.cleandoc(doc)}" if doc else wl.description


def request_from_args(args: argparse.Namespace) -> RunRequest:
    """The run asked for: a config file if given, overridden by flags on the command line."""
    params = {
        k[len("param_") :]: v
        for k, v in vars(args).items()
        if k.startswith("param_") and v is not None
    }
    if args.config:
        req = load_config(args.config)
        if args.workload and args.workload != req.workload:
            raise ConfigError(
                "WORKLOAD", f"{args.workload!r} differs from the config's workload {req.workload!r}"
            )
        req.params.update(params)
    elif args.workload:
        req = RunRequest(args.workload, params)
    else:
        names = get_host().registry.names_str("workload")
        raise ConfigError("WORKLOAD", f"name a workload or --config FILE (workloads: {names})")
    for opt, attr in (
        ("policy", "policies"),
        ("arch", "arch"),
        ("backend", "backend"),
        ("costs", "costs_file"),
        ("reps", "reps"),
        ("jobs", "jobs"),
    ):
        val = getattr(args, opt, None)
        if val is not None:
            setattr(req, attr, val)
    for opt in ("preempt", "hz", "host_cpus", "sched"):
        val = getattr(args, opt, None)
        if val is not None:
            req.kernel = {**req.kernel, opt: val}
    if getattr(args, "check", None):
        req.check = True
    if getattr(args, "trace", None):
        req.trace = True
    if not 1 <= req.reps <= 1000:
        raise ConfigError("--reps", f"must be 1..1000 (got {req.reps})")
    return req


class _Bar:
    """A rich progress bar on a terminal's stderr, one row per policy: guest passes done
    against those planned (every repetition), with rich's ETA from the rate so far. It
    reads the run's progress board a few times a second; the run never waits for it."""

    def __init__(self, resolved) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.tasks = tasks_of(resolved)
        self.board = Board(len(self.tasks))
        self.reps = resolved.request.reps
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TextColumn("{task.fields[passes]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
            refresh_per_second=4,
        )
        labels = list(dict.fromkeys(p.label for p, _ in self.tasks))
        width = max(len(lab) for lab in labels)
        self.rows = {
            lab: self.bar.add_task(f"{lab:<{width}}", total=float(self.reps), passes="")
            for lab in labels
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="mmbench-progress", daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            self.update()

    def update(self) -> None:
        by: dict[str, list[tuple[float, float]]] = {lab: [] for lab in self.rows}
        for n, (p, _) in enumerate(self.tasks):
            by[p.label].append(self.board.read(n))
        for lab, cells in by.items():
            frac = sum(d / t for d, t in cells if t > 0)
            done, total = sum(d for d, _ in cells), sum(t for _, t in cells)
            runs = sum(1 for d, t in cells if t and d >= t)
            text = f"{done:.0f}/{total:.0f} passes"
            if self.reps > 1:
                text += f", {runs}/{self.reps} reps done"
            self.bar.update(self.rows[lab], completed=frac, passes=text if total else "")

    def __enter__(self) -> _Bar:
        self.bar.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.bar.__exit__(*exc)


def cmd_run(args: argparse.Namespace) -> int:
    req = request_from_args(args)
    resolved = resolve(req)
    root = store.runs_dir(getattr(args, "runs_dir", None))
    name = getattr(args, "name", None) or (f"{req.workload}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}")
    plot_to = getattr(args, "plot", None)
    if plot_to:
        from mmbench.report import plots  # drawing code: only for --plot

        plots.check_out(plot_to, "--plot")
    as_json = bool(getattr(args, "json", False))
    with store.reserve(root, name) as slot:  # name and runs dir checked before the run
        started = time.monotonic()
        if not as_json and sys.stderr.isatty():  # a terminal only: never in pipes or --json
            with _Bar(resolved) as bar:
                results = execute(resolved, board=bar.board, while_waiting=store.prepare)
        else:
            results = execute(resolved, while_waiting=store.prepare)
        info = resolved.workload.metrics
        results = record_mod.typed_results(results, info)
        record = {
            "name": name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "workload": req.workload,
            "params": resolved.spec.values,
            "config": args.config,
            "reps": req.reps,
            "duration_s": round(time.monotonic() - started, 3),
            "units": record_mod.units(info, results),
            "environment": environment.collect(),
            # what the backend ran under (kvm: the host's own), else what was asked
            "kernel": next(
                (r["kernel"] for r in results if r.get("kernel")),
                req.kernel_config.as_dict(),
            ),
            "results": results,
        }
        failed = [r for r in results if "failed" in r]
        if len(failed) == len(results):  # nothing to store
            for r in failed:
                print(f"mmbench: policy {r['policy']} failed: {r['failed']}", file=sys.stderr)
            print("mmbench: every policy failed; nothing was saved", file=sys.stderr)
            return 1
        run_dir = slot.save(record)
    if plot_to:
        from mmbench.report import plots

        plots.plot_runs([record], None, plot_to)
    if as_json:
        print(json.dumps(record_mod.run_document(record), indent=1))
    else:
        print(render_terminal(compare([record], resolved.workload.metrics)))
        report = getattr(resolved.workload, "report_lines", None)  # a selftest's own lines
        for r in results if report else ():
            lines = report(record["params"], r.get("series", {}))
            if lines:
                print(f"\n{r['policy']} on {r['backend']} (repetition 1):")
                print("\n".join(f"  {line}" if line else "" for line in lines))
        print(f"saved: {run_dir}")
    for r in results:
        asked = r.get("policy_calls")
        if asked and not any(asked.values()):  # e.g. no ROM read happened: nothing compared
            hooks = ", ".join(sorted(asked))
            print(
                f"mmbench: warning: policy {r['policy']} was never invoked ({hooks} never"
                " called): its figures are the workload's without it",
                file=sys.stderr,
            )
    for r in failed:  # the others were stored; the run says which failed, and exits 1
        print(f"mmbench: policy {r['policy']} failed: {r['failed']}", file=sys.stderr)
    return 1 if failed else 0
