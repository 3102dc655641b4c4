"""Plots of stored runs' time series: sp count over time, faults over time, time per pass,
lock hold histograms. matplotlib with the Agg backend (no display), imported only when a
plot is drawn so other commands stay fast.

A run's result record keeps, per policy, ``series``: name -> list of ``[t_ns, value]``
where value is a number (``mmu_used_pages``, ``pf_fixed``) or a dict of fields (a workload
event such as ``pass`` or ``rom-access``). ``NAME`` picks a numeric series, ``NAME.FIELD``
one field of an event series. Fields in ns are drawn in ms. An event recorded after the
fact carries its own time as ``t_ns``; ``--x FIELD`` puts another field on the x axis
(``--series pass.ms --x index``: time per pass, mmtests style).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError
from mmbench.host.hookspecs import hookimpl
from mmbench.report import store

KINDS = ("line", "hist", "bars")

# what a KVM developer calls each series, and its unit
LABELS: dict[str, tuple[str, str]] = {
    "mmu_used_pages": ("Shadow pages in use (n_used_mmu_pages)", "sps"),
    "pf_fixed": ("Shadow page faults, cumulative (pf_fixed)", "faults"),
    "mmu_recycled": ("sps zapped by reclaim, cumulative (mmu_recycled)", "sps"),
    "slice.faults": ("Faults per slice", "faults"),
    "slice.ms": ("Time per slice", "ms"),
    "pass.ms": ("Time per pass", "ms"),
    "rom-access.delete_ns": ("ROM memslot delete", "ms"),
    "mmu_lock_hold": ("mmu_lock hold", "ms"),
    "mmu_lock_hold_hist": ("mmu_lock hold time distribution (log2 bins)", "ms"),
}


def _is_binned(points: list) -> bool:
    """A pre-binned histogram series: events with lo_ns, hi_ns and count."""
    return bool(points) and isinstance(points[0][1], dict) and "count" in points[0][1]


def _binned_lines(points: list, label: str) -> list[tuple[str, list[float], list[float]]]:
    """One line per holder: bin centres (ms) and counts."""
    by: dict[str, tuple[list[float], list[float]]] = {}
    for _, b in points:
        xs, ys = by.setdefault(str(b.get("holder", "")), ([], []))
        xs.append((b["lo_ns"] * b["hi_ns"]) ** 0.5 / 1e6)
        ys.append(float(b["count"]))
    return [(f"{label} {holder}".strip(), xs, ys) for holder, (xs, ys) in sorted(by.items())]


def check_out(path: str | Path, field: str = "--out") -> Path:
    """The PNG to write: ends in .png, its directory exists (checked before any run)."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ConfigError(field, f"{p}: must end in .png")
    if not p.parent.is_dir():
        raise ConfigError(field, f"{p}: directory {p.parent} does not exist")
    return p


def _values(
    points: list, field: str | None, where: str, x: str | None = None
) -> tuple[list[float], list[float], str]:
    """(x, values, unit note) of one series; dict values need ``field``. x is the time in
    ms (an event's own ``t_ns`` if it carries one) or the event field ``x``."""
    ts, ys = [], []
    scale, note = 1.0, ""
    if field and field.endswith("_ns"):
        scale, note = 1e-6, "ms"
    for item in points:
        t, v = item[0], item[1]
        if isinstance(v, dict):
            fields = ", ".join(sorted(k for k, val in v.items() if _is_num(val)))
            if field is None:
                raise ConfigError("--series", f"{where} is an event series; pick a field: {fields}")
            if field not in v or not _is_num(v[field]):
                raise ConfigError("--series", f"{where} has no numeric field {field!r} ({fields})")
            if x is not None and not _is_num(v.get(x)):
                raise ConfigError("--x", f"{where} has no numeric field {x!r} ({fields})")
            ts.append(float(v[x]) if x is not None else v.get("t_ns", t) / 1e6)
            v = v[field]
        elif field is not None or x is not None:
            bad = "--series" if field is not None else "--x"
            raise ConfigError(bad, f"{where} holds plain numbers, not events with fields")
        else:
            ts.append(t / 1e6)
        ys.append(float(v) * scale)
    return ts, ys, note


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def default_series(record: dict[str, Any]) -> list[str]:
    """The workload's ``default_plots`` if it has them, else every numeric series."""
    from mmbench.host.manager import get_host

    wl = get_host().registry.entries["workload"].get(record["workload"])
    names = set().union(*(r.get("series", {}) for r in record["results"]))
    wanted = [s for s in (wl.default_plots if wl else ()) if s.split(".")[0] in names]
    if wanted:
        return wanted
    numeric = []
    for r in record["results"]:
        for name, pts in r.get("series", {}).items():
            if pts and _is_num(pts[0][1]) and name not in numeric:
                numeric.append(name)
    return numeric


