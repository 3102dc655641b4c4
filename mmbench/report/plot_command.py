"""``mmbench plot``: the built-in plugin registering the command, its flags only.

Every process loads the built-in plugins, so the drawing code (``plots.py``: numpy,
matplotlib when it draws) is imported when the command runs, not at start-up.
"""

from __future__ import annotations

import argparse

from mmbench.host.hookspecs import hookimpl
from mmbench.report import store

KINDS = ("line", "hist", "cdf", "bars")  # --kind; plots.py checks the same tuple


class PlotCommand:
    """Draw stored runs' time series (sp count, faults, time per pass...) to a PNG."""

    name = "plot"
    help = "plot stored runs' time series to a PNG"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("runs", nargs="+", metavar="RUN", help="stored run names")
        parser.add_argument(
            "--series",
            action="append",
            metavar="NAME[.FIELD]",
            help="series to draw, one panel each (default: the workload's, e.g."
            " mmu_used_pages and pf_fixed for mmu-pressure); repeat for more",
        )
        parser.add_argument("--out", required=True, metavar="FILE.png", help="PNG to write")
        parser.add_argument(
            "--kind",
            default="line",
            choices=KINDS,
            help="line (over time), hist or cdf (distribution of per-event fields, every"
            " repetition pooled) or bars (per-phase times; --series names metrics, default:"
            " the workload's phases)",
        )
        parser.add_argument("--title", help="figure title (default: workload and parameters)")
        parser.add_argument("--window", metavar="START:END", help="only this time span (ms)")
        parser.add_argument(
            "--x", metavar="FIELD", help="x axis: a field of the events (e.g. index), not time"
        )
        parser.add_argument("--runs-dir", help=f"default: ${store.RUNS_DIR_ENV} or work/log")

    def run(self, args: argparse.Namespace) -> int:
        from mmbench.report.plots import parse_window, plot_runs

        root = store.runs_dir(args.runs_dir)
        records = store.load_same_workload(root, args.runs)
        window = parse_window(args.window)
        path = plot_runs(records, args.series, args.out, args.kind, args.title, window, args.x)
        print(f"wrote {path}")
        return 0


@hookimpl
def mmbench_register_commands(register):
    register(PlotCommand)
