"""``mmbench runs``, ``show`` and ``compare``: reading stored runs back."""

from __future__ import annotations

import argparse
import json
from typing import Any

from mmbench.host.manager import get_host
from mmbench.report import store
from mmbench.report.compare import RENDERERS, compare, render_terminal


def _metric_info(records: list[dict[str, Any]]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for rec in records:
        wl = get_host().registry.entries["workload"].get(rec["workload"])
        if wl is not None:
            info.update(wl.metrics)
    return info


def cmd_compare(args: argparse.Namespace) -> int:
    root = store.runs_dir(args.runs_dir)
    records = store.load_same_workload(root, args.runs)
    cmp = compare(records, _metric_info(records), baseline=args.baseline)
    print(RENDERERS[args.format](cmp))
    return 0


# -- runs / show -------------------------------------------------------------------------
def cmd_runs(args: argparse.Namespace) -> int:
    root = store.runs_dir(args.runs_dir)
    for name in store.list_runs(root):
        try:
            rec = store.load(root, name)
        except store.DamagedRun as exc:  # shown, never hiding the runs after it
            print(f"{name:<40} DAMAGED: {exc.reason}")
            continue
        pols = ", ".join(
            r["policy"] + (" (failed)" if "failed" in r else "") for r in rec["results"]
        )
        print(f"{name:<40} {rec['created']:<26} {rec['workload']:<12} {pols}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    root = store.runs_dir(args.runs_dir)
    rec = store.load(root, args.run)
    if args.json:
        print(json.dumps(rec, indent=1))
        return 0
    print(render_terminal(compare([rec], _metric_info([rec]))))
    return 0
