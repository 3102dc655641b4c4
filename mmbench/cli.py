"""``mmbench``: list plugins, run workloads, show stored runs.

Bad input exits with status 2 and one line naming the field; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from mmbench import environment, plots, store
from mmbench.compare import RENDERERS, compare, render_text
from mmbench.config import load_config
from mmbench.errors import BackendError, ConfigError, ModelError
from mmbench.paths import policy_paths
from mmbench.plugins import get_host
from mmbench.runner import RunRequest, execute, resolve


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "description", None) or obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


# -- list --------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    host = get_host()
    reg = host.registry
    out = []
    for kind, title in (
        ("workload", "Workloads"),
        ("arch", "Arch backends"),
        ("policy", "Policies"),
        ("monitor", "Monitors"),
        ("backend", "Backends"),
        ("command", "Commands from plugins"),
    ):
        out.append(f"{title}:")
        for name in reg.names(kind):
            obj = reg.get(kind, name)
            extra = ""
            if kind == "policy":
                extra = f" [archs: {', '.join(obj.archs)}] [paths: {', '.join(policy_paths(obj))}]"
                if getattr(obj, "options", None):
                    opts = ", ".join(f"{k}={v}" for k, v in obj.options.items())
                    extra += f" [options: {opts}]"
            provider = reg.provider[(kind, name)]
            out.append(f"  {name:<18} {_first_line(obj)}{extra}  (from {provider})")
    out.append("Plugins loaded:")
    for name, hooks in host.plugins():
        dist = host.dist_of(name)
        where = f" ({dist})" if dist else ""
        out.append(f"  {name}{where}: {', '.join(hooks)}")
    print("\n".join(out))
    return 0


# -- run ---------------------------------------------------------------------------------
def _common_run_options(p: argparse.ArgumentParser, sub: bool) -> None:
    """Options valid both before and after WORKLOAD (subparser copies must not reset
    what the parent parsed, hence SUPPRESS)."""
    d = argparse.SUPPRESS if sub else None
    p.add_argument(
        "--policy",
        action="append",
        default=d,
        metavar="NAME[:opt=val,...]",
        help="policy to run; repeat to compare (first is the baseline; default: all)",
    )
    p.add_argument("--arch", default=d, help="arch backend (default: the workload's)")
    p.add_argument("--backend", default=d, help="backend (default: sim; see mmbench list)")
    p.add_argument(
        "--costs",
        metavar="FILE",
        default=d,
        help="cost table YAML to apply (from mmbench calibrate)",
    )
    p.add_argument("--reps", type=int, default=d, help="repetitions per policy (default: 1)")
    p.add_argument(
        "--json",
        action="store_true",
        default=d,
        help="print one JSON document instead of the table",
    )
    p.add_argument("--name", default=d, help="name of the stored run (default: WORKLOAD-time)")
    p.add_argument(
        "--runs-dir",
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
        "--jobs", type=int, default=d, help="processes (default: one per policy, up to CPUs)"
    )
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        default=d,
        help="also draw the run's time series (as mmbench plot does)",
    )


def _run_parser(sub: argparse._SubParsersAction, reg) -> None:
    run = sub.add_parser(
        "run",
        help="run a workload under one or more policies",
        description="mmbench run WORKLOAD [options], or mmbench run --config FILE [options]",
    )
    run.add_argument("--config", metavar="FILE", help="YAML run config (see configs/)")
    _common_run_options(run, sub=False)
    run.set_defaults(func=cmd_run)
    wsub = run.add_subparsers(dest="workload", metavar="WORKLOAD")
    for name in reg.names("workload"):
        wl = reg.get("workload", name)
        p = wsub.add_parser(
            name,
            help=_first_line(wl),
            description=wl.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for prm in wl.params:
            p.add_argument(
                *prm.cli,
                dest=f"param_{prm.name}",
                default=None,
                metavar=prm.type.__name__.upper(),
                help=f"{prm.help} (default: {prm.default})",
            )
        _common_run_options(p, sub=True)


def _request(args: argparse.Namespace) -> RunRequest:
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
    if getattr(args, "check", None):
        req.check = True
    if not 1 <= req.reps <= 1000:
        raise ConfigError("--reps", f"must be 1..1000 (got {req.reps})")
    return req


def _progress(total: int, enabled: bool):
    """A rich progress bar on a terminal's stderr; nothing otherwise (pipes, --json)."""
    if not enabled or not sys.stderr.isatty():
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("running", total=total)
    return bar, lambda label: bar.update(task, advance=1, description=label)