def plot_runs(
    records: list[dict[str, Any]],
    series: list[str] | None,
    out: str | Path,
    kind: str = "line",
    title: str | None = None,
    window: tuple[float, float] | None = None,
    x: str | None = None,
) -> Path:
    """Draw ``series`` of every policy of every run in ``records`` to the PNG ``out``:
    one panel per series, one line (or histogram) per run and policy (a saw-tooth level
    gets a panel per policy), optionally only ``window`` (ms). Checks everything
    before writing; the file appears whole or not at all."""
    records = [  # a policy that failed has nothing to draw
        {**rec, "results": [r for r in rec["results"] if "failed" not in r]} for rec in records
    ]
    if not any(rec["results"] for rec in records):
        raise ConfigError("RUN", "every policy of these runs failed: nothing to plot")
    out = check_out(out)
    if kind not in KINDS:
        raise ConfigError("--kind", f"{kind!r}: one of {', '.join(KINDS)}")
    if kind == "bars":
        return plot_phases(records, series, out, title)
    series = series or default_series(records[0])
    if not series:
        raise ConfigError("--series", f"run {records[0].get('name')!r} stored no time series")
    panels: list[tuple[str, list[tuple[str, list[float], list[float]]], str]] = []
    for name in series:
        base, _, field = name.partition(".")
        lines = []
        unit = ""
        have = {k for rec in records for res in rec["results"] for k in res.get("series", {})}
        if base not in have:
            names = ", ".join(sorted(have)) or "none"
            raise ConfigError("--series", f"no run stored a series {base!r} (series: {names})")
        for rec in records:
            for res in rec["results"]:
                label = res["policy"] if len(records) == 1 else f"{rec['name']}: {res['policy']}"
                pts = res.get("series", {}).get(base, [])  # e.g. no reclaim, no mmu_recycled
                if _is_binned(pts):
                    lines += _binned_lines(pts, label)
                    continue
                where = f"{base} of run {rec['name']!r}"
                ts, ys, unit = _values(pts, field or None, where, x)
                lines.append((label, ts, ys))
        if name in LABELS and name.endswith("_hist"):
            panels.append((name, lines, "ms"))
        elif kind == "line" and not field and len(lines) > 1 and not all(map(_rising, lines)):
            # a level that goes up and down (saw-tooth): one panel per policy reads best
            panels += [(name, [line], unit) for line in lines]
        else:
            panels.append((name, lines, unit))
    if window is not None:
        lo, hi = window
        title = title or f"{_title(records)}; {lo:g}-{hi:g} ms"
        panels = [
            (name, [_clip(line, lo, hi) for line in lines], unit) for name, lines, unit in panels
        ]
    return _draw(records, panels, out, kind, title, x)


def _rising(line: tuple[str, list[float], list[float]]) -> bool:
    ys = line[2]
    return all(a <= b for a, b in zip(ys, ys[1:], strict=False))


def _clip(line, lo: float, hi: float):
    label, ts, ys = line
    keep = [i for i, t in enumerate(ts) if lo <= t <= hi]
    return label, [ts[i] for i in keep], [ys[i] for i in keep]


def parse_window(text: str | None) -> tuple[float, float] | None:
    """``START:END`` in ms of the run's clock, for ``--window``."""
    if not text:
        return None
    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError("--window", f"{text!r}: expected START:END in ms, e.g. 50:80") from None
    if not 0 <= lo < hi:
        raise ConfigError("--window", f"{text!r}: need 0 <= START < END")
    return lo, hi


def _draw(records, panels, out: Path, kind: str, title: str | None, x: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.0 + 3.0 * len(panels)),
        squeeze=False,
        sharex=kind == "line" and not any(name.endswith("_hist") for name, _, _ in panels),
        layout="constrained",
    )
    for ax, (name, lines, unit_note) in zip(axes[:, 0], panels, strict=True):
        what, unit = LABELS.get(name, (name, unit_note))
        if sum(p[0] == name for p in panels) > 1 and len(lines) == 1:
            what = f"{what}: {lines[0][0]}"
        unit = unit_note or unit
        every = [y for _, _, ys in lines for y in ys]
        lo, hi = (min(every), max(every)) if every else (0.0, 1.0)
        bins = [lo + (hi - lo or 1.0) * i / 50 for i in range(51)]  # shared by every line
        if name.endswith("_hist"):  # pre-binned: counts per log2 bin, log axes
            for label, ts, ys in lines:  # only non-empty bins are stored: points, not steps
                ax.plot(ts, ys, marker="o", markersize=3, linewidth=1.0, label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(f"{what} ({unit})")
            ax.set_ylabel("count")
            ax.set_title(what)
            ax.grid(True, alpha=0.3)
            ax.legend(loc="best", fontsize=8)
            continue
        for label, ts, ys in lines:
            if kind == "hist":
                ax.hist(
                    ys, bins=bins, histtype="step", linewidth=1.5, label=f"{label} (n={len(ys)})"
                )
            elif name.partition(".")[2]:  # events: one point each
                ax.plot(ts, ys, ".", markersize=3, label=label)
            else:  # a level that holds until the next change
                ax.step(ts, ys, where="post", linewidth=1.0, label=label)
        if kind == "hist":
            ax.set_xlabel(f"{what} ({unit})" if unit else what)
            ax.set_ylabel("count")
            ax.set_title(f"{what}: distribution")
        else:
            ax.set_ylabel(f"{unit}" if unit else name)
            ax.set_title(what)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=9)
    for ax, (name, _, _) in zip(axes[:, 0], panels, strict=True):
        if kind == "line" and not name.endswith("_hist"):
            ax.set_xlabel(x or f"time (ms, {_clock(records)})")
    heading = title or _title(records)
    fig.suptitle("\n".join(textwrap.fill(line, 120) for line in heading.split("\n")), fontsize=10)
    return _save(fig, out)


