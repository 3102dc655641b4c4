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

import math
import os
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from mmbench.errors import ConfigError
from mmbench.report.plot_command import KINDS

# what a KVM developer calls each series, and its unit
LABELS: dict[str, tuple[str, str]] = {
    "mmu_used_pages": ("Shadow pages in use (n_used_mmu_pages)", "sps"),
    "pf_fixed": ("Shadow page faults, cumulative (pf_fixed)", "faults"),
    "mmu_recycled": ("sps zapped by reclaim, cumulative (mmu_recycled)", "sps"),
    "slice.faults": ("Faults per slice", "faults"),
    "slice.ms": ("Time per slice", "ms"),
    "pass.ms": ("Time per pass", "ms"),
    "rom-access.delete_ns": ("ROM memslot delete", "ms"),
    "rom-access.add_ns": ("ROM memslot add", "ms"),
    "rom-access.read_ns": ("Guest read of the ROM", "ms"),
    "iteration.dirty_ms": ("Dirty memory time per iteration", "ms"),
    "iteration.get_ms": ("Get dirty log time per iteration", "ms"),
    "iteration.clear_ms": ("Clear dirty log time per iteration", "ms"),
    "iteration.pages": ("Pages dirtied per iteration", "pages"),
    "phase.ms": ("Time per phase", "ms"),
    "mmu_lock_hold": ("mmu_lock hold", "ms"),
    "mmu_lock_hold_hist": ("mmu_lock hold time distribution (log2 bins)", "ms"),
}
HOLDERS = {"host": "by the host (ioctls, workers)", "vcpu": "by vCPUs (faults)"}

Line = tuple[str, list[float], list[float], int]  # label, x, y, repetition


def _is_binned(points: list) -> bool:
    """A pre-binned histogram series: events with lo_ns, hi_ns and count."""
    return bool(points) and isinstance(points[0][1], dict) and "count" in points[0][1]


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
    elif field and field.endswith("_ms") or field == "ms":
        note = "ms"
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


def rep_series(res: dict[str, Any]) -> list[dict[str, list]]:
    """Every repetition's series of one policy's result (repetition 0 first)."""
    return [res.get("series", {}), *res.get("rep_series", [])]


def event_fields(record: dict[str, Any]) -> list[str]:
    """``SERIES.FIELD`` of every per-event numeric field the run stored (hist, cdf)."""
    out: list[str] = []
    for r in record["results"]:
        for name, pts in r.get("series", {}).items():
            if pts and isinstance(pts[0][1], dict) and not _is_binned(pts):
                for k, v in pts[0][1].items():
                    skip = k in ("t_ns", "index", "vcpu", "process") or f"{name}.{k}" in out
                    if _is_num(v) and not skip:
                        out.append(f"{name}.{k}")
    return out


def default_series(record: dict[str, Any], kind: str = "line") -> list[str]:
    """The workload's ``default_plots`` (for hist and cdf: its per-event ones, else every
    per-event field), else every series it stored."""
    from mmbench.host.manager import get_host

    wl = get_host().registry.entries["workload"].get(record["workload"])
    names = set().union(*(r.get("series", {}) for r in record["results"]))
    wanted = [
        s for s in (wl.default_plots if wl else ()) if s.split(".")[0] in names or s == PHASES
    ]
    if kind in ("hist", "cdf"):
        events = event_fields(record)
        return [s for s in wanted if s in events] or events
    if wanted:
        return wanted
    found = []
    for r in record["results"]:
        for name, pts in r.get("series", {}).items():
            if pts and (_is_num(pts[0][1]) or _is_binned(pts)) and name not in found:
                found.append(name)
    return found


