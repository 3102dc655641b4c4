"""``mmbench sweep FILE.yaml`` and ``mmbench sweep-report DIR``.

The sweep modules (pydantic, dask, matplotlib) are imported by the commands that use
them, not at start-up: every other command starts as fast as before."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mmbench.commands.parsing import int_at_least, nonempty, positive_int
from mmbench.errors import ConfigError
from mmbench.report import store
from mmbench.sweep import MAX_POINTS

_SCHEDULER = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$")


def _scheduler(text: str) -> str:
    if not _SCHEDULER.match(text):
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT, got {text!r}")
    return text


def sweep_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a run config over a grid or a seeded sample of its keys (on dask)",
        description="mmbench sweep FILE.yaml: every point a stored run in RUNS_DIR/NAME/",
    )
    p.add_argument("file", metavar="FILE.yaml", type=nonempty)
    p.add_argument("--name", type=nonempty, help="the sweep's directory name (default: FILE's)")
    p.add_argument("--runs-dir", type=nonempty, help=f"default: ${store.RUNS_DIR_ENV} or work/log")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.add_argument(
        "--jobs", type=positive_int, help="local cluster's worker processes (default: CPUs)"
    )
    p.add_argument(
        "--scheduler",
        type=_scheduler,
        metavar="tcp://HOST:PORT",
        help="submit to this dask scheduler instead of a local cluster",
    )
    p.add_argument("--resume", action="store_true", help="run only the points not yet stored")
    p.add_argument(
        "--max-points",
        type=positive_int,
        default=MAX_POINTS,
        help=f"refuse a sweep of more points (default: {MAX_POINTS})",
    )
    p.add_argument(
        "--retries",
        type=int_at_least(0),
        default=3,
        help="times a point may lose its worker before the sweep gives up (local cluster;"
        " an existing scheduler uses its own distributed.scheduler.allowed-failures)",
    )
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser(
        "sweep-report",
        help="a sweep's metric against its keys, plots and claim shares",
        description="mmbench sweep-report DIR [--metric M] [--x KEY [--y KEY]] [--out F.png]",
    )
    p.add_argument("dir", metavar="DIR", type=nonempty)
    p.add_argument("--metric", type=nonempty, help="default: the first claim's, or the first")
    p.add_argument("--x", type=nonempty, help="swept key to tabulate and plot against")
    p.add_argument("--y", type=nonempty, help="a second key: a heatmap per policy")
    p.add_argument("--out", metavar="FILE.png", type=nonempty, help="draw it here")
    p.add_argument(
        "--claim",
        action="append",
        default=[],
        type=nonempty,
        metavar="'METRIC: A < B'",
        help="an ordering claim to judge (repeatable; the sweep file's are judged too)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_sweep_report)


def _record(sweep_name: str, file: Path, pt: Any, reps: int, tasks: list[dict]) -> dict:
    return {
        "name": pt.id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "workload": pt.doc["workload"],
        "params": tasks[0]["params"],
        "config": str(file),
        "reps": reps,
        "environment": tasks[0]["environment"],
        "results": [t["result"] for t in tasks],
        "sweep": {"name": sweep_name, "point": pt.id, "values": pt.values, "costs": pt.costs},
    }


def cmd_sweep(args: argparse.Namespace) -> int:
    from mmbench.sweep import cluster, report, sweepdir
    from mmbench.sweep.spec import Point, load_sweep

    sweep = load_sweep(args.file, args.max_points)
    root = store.runs_dir(args.runs_dir)
    name = args.name or Path(args.file).stem
    store.check_name(name)
    if (root / name).exists() and not args.resume:
        raise ConfigError(
            "--name", f"{root / name} already exists (--resume runs its missing points)"
        )
    tasks = sum(len(p.policies) for p in sweep.points)
    workers = cluster.default_workers(args.jobs, tasks)
    try:
        with (
            cluster.client(args.scheduler, workers, args.retries) as dask_client,
            sweepdir.open_sweep(root, name, sweep, args.resume) as sd,
        ):
            todo = [p for p in sweep.points if p.id not in set(sd.index["done"])]
            skipped = len(sweep.points) - len(todo)
            failed: list[str] = []

            def on_point(pt: Point, results: list[dict[str, Any]]) -> None:
                sd.save_point(_record(name, sweep.path, pt, sweep.reps, results))
                for t in results:
                    if "failed" in t["result"]:
                        failed.append(f"{pt.id} {t['result']['policy']}: {t['result']['failed']}")

            n_tasks = sum(len(p.policies) for p in todo)
            bar, tick = _progress(n_tasks, enabled=not args.json and n_tasks > 0)
            try:
                if bar:
                    with bar:
                        cluster.run_points(dask_client, todo, name, sweep.reps, on_point, tick)
                else:
                    cluster.run_points(dask_client, todo, name, sweep.reps, on_point)
            except Exception as exc:
                if type(exc).__name__ != "KilledWorker":
                    raise
                print(
                    f"mmbench: {exc}; the finished points are saved in {sd.path}", file=sys.stderr
                )
                return 1
    except KeyboardInterrupt:  # Ctrl-C: the cluster is closed; finished points stay
        path = root / name
        ids = [p.id for p in sweep.points]
        saved = len(sweepdir.done_points(path, ids)) if path.is_dir() else 0
        print(
            f"mmbench: interrupted; {saved} of {len(ids)} points are saved in {path}"
            " (--resume runs the rest)",
            file=sys.stderr,
        )
        return 130
    res = report.load_results(root / name)
    shares = report.shares(res, report.claims_for(res, []))
    if args.json:
        doc = _json(res, shares)
        doc.update(ran=[p.id for p in todo], skipped=skipped)
        print(json.dumps(doc, indent=1))
    else:
        x = sweep.grid_axes[0] if sweep.grid_axes else None  # a sample's axes: noise
        metric = sweep.claims[0].metric if sweep.claims else res.metrics[0]
        if x is not None and len(sweep.points) <= 64:
            print(f"{metric}:")
            print(report.table(res, metric, [x]))
        for s in shares:
            print(s.line())
        print(
            f"saved: {root / name} ({len(todo)} points run, {skipped} already there,"
            f" {len(sweep.points)} in all)"
        )
    for line in failed:
        print(f"mmbench: point {line}", file=sys.stderr)
    return 1 if failed else 0


def _json(res: Any, shares: list) -> dict[str, Any]:
    return {
        "name": res.index["name"],
        "dir": str(res.dir),
        "axes": res.index["axes"],
        "policies": res.policies,
        "points": [
            {
                "id": p.id,
                "values": p.values,
                "results": [
                    {"policy": label, "metrics": p.means[label], "reps": p.reps[label]}
                    if label in p.means
                    else {"policy": label, "failed": p.failed.get(label, "not run here")}
                    for label in res.policies
                    if label in p.means or label in p.failed
                ],
            }
            for p in res.points
        ],
        "missing": res.missing,
        "claims": [
            {
                "claim": s.claim.text,
                "holds": s.holds,
                "points": s.points,
                "share": s.share if s.points else None,
                "ci95": [s.low, s.high] if s.points else None,
            }
            for s in shares
        ],
    }


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from mmbench.sweep import report

    res = report.load_results(Path(args.dir))
    if not res.points:
        raise ConfigError("DIR", f"{args.dir}: no point of the sweep is stored yet")
    claims = report.claims_for(res, args.claim)
    metric = args.metric or (claims[0].metric if claims else res.metrics[0])
    report.check_metric(res, metric)
    report.check_axis(res, args.x, "--x")
    report.check_axis(res, args.y, "--y")
    if args.y and not args.x:
        raise ConfigError("--y", "needs --x (a heatmap is over two keys)")
    if args.out:
        from mmbench.report import plots

        plots.check_out(args.out)
        if not args.x:
            raise ConfigError("--out", "needs --x (the key to draw the metric against)")
    shares = report.shares(res, claims)
    if args.json:
        print(json.dumps(_json(res, shares), indent=1))
    else:
        keys = [k for k in (args.x, args.y) if k]
        n = len(res.points) + len(res.missing)
        print(f"{res.index['name']}: {res.index['workload']}, {len(res.points)} of {n} points")
        if keys:
            print(f"{metric}:")
            print(report.table(res, metric, keys))
        for s in shares:
            print(s.line())
            if s.points and 0 < s.holds < s.points:
                sens = report.sensitivity(res, s.claim)
                if sens:
                    key, low, high = sens
                    print(
                        f"  most sensitive to {key}: holds at {100 * low:.0f}% of points in"
                        f" its lower half, {100 * high:.0f}% in its upper"
                    )
    if args.out:
        report.plot(res, metric, args.x, args.y, args.out)
        if not args.json:
            print(f"wrote {args.out}")
    return 0


def _progress(total: int, enabled: bool):
    """A rich bar of points done on a terminal's stderr; nothing otherwise (pipes, --json)."""
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