def cmd_run(args: argparse.Namespace) -> int:
    req = _request(args)
    resolved = resolve(req)
    root = store.runs_dir(getattr(args, "runs_dir", None))
    name = getattr(args, "name", None) or (f"{req.workload}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}")
    store.check_name(name, root)
    plot_to = getattr(args, "plot", None)
    if plot_to:
        plots.check_out(plot_to, "--plot")
    as_json = bool(getattr(args, "json", False))
    bar, tick = _progress(len(resolved.policies) * req.reps, enabled=not as_json)
    if bar:
        with bar:
            results = execute(resolved, tick)
    else:
        results = execute(resolved)
    record = {
        "mmbench": 1,
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "workload": req.workload,
        "params": resolved.spec.values,
        "config": args.config,
        "reps": req.reps,
        "environment": environment.collect(),
        "results": results,
    }
    run_dir = store.save(root, name, record)
    if plot_to:
        plots.plot_runs([record], None, plot_to)
    if as_json:
        doc = {
            "workload": record["workload"],
            "name": name,
            "params": record["params"],
            "results": [
                {k: r[k] for k in ("policy", "arch", "backend", "metrics", "reps")} for r in results
            ],
        }
        print(json.dumps(doc, indent=1))
    else:
        print(_params_line(record))
        print(render_text(compare([record], resolved.workload.metrics)))
        print(f"saved: {run_dir}")
    return 0


def _params_line(record: dict[str, Any]) -> str:
    params = " ".join(
        f"{k}=0x{v:x}" if k.endswith("gpa") and isinstance(v, int) else f"{k}={v}"
        for k, v in record.get("params", {}).items()
    )
    first = record["results"][0]
    return (
        f"{record['workload']} {params}\nrun {record['name']}: arch {first['arch']},"
        f" backend {first['backend']}, costs '{first.get('costs', '-')}',"
        f" reps {record.get('reps', 1)}"
    )


def _metric_info(records: list[dict[str, Any]]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for rec in records:
        wl = get_host().registry.entries["workload"].get(rec["workload"])
        if wl is not None:
            info.update(wl.metrics)
    return info


def cmd_compare(args: argparse.Namespace) -> int:
    root = store.runs_dir(args.runs_dir)
    records = [store.load(root, name) for name in args.runs]
    cmp = compare(records, _metric_info(records))
    print(RENDERERS[args.format](cmp))
    return 0


# -- runs / show -------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    root = store.runs_dir(args.runs_dir)
    for name in store.list_runs(root):
        rec = store.load(root, name)
        pols = ", ".join(r["policy"] for r in rec["results"])
        print(f"{name:<40} {rec['created']:<26} {rec['workload']:<12} {pols}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    root = store.runs_dir(args.runs_dir)
    rec = store.load(root, args.run)
    if args.json:
        print(json.dumps(rec, indent=1))
        return 0
    print(_params_line(rec))
    print(render_text(compare([rec], _metric_info([rec]))))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbench", description="Benchmarks for KVM's MMU invalidation paths."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    reg = get_host().registry
    p = sub.add_parser("list", help="plugins and what each provides")
    p.set_defaults(func=cmd_list)
    _run_parser(sub, reg)
    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("compare", help="set stored runs side by side (first is the baseline)")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--format", choices=sorted(RENDERERS), default="text")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("show", help="print a stored run's comparison")
    p.add_argument("run")
    p.add_argument("--runs-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    for name in reg.names("command"):
        command = reg.get("command", name)()
        p = sub.add_parser(name, help=command.help, description=command.__doc__)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except ConfigError as exc:
        print(f"mmbench: error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"mmbench: model error: {exc}", file=sys.stderr)
        return 1
    except BackendError as exc:
        print(f"mmbench: kernel error: {exc}; nothing was saved", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmbench: interrupted; nothing was saved", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mmbench ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