def _check_per_event(name: str, records: list[dict[str, Any]], kind: str) -> None:
    """A distribution is of per-event values; a level or a cumulative counter has none."""
    if "." in name:
        return
    events = ", ".join(event_fields(records[0])) or "none"
    raise ConfigError(
        "--series",
        f"--kind {kind} draws per-event fields; {name!r} is a level or counter over time"
        f" (per-event fields: {events})",
    )


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
    one panel per series, every repetition of every run and policy (a saw-tooth level
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
    series = series or default_series(records[0], kind)
    if not series:
        if kind == "line" and phase_metrics(records[0]):  # nothing over time: its phases
            return plot_phases(records, None, out, title)
        what = "per-event series" if kind != "line" else "time series"
        raise ConfigError("--series", f"run {records[0].get('name')!r} stored no {what}")
    have = {k for rec in records for res in rec["results"] for s in rep_series(res) for k in s}
    panels: list[tuple[str, list[Line], str]] = []
    for name in series:
        if name == PHASES:  # the per-phase bars, as one panel among the others
            panels.append((PHASES, _check_phases(records, None), ""))  # type: ignore[arg-type]
            continue
        base, _, field = name.partition(".")
        if base not in have:
            names = ", ".join(sorted(have)) or "none"
            raise ConfigError("--series", f"no run stored a series {base!r} (series: {names})")
        lines: list[Line] = []
        unit = ""
        by_holder: dict[str, list[Line]] = {}
        for rec in records:
            for res in rec["results"]:
                label = res["policy"] if len(records) == 1 else f"{rec['name']}: {res['policy']}"
                for rep, ser in enumerate(rep_series(res)):
                    pts = ser.get(base, [])  # e.g. no reclaim, no mmu_recycled
                    if _is_binned(pts):
                        for holder, line in _binned_lines(pts, label, rep):
                            by_holder.setdefault(holder, []).append(line)
                        continue
                    if kind != "line":
                        _check_per_event(name, records, kind)
                    where = f"{base} of run {rec['name']!r}"
                    ts, ys, unit = _values(pts, field or None, where, x)
                    lines.append((label, ts, ys, rep))
        if by_holder:  # one panel per holder: host and vCPU holds differ by decades
            for holder, own in sorted(by_holder.items()):
                panels.append((f"{name}#{holder}", own, "ms"))
        elif (
            kind == "line"
            and not field
            and len(_labels(lines)) > 1
            and not all(map(_rising, lines))
        ):  # a level that goes up and down (saw-tooth): one panel per policy reads best
            for lab in _labels(lines):
                panels.append((f"{name}@{lab}", [ln for ln in lines if ln[0] == lab], unit))
        else:
            panels.append((name, lines, unit))
    if window is not None:
        lo, hi = window
        title = title or f"{_title(records)}; {lo:g}-{hi:g} ms"
        panels = [
            (name, lines if name == PHASES else [_clip(line, lo, hi) for line in lines], unit)
            for name, lines, unit in panels
        ]
    return _draw(records, panels, out, kind, title, x)


def _labels(lines: list[Line]) -> list[str]:
    return list(dict.fromkeys(line[0] for line in lines))


def _binned_lines(points: list, label: str, rep: int) -> list[tuple[str, Line]]:
    """(holder, line) per holder: the bins' lower edges (ms) and their counts."""
    by: dict[str, tuple[list[float], list[float]]] = {}
    for _, b in points:
        edges, counts = by.setdefault(str(b.get("holder", "")), ([], []))
        edges.append(b["lo_ns"] / 1e6)
        counts.append(float(b["count"]))
    return [(holder, (label, xs, ys, rep)) for holder, (xs, ys) in sorted(by.items())]


def _rising(line: Line) -> bool:
    ys = line[2]
    return all(a <= b for a, b in zip(ys, ys[1:], strict=False))


def _clip(line: Line, lo: float, hi: float) -> Line:
    label, ts, ys, rep = line
    keep = [i for i, t in enumerate(ts) if lo <= t <= hi]
    return label, [ts[i] for i in keep], [ys[i] for i in keep], rep


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


def _panel_title(name: str, unit: str) -> tuple[str, str]:
    """(title, unit) of a panel: the kernel developer's name and the unit shown."""
    base, _, holder = name.partition("#")
    base, _, only = base.partition("@")
    what, known_unit = LABELS.get(base, (base, unit))
    if holder:
        what = f"mmu_lock hold time {HOLDERS.get(holder, holder)}, log2 bins"
    if only:
        what = f"{what}: {only}"
    return what, unit or known_unit


def _merge_bins(lines: list[Line]) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """Every repetition's bins summed per label, on one log2 grid (edges in ms), zeros
    in the bins no hold fell in."""
    out = []
    for lab in _labels(lines):
        counts: dict[float, float] = {}
        reps = {ln[3] for ln in lines if ln[0] == lab}
        for _, xs, ys, _rep in (ln for ln in lines if ln[0] == lab):
            for x, y in zip(xs, ys, strict=True):
                counts[x] = counts.get(x, 0.0) + y
        lo, hi = min(counts), max(counts)
        n = int(round(math.log2(hi / lo))) + 1
        edges = lo * 2.0 ** np.arange(n + 1)
        vals = np.array([counts.get(float(e), 0.0) for e in edges[:-1]])
        for x, y in counts.items():  # exact edges from the store, whatever float rounding
            vals[int(round(math.log2(x / lo)))] = y
        out.append((lab, edges, vals, len(reps)))
    return out


MARKERS = "osD^v<>ph*"
DASHES = ("-", "--", "-.", ":")


def _look(labels: list[str], lab: str) -> dict[str, Any]:
    """Colour, marker and dash of a run/policy: figures that coincide stay visible."""
    i = labels.index(lab)
    return {
        "color": f"C{i % 10}",
        "marker": MARKERS[i % len(MARKERS)],
        "linestyle": DASHES[i % len(DASHES)],
        "linewidth": 2.2 - 0.4 * (i % 3),
    }


def duration_text(ms: float) -> str:
    """``512ns``, ``16us``, ``2ms``, ``1.5s``: a time axis tick as a developer says it."""
    for scale, unit in ((1e3, "s"), (1.0, "ms"), (1e-3, "us")):
        if ms >= scale:
            return f"{ms / scale:.3g}{unit}"
    return f"{ms * 1e6:.3g}ns"


def _log_axes(ax, x_times: bool, edges: list[float] | None = None) -> None:
    """Log axes labelled in plain numbers (durations on x, at the bin edges where they
    are few), 1-2-5 ticks on y, not 2x10^0."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    if x_times:
        if edges is not None:  # at bin edges (powers of 2 ns), at most about 12 of them
            ax.xaxis.set_major_locator(FixedLocator(edges[:: -(-len(edges) // 12)]))
        else:
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: duration_text(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
    if ax.get_yscale() == "log":
        lo, hi = ax.get_ylim()
        wide = lo > 0 and hi / lo > 1e3
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _draw(records, panels, out: Path, kind: str, title: str | None, x: str | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(10, 1.0 + 3.0 * len(panels)),
        squeeze=False,
        layout="constrained",
    )
    labels = _labels([ln for name, lines, _ in panels if name != PHASES for ln in lines])
    for ax, (name, lines, unit_note) in zip(axes[:, 0], panels, strict=True):
        what, unit = _panel_title(name, unit_note)
        if name == PHASES:
            _draw_phases(ax, records, lines)
            continue
        if "#" in name:  # pre-binned log2 histogram, one panel per holder
            _draw_binned(ax, lines, labels, what, unit)
        elif kind == "hist":
            _draw_hist(ax, lines, labels, what, unit)
        elif kind == "cdf":
            _draw_cdf(ax, lines, labels, what, unit)
        else:
            _draw_lines(ax, name, lines, labels, what, unit)
            ax.set_xlabel(x or f"time (ms, {_clock(records)})")
        ax.grid(True, alpha=0.3)
        handles, names = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="best", fontsize=8)
    heading = title or _title(records)
    _suptitle(fig, heading)
    return _save(fig, out)


def _reps_note(lines: list[Line], lab: str) -> str:
    """`` (3 reps)`` where a label has several repetitions."""
    n = len({ln[3] for ln in lines if ln[0] == lab})
    return f" ({n} reps)" if n > 1 else ""


def _draw_lines(ax, name: str, lines: list[Line], labels: list[str], what: str, unit: str) -> None:
    """Events as points, levels as steps; every repetition (the first labelled, the
    others lighter in the same colour)."""
    for lab, ts, ys, rep in lines:
        look = _look(labels, lab)
        style: dict[str, Any] = {"color": look["color"], "alpha": 1.0 if rep == 0 else 0.35}
        if rep == 0:
            style["label"] = lab + _reps_note(lines, lab)
        if name.partition("@")[0].partition(".")[2]:  # events: one hollow marker each
            size = 5 if len(ts) < 200 else 3
            ax.plot(ts, ys, look["marker"], markersize=size, fillstyle="none", **style)
        else:  # a level that holds until the next change
            ax.step(ts, ys, where="post", linewidth=1.0, **style)
    ax.set_ylabel(unit or name)
    ax.set_title(f"{what} [{unit}]" if unit else what)


def _pooled(lines: list[Line]) -> dict[str, list[float]]:
    """Every repetition's values, per label."""
    out: dict[str, list[float]] = {}
    for lab, _, ys, _ in lines:
        out.setdefault(lab, []).extend(ys)
    return out


def _draw_hist(ax, lines: list[Line], labels: list[str], what: str, unit: str) -> None:
    """Counts per bin as steps, bins shared by every line (log-spaced when the values
    span more than a decade), every repetition pooled."""
    pooled = _pooled(lines)
    every = np.array([y for ys in pooled.values() for y in ys])
    log = bool(len(every)) and every.min() > 0 and every.max() / every.min() > 10
    lo, hi = (every.min(), every.max()) if len(every) else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    bins = np.geomspace(lo, hi, 41) if log else np.linspace(lo, hi, 41)
    for lab, ys in pooled.items():
        counts, edges = np.histogram(ys, bins=bins)
        look = _look(labels, lab)
        ax.stairs(
            counts,
            edges,
            color=look["color"],
            linestyle=look["linestyle"],
            linewidth=look["linewidth"],
            label=f"{lab} (n={len(ys)}{_reps_note(lines, lab).replace(' (', ', ').rstrip(')')})",
        )
    if log:
        ax.set_xscale("log")
        _log_axes(ax, x_times=unit == "ms")
    ax.set_xlabel(f"{what} ({unit})" if unit else what)
    ax.set_ylabel("count")
    ax.set_title(f"{what}: distribution")


def _draw_cdf(ax, lines: list[Line], labels: list[str], what: str, unit: str) -> None:
    """The empirical CDF of every repetition's values pooled; latencies on a log axis."""
    pooled = _pooled(lines)
    positive = all(y > 0 for ys in pooled.values() for y in ys)
    for lab, ys in pooled.items():
        xs = np.sort(np.array(ys))
        ax.step(
            xs,
            np.arange(1, len(xs) + 1) / len(xs),
            where="post",
            color=_look(labels, lab)["color"],
            linestyle=_look(labels, lab)["linestyle"],
            label=f"{lab} (n={len(xs)})",
        )
    if positive:
        ax.set_xscale("log")
        _log_axes(ax, x_times=unit == "ms")
        ax.yaxis.set_major_formatter("{x:g}")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"{what} ({unit}{', log scale' if positive else ''})")
    ax.set_ylabel("fraction <= x")
    ax.set_title(f"{what}: cumulative distribution")


