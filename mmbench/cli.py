"""``mmbench``: list plugins, run workloads, show stored runs.

Bad input exits with status 2 and one line naming the field; nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from mmbench import environment, store
from mmbench.errors import ConfigError, ModelError
from mmbench.paths import policy_paths
from mmbench.plugins import get_host
from mmbench.report import comparison_table
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
def _run_parser(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run a workload under one or more policies")
    wsub = run.add_subparsers(dest="workload", metavar="WORKLOAD", required=True)
    reg = get_host().registry
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
        p.add_argument(
            "--policy",
            action="append",
            default=[],
            metavar="NAME[:opt=val,...]",
            help="policy to run; repeat to compare (first is the baseline; default: all)",
        )
        arch = getattr(wl, "default_arch", "x86-shadow")
        p.add_argument("--arch", default=arch, help=f"arch backend (default: {arch})")
        p.add_argument(
            "--backend",
            default="sim",
            help=f"backend: {', '.join(reg.names('backend'))} (default: sim)",
        )
        p.add_argument(
            "--costs", metavar="FILE", help="cost table YAML to apply (from mmbench calibrate)"
        )
        p.add_argument(
            "--json", action="store_true", help="print one JSON document instead of the table"
        )
        p.add_argument("--name", help="name of the stored run (default: WORKLOAD-UTC timestamp)")
        p.add_argument(
            "--runs-dir", help=f"where runs are stored (default: ${store.RUNS_DIR_ENV} or work/log)"
        )
        p.add_argument(
            "--check",
            action="store_true",
            help="check invariants after every invalidation (slower)",
        )
        p.add_argument(
            "--jobs", type=int, default=0, help="processes (default: one per policy, up to CPUs)"
        )
        p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    params = {
        k[len("param_") :]: v
        for k, v in vars(args).items()
        if k.startswith("param_") and v is not None
    }
    req = RunRequest(
        args.workload,
        params,
        args.policy,
        args.arch,
        args.backend,
        args.costs,
        args.check,
        args.jobs,
    )
    resolved = resolve(req)
    root = store.runs_dir(args.runs_dir)
    name = args.name or f"{args.workload}-{datetime.now(UTC):%Y%m%d-%H%M%S-%f}"
    store.check_name(name, root)
    results = execute(resolved)
    record = {
        "mmbench": 1,
        "name": name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "workload": args.workload,
        "params": resolved.spec.values,
        "environment": environment.collect(),
        "results": results,
    }
    run_dir = store.save(root, name, record)
    if args.json:
        doc = {
            "workload": record["workload"],
            "name": name,
            "params": record["params"],
            "results": [
                {k: r[k] for k in ("policy", "arch", "backend", "metrics")} for r in results
            ],
        }
        print(json.dumps(doc, indent=1))
    else:
        units = {k: m.unit for k, m in resolved.workload.metrics.items()}
        print(comparison_table(record, units))
        print(f"saved: {run_dir}")
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
    wl = get_host().registry.entries["workload"].get(rec["workload"])
    units = {k: m.unit for k, m in wl.metrics.items()} if wl else {}
    print(comparison_table(rec, units))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmbench", description="Benchmarks for KVM's MMU invalidation paths."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    reg = get_host().registry
    p = sub.add_parser("list", help="plugins and what each provides")
    p.set_defaults(func=cmd_list)
    _run_parser(sub)
    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_runs)
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
    except KeyboardInterrupt:
        print("mmbench: interrupted; nothing was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