def _clock(records) -> str:
    backends = {r["backend"] for rec in records for r in rec["results"]}
    return "model time" if backends == {"sim"} else "wall time"


def _title(records) -> str:
    rec = records[0]
    params = " ".join(
        f"{k}=0x{v:x}" if k.endswith("gpa") and isinstance(v, int) else f"{k}={v}"
        for k, v in rec.get("params", {}).items()
    )
    first = rec["results"][0]
    runs = ", ".join(r["name"] for r in records)
    return f"{rec['workload']} {params}\n{first['arch']} on {first['backend']}; run {runs}"


def phase_metrics(record: dict[str, Any]) -> list[str]:
    """The workload's ``phases`` (its per-phase timings, in order), else every ``*_ms``."""
    from mmbench.host.manager import get_host

    wl = get_host().registry.entries["workload"].get(record["workload"])
    have = record["results"][0]["metrics"]
    declared = [m for m in (wl.phases if wl else ()) if m in have]
    return declared or [m for m in have if m.endswith("_ms")]


def plot_phases(
    records: list[dict[str, Any]], metrics: list[str] | None, out: Path, title: str | None
) -> Path:
    """Per-phase bars: one group per phase, one bar per run and policy (mean of reps, with
    the standard deviation as an error bar). Log scale: phases span many decades."""
    import numpy as np

    metrics = metrics or phase_metrics(records[0])
    cols = [(rec, res) for rec in records for res in rec["results"]]
    for m in metrics:
        if any(m not in res["metrics"] for _, res in cols):
            known = ", ".join(sorted(cols[0][1]["metrics"]))
            raise ConfigError("--series", f"no metric {m!r} in every run (metrics: {known})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(
        figsize=(max(8, 1.4 * len(metrics) * max(1, len(cols)) / 2), 5), layout="constrained"
    )
    width = 0.8 / len(cols)
    x = np.arange(len(metrics))
    for i, (rec, res) in enumerate(cols):
        reps = res.get("reps") or [res["metrics"]]
        vals = np.array([[r[m] for m in metrics] for r in reps], dtype=float)
        label = res["policy"] if len(records) == 1 else f"{rec['name']}: {res['policy']}"
        mean = vals.mean(axis=0)
        err = vals.std(axis=0, ddof=1) if len(vals) > 1 else None
        ax.bar(
            x + (i - (len(cols) - 1) / 2) * width,
            np.maximum(mean, 1e-6),
            width,
            yerr=err,
            label=label,
            capsize=2,
        )
    ax.set_xticks(x, [m.removesuffix("_ms") for m in metrics], rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("ms (log scale)")
    ax.set_title("Per-phase times")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9)
    heading = title or _title(records)
    fig.suptitle("\n".join(textwrap.fill(line, 120) for line in heading.split("\n")), fontsize=10)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    """Write the PNG whole or not at all."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(suffix=".png", prefix=".tmp-", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


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
            help="line (over time), hist (a distribution) or bars (per-phase times; --series"
            " names metrics, default: the workload's phases)",
        )
        parser.add_argument("--title", help="figure title (default: workload and parameters)")
        parser.add_argument("--window", metavar="START:END", help="only this time span (ms)")
        parser.add_argument(
            "--x", metavar="FIELD", help="x axis: a field of the events (e.g. index), not time"
        )
        parser.add_argument("--runs-dir", help=f"default: ${store.RUNS_DIR_ENV} or work/log")

    def run(self, args: argparse.Namespace) -> int:
        root = store.runs_dir(args.runs_dir)
        records = store.load_same_workload(root, args.runs)
        window = parse_window(args.window)
        path = plot_runs(records, args.series, args.out, args.kind, args.title, window, args.x)
        print(f"wrote {path}")
        return 0


@hookimpl
def mmbench_register_commands(register):
    register(PlotCommand)