def _draw_binned(ax, lines: list[Line], labels: list[str], what: str, unit: str) -> None:
    """log2 bins as steps over their edges: empty bins at zero, no line across them."""
    every: set[float] = set()
    for lab, edges, vals, reps in _merge_bins(lines):
        every.update(float(e) for e in edges)
        note = f" ({reps} reps summed)" if reps > 1 else ""
        shown = np.where(vals > 0, vals, np.nan)  # log y: empty bins drawn empty
        look = _look(labels, lab)
        ax.stairs(
            shown,
            edges,
            color=look["color"],
            linestyle=look["linestyle"],
            linewidth=look["linewidth"],
            label=lab + note,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _log_axes(ax, x_times=True, edges=sorted(every))
    ax.set_xlabel("hold time (log2 bins)")
    ax.set_ylabel("holds")
    ax.set_title(what)


def _clock(records) -> str:
    backends = {r["backend"] for rec in records for r in rec["results"]}
    return "model time" if backends == {"sim"} else "wall time"


def _title(records) -> str:
    from mmbench.report.describe import params_text

    rec = records[0]
    first = rec["results"][0]
    runs = ", ".join(r["name"] for r in records)
    return (
        f"{rec['workload']} {params_text(rec)}\n{first['arch']} on {first['backend']}; run {runs}"
    )


def phase_metrics(record: dict[str, Any]) -> list[str]:
    """The workload's ``phases`` (its per-phase timings, in order) that the run has."""
    from mmbench.host.manager import get_host

    wl = get_host().registry.entries["workload"].get(record["workload"])
    have = record["results"][0]["metrics"]
    return [m for m in (wl.phases if wl else ()) if m in have]


PHASES = "phases"  # in default_plots / --series: the per-phase bars as a panel


def _check_phases(records: list[dict[str, Any]], metrics: list[str] | None) -> list[str]:
    metrics = metrics or phase_metrics(records[0])
    if not metrics:
        raise ConfigError(
            "--kind", f"{records[0]['workload']} declares no phases; name metrics with --series"
        )
    cols = [res for rec in records for res in rec["results"]]
    for m in metrics:
        if any(m not in res["metrics"] for res in cols):
            known = ", ".join(sorted(cols[0]["metrics"]))
            raise ConfigError("--series", f"no metric {m!r} in every run (metrics: {known})")
    return metrics


def plot_phases(
    records: list[dict[str, Any]], metrics: list[str] | None, out: Path, title: str | None
) -> Path:
    """Per-phase bars: one group per phase, one bar per run and policy (mean of reps),
    every repetition a dot on its bar. Log scale: phases span many decades."""
    metrics = _check_phases(records, metrics)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = sum(len(rec["results"]) for rec in records)
    fig, ax = plt.subplots(
        figsize=(max(8, 1.4 * len(metrics) * max(1, ncols) / 2), 5), layout="constrained"
    )
    _draw_phases(ax, records, metrics)
    _suptitle(fig, title or _title(records))
    return _save(fig, out)


def _draw_phases(ax, records: list[dict[str, Any]], metrics: list[str]) -> None:
    cols = [(rec, res) for rec in records for res in rec["results"]]
    width = 0.8 / len(cols)
    x = np.arange(len(metrics))
    floor = None
    for _, res in cols:
        reps = res.get("reps") or [res["metrics"]]
        vals = np.array([[r[m] for m in metrics] for r in reps], dtype=float)
        positive = vals[vals > 0]
        if positive.size:
            floor = min(floor or np.inf, float(positive.min()) / 3)
    floor = floor or 1e-3
    for i, (rec, res) in enumerate(cols):
        reps = res.get("reps") or [res["metrics"]]
        vals = np.array([[r[m] for m in metrics] for r in reps], dtype=float)
        label = res["policy"] if len(records) == 1 else f"{rec['name']}: {res['policy']}"
        if len(reps) > 1:
            label += f" ({len(reps)} reps)"
        mean = vals.mean(axis=0)
        pos = x + (i - (len(cols) - 1) / 2) * width
        ax.bar(pos, np.maximum(mean, floor), width, label=label, color=f"C{i % 10}", alpha=0.8)
        if len(reps) > 1:
            for row in vals:
                ax.plot(pos, np.maximum(row, floor), "k.", markersize=3)
        for px, v in zip(pos, mean, strict=True):
            if v <= 0:  # a phase that took no time: said, not drawn at the floor
                ax.annotate("0", (px, floor), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [m.removesuffix("_ms") for m in metrics], rotation=20, ha="right")
    ax.set_yscale("log")
    _log_axes(ax, x_times=False)
    ax.set_ylabel("ms (log scale)")
    ax.set_title("Per-phase times (dots: repetitions)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9)


def _suptitle(fig, heading: str) -> None:
    """The figure's title, folded to the figure's width (about 11 characters an inch)."""
    chars = int(fig.get_figwidth() * 11)
    fig.suptitle("\n".join(textwrap.fill(line, chars) for line in heading.split("\n")), fontsize=10)


def _save(fig, out: Path) -> Path:
    """Write the PNG whole or not at all, with the permissions the user's umask gives
    a new file (``mkstemp`` makes it 0600)."""
    import matplotlib.pyplot as plt

    fd, tmp = tempfile.mkstemp(suffix=".png", prefix=".tmp-", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _umask() -> int:
    """The process's umask (read by setting it: there is no getter before Linux 4.7's
    /proc/self/status ``Umask`` line, which is tried first)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
