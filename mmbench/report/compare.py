"""Comparisons in the style of mmtests' ``compare-kernels.sh``: named runs side by side
against a baseline column, per metric Min, Amean (Hmean for rates), Stddev, CoeffVar and
Max over the repetitions, p50/p90/p99 over the per-event samples where the metric has
them (every repetition pooled), the % change against the baseline, and a mark for
better or worse by the metric's direction.

Significance is claimed only where there is variance: when either side's repetitions
vary, Welch's t-test (scipy) says whether the means differ (``*`` p<0.05, ``**`` p<0.01);
when neither varies (the deterministic model, a seedless workload, one repetition),
a figure is *identical* or *changed*, never "significant".

Rendered as text (a rich table on a terminal, at most 100 columns, folded into groups of
columns that fit; aligned plain text in pipes and files), markdown, JSON or HTML.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmbench.errors import ConfigError
from mmbench.report import describe

SIGNIFICANCE = 0.05  # p below this marks a difference '*'; below 0.01, '**'
WIDTH = 100  # the widest table printed
COMPARE_FORMAT = 2  # version of ``compare --format json`` (2: stats, verdicts, header)


@dataclass
class Column:
    label: str  # run/policy
    run: str
    policy: str
    reps: list[dict[str, float]]
    arch: str
    backend: str
    series: list[dict[str, list]] = field(default_factory=list)  # one per repetition
    duration_s: float | None = None  # the run's wall time (every policy of it)

    @property
    def identical_reps(self) -> bool:
        """Several repetitions, all alike: a seedless workload on the deterministic model
        repeats itself exactly, and a ``±0`` would read as a measured spread."""
        return len(self.reps) > 1 and all(r == self.reps[0] for r in self.reps[1:])


@dataclass
class Cell:
    """One metric of one column: statistics over its repetitions (``n``), percentiles
    over its per-event samples, and how it stands against the baseline."""

    mean: float
    std: float
    n: int
    min: float = 0.0
    max: float = 0.0
    samples: int = 0
    pct: dict[str, float] = field(default_factory=dict)  # p50, p90, p99
    change_pct: float | None = None  # vs baseline
    p_value: float | None = None
    baseline: bool = False
    verdict: str = ""  # baseline, identical, changed, significant, not significant

    @property
    def cv_pct(self) -> float:
        """mmtests' CoeffVar: stddev as a percentage of the mean."""
        return abs(self.std / self.mean) * 100 if self.mean else 0.0

    @property
    def mark(self) -> str:
        if self.p_value is None or math.isnan(self.p_value):
            return ""
        return "**" if self.p_value < 0.01 else "*" if self.p_value < SIGNIFICANCE else ""

    @property
    def significant(self) -> bool:
        return bool(self.mark)


@dataclass
class Comparison:
    title: str
    columns: list[Column]
    metrics: list[str]
    units: dict[str, str] = field(default_factory=dict)
    cells: dict[str, list[Cell]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # metric -> Metric declaration
    header: list[str] = field(default_factory=list)  # what differs, how long each ran
    differing: dict[str, dict[str, Any]] = field(default_factory=dict)  # param -> run -> value

    def better(self, metric: str, cell: Cell) -> str:
        """``better``/``worse`` for a real difference from the baseline, else ``""``."""
        if cell.baseline or cell.change_pct is None or not cell.change_pct:
            return ""
        if cell.verdict not in ("changed", "significant"):
            return ""
        lower = getattr(self.info.get(metric), "lower_is_better", True)
        return "better" if (cell.change_pct < 0) == lower else "worse"


def _mean(values: np.ndarray, kind: str) -> float:
    if kind == "rate" and len(values) and np.all(values > 0):
        from scipy import stats  # imported when needed: it costs ~0.5 s at start-up

        return float(stats.hmean(values))
    return float(np.mean(values))


def mean_name(kind: str) -> str:
    return "Hmean" if kind == "rate" else "Amean"


def _welch(a: np.ndarray, b: np.ndarray) -> float | None:
    """p-value of Welch's t-test, or None when it cannot say (too few reps, no variance)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return None
    from scipy import stats

    with warnings.catch_warnings():  # nearly identical samples: scipy warns, p is still fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def _varies(values: np.ndarray) -> bool:
    return len(values) > 1 and bool(np.ptp(values) > 0)


def columns_of(records: list[dict[str, Any]]) -> list[Column]:
    cols = []
    single = len(records) == 1
    for rec in records:
        for res in rec["results"]:
            if "failed" in res:  # a policy that failed has no figures to compare
                continue
            reps = res.get("reps") or [res["metrics"]]
            series = [res.get("series", {}), *res.get("rep_series", [])]
            label = res["policy"] if single else f"{rec['name']}/{res['policy']}"
            cols.append(
                Column(
                    label,
                    rec["name"],
                    res["policy"],
                    reps,
                    res["arch"],
                    res["backend"],
                    series,
                    rec.get("duration_s"),
                )
            )
    return cols


def _pick_baseline(cols: list[Column], baseline: str | None) -> list[Column]:
    """Columns with the baseline first: ``RUN/POLICY``, or ``POLICY`` where that is one."""
    if not baseline:
        return cols
    hits = [c for c in cols if baseline in (c.label, f"{c.run}/{c.policy}")]
    if not hits:
        hits = [c for c in cols if c.policy == baseline]
    if len(hits) != 1:
        labels = ", ".join(f"{c.run}/{c.policy}" for c in cols)
        why = "matches several columns" if hits else "is no column"
        raise ConfigError("--baseline", f"{baseline!r} {why} (columns: {labels})")
    return [hits[0], *(c for c in cols if c is not hits[0])]


def _cell(values: np.ndarray, kind: str, samples: list[float]) -> Cell:
    cell = Cell(
        _mean(values, kind),
        float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        len(values),
        float(values.min()),
        float(values.max()),
        len(samples),
    )
    if samples:
        p50, p90, p99 = np.percentile(np.array(samples), [50, 90, 99])
        cell.pct = {"p50": float(p50), "p90": float(p90), "p99": float(p99)}
    return cell


def compare(
    records: list[dict[str, Any]],
    metric_info: dict[str, Any] | None = None,
    baseline: str | None = None,
) -> Comparison:
    """Set every policy of every run side by side; the baseline column (``baseline``,
    ``RUN/POLICY``; default the first) goes first."""
    metric_info = metric_info or {}
    cols = _pick_baseline(columns_of(records), baseline)
    if not cols:
        raise ConfigError("RUN", "every policy of these runs failed: nothing to compare")
    metrics = [m for m in cols[0].reps[0] if all(m in c.reps[0] for c in cols)]
    units = {m: getattr(metric_info.get(m), "unit", "") for m in metrics}
    workloads = sorted({r["workload"] for r in records})
    title = f"{', '.join(workloads)}: " + " vs ".join(c.label for c in cols)
    cmp = Comparison(title, cols, metrics, units, info=metric_info)
    cmp.differing = describe.differing_params(records)
    cmp.header = describe.compare_header(records, cols[0].label, cmp.differing)
    for m in metrics:
        info = metric_info.get(m)
        kind = getattr(info, "kind", "time")
        source = getattr(info, "samples", None)
        base = np.array([r[m] for r in cols[0].reps], dtype=float)
        row = []
        for i, col in enumerate(cols):
            vals = np.array([r[m] for r in col.reps], dtype=float)
            samples = [x for s in col.series for x in source.of(s)] if source else []
            cell = _cell(vals, kind, samples)
            cell.baseline = i == 0
            cell.verdict = "baseline" if i == 0 else ""
            if i:
                b = row[0].mean
                cell.change_pct = (cell.mean - b) / abs(b) * 100 if b else None
                if _varies(base) or _varies(vals):
                    cell.p_value = _welch(base, vals)
                    cell.verdict = "significant" if cell.significant else "not significant"
                else:  # no variance on either side: the model says it, exactly
                    cell.verdict = "identical" if cell.mean == b else "changed"
            row.append(cell)
        cmp.cells[m] = row
    return cmp


# -- numbers as a KVM developer reads them ------------------------------------------------
def _num(v: float, kind: str = "time") -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):d}"
    if kind == "count":  # a mean of counts: one decimal says it is a mean
        return f"{v:.1f}"
    return f"{v:.3f}" if abs(v) < 1e6 else f"{v:.0f}"


def _change(c: Cell) -> str:
    if c.baseline:
        return ""
    if c.change_pct is None:
        return "(n/a)"  # the baseline is 0
    if c.verdict == "identical":
        return "(=)"
    return f"({c.change_pct:+.2f}%)"


def _glyph(cmp: Comparison, m: str, c: Cell) -> str:
    """``+`` better, ``-`` worse; ``*``/``**`` significant (Welch) where there is variance."""
    way = cmp.better(m, c)
    return ({"better": "+", "worse": "-"}.get(way, "") + c.mark) if way else ""


def _cell_text(cmp: Comparison, m: str, c: Cell) -> str:
    """The one-line form (markdown, html, ``show``): mean ±stddev (change)mark."""
    kind = getattr(cmp.info.get(m), "kind", "time")
    s = _num(c.mean, kind)
    if c.n > 1 and c.std:
        s += f" ±{_num(c.std, 'time')}"
    change = _change(c)
    return f"{s} {change}{_glyph(cmp, m, c)}".rstrip()


def _stat_rows(cmp: Comparison, m: str) -> list[tuple[str, list[str]]]:
    """mmtests' rows for one metric: (stat name, one cell per column)."""
    info = cmp.info.get(m)
    kind = getattr(info, "kind", "time")
    cells = cmp.cells[m]
    reps = max(c.n for c in cells)

    def rel(c: Cell, v: float, b: float) -> str:
        if c.baseline:
            return _num(v, kind)
        if not b:
            return _num(v, kind) + ("" if v == b else " (n/a)")
        return f"{_num(v, kind)} ({(v - b) / abs(b) * 100:+.2f}%)" if v != b else _num(v, kind)

    base = cells[0]
    rows: list[tuple[str, list[str]]] = []
    mean_row = [f"{_num(c.mean, kind)} {_change(c)}{_glyph(cmp, m, c)}".rstrip() for c in cells]
    if reps > 1 and any(c.min != c.max for c in cells):  # else one value says it all
        rows.append(("Min", [rel(c, c.min, base.min) for c in cells]))
        rows.append((mean_name(kind), mean_row))
        rows.append(("Stddev", [_num(c.std, "time") for c in cells]))
        rows.append(("CoeffVar", [f"{c.cv_pct:.2f}%" for c in cells]))
        rows.append(("Max", [rel(c, c.max, base.max) for c in cells]))
    else:
        rows.append((mean_name(kind) if kind == "rate" else "Value", mean_row))
    if any(c.pct for c in cells):
        for p in ("p50", "p90", "p99"):
            rows.append(
                (
                    p,
                    [rel(c, c.pct[p], base.pct.get(p, 0.0)) if c.pct else "-" for c in cells],
                )
            )
    return rows


def _fold(cmp: Comparison, widths: list[int], name_w: int, limit: int) -> list[list[int]]:
    """Column groups that fit ``limit`` characters, each led by the baseline."""
    groups: list[list[int]] = []
    cur = [0]
    used = name_w + 2 + widths[0]
    for i in range(1, len(cmp.columns)):
        if len(cur) > 1 and used + 2 + widths[i] > limit:
            groups.append(cur)
            cur, used = [0], name_w + 2 + widths[0]
        cur.append(i)
        used += 2 + widths[i]
    groups.append(cur)
    return groups


def metric_heading(cmp: Comparison, m: str) -> str:
    return describe.metric_line(m, cmp.info.get(m), samples=any(c.pct for c in cmp.cells[m]))


def legend(cmp: Comparison) -> str:
    return (
        "% change vs the baseline; + better, - worse (by each metric's direction);"
        f" * p<{SIGNIFICANCE}, ** p<0.01 (Welch's t-test) where repetitions vary;"
        " (=) identical without variance"
    )


def render_text(cmp: Comparison, width: int = WIDTH) -> str:
    """Aligned plain text, mmtests' layout: a block of stat rows per metric, runs as
    columns, folded into groups of columns (each with the baseline) that fit ``width``."""
    blocks = [(m, _stat_rows(cmp, m)) for m in cmp.metrics]
    labels = [c.label for c in cmp.columns]
    name_w = max(9, *(len(s) for _, rows in blocks for s, _ in rows))
    widths = [
        max(len(lab), *(len(r[i]) for _, rows in blocks for _, r in rows))
        for i, lab in enumerate(labels)
    ]
    out = _wrapped([cmp.title, *cmp.header, legend(cmp)], width)
    for group in _fold(cmp, widths, name_w, width):
        out.append("")
        out.append(" " * name_w + "".join(f"  {labels[i]:>{widths[i]}}" for i in group))
        for m, rows in blocks:
            out.append(metric_heading(cmp, m))
            for stat, cells in rows:
                out.append(
                    f"{stat:<{name_w}}" + "".join(f"  {cells[i]:>{widths[i]}}" for i in group)
                )
    return "\n".join([*out, *_notes(cmp)])


def render_rich(cmp: Comparison, width: int = WIDTH) -> str:
    """The same tables drawn by rich, for a terminal: at most ``width`` columns."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    blocks = [(m, _stat_rows(cmp, m)) for m in cmp.metrics]
    labels = [c.label for c in cmp.columns]
    name_w = max(9, *(len(s) for _, rows in blocks for s, _ in rows))
    widths = [
        max(len(lab), *(len(r[i]) for _, rows in blocks for _, r in rows)) + 1
        for i, lab in enumerate(labels)
    ]
    console = Console(width=width, record=True, force_terminal=True, file=_Null())
    title, *rest = _wrapped([cmp.title, *cmp.header, legend(cmp)], width)
    console.print(title, style="bold", highlight=False, soft_wrap=True)
    for line in rest:
        console.print(line, highlight=False, soft_wrap=True)
    for group in _fold(cmp, [w + 1 for w in widths], name_w + 2, width - 2):
        for k, (m, rows) in enumerate(blocks):  # one table per metric, columns aligned
            table = Table(
                box=box.SIMPLE_HEAD,
                show_header=k == 0,
                pad_edge=False,
                show_edge=False,
                title=metric_heading(cmp, m),
                title_justify="left",
                title_style="bold cyan",
            )
            table.add_column("", no_wrap=True, width=name_w)
            for i in group:
                table.add_column(labels[i], justify="right", no_wrap=True, width=widths[i])
            for stat, cells in rows:
                table.add_row(stat, *(_styled(cells[i]) for i in group))
            console.print(table)
    for note in _notes(cmp):
        console.print(note, highlight=False)
    return console.export_text(styles=True).rstrip("\n")


def _wrapped(lines: list[str], width: int) -> list[str]:
    """Header lines folded to ``width`` (continuations indented)."""
    return [
        part
        for line in lines
        for part in textwrap.wrap(line, width, subsequent_indent="    ", break_on_hyphens=False)
    ]


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def _styled(text: str) -> Any:
    from rich.text import Text

    style = "green" if ")+" in text else "red" if ")-" in text else ""
    return Text(text, style=style)


def render_terminal(cmp: Comparison) -> str:
    """Rich tables where stdout is a terminal (``width``: the terminal's, at most 100),
    plain text otherwise (pipes, files, tests)."""
    if sys.stdout.isatty():
        width = min(WIDTH, shutil.get_terminal_size((WIDTH, 24)).columns)
        return render_rich(cmp, width)
    return render_text(cmp)


def _notes(cmp: Comparison) -> list[str]:
    same = [c for c in cmp.columns if c.identical_reps]
    if not same:
        return []
    which = ", ".join(f"{c.label} ({len(c.reps)})" for c in same)
    return [f"repetitions identical (no seed varies them; the model is deterministic): {which}"]


def render_markdown(cmp: Comparison) -> str:
    head = "| metric | " + " | ".join(c.label for c in cmp.columns) + " |"
    sep = "|---|" + "---:|" * len(cmp.columns)
    lines = [f"**{cmp.title}**", "", *(f"{h}  " for h in cmp.header), legend(cmp), "", head, sep]
    for m in cmp.metrics:
        unit = f" ({cmp.units[m]})" if cmp.units.get(m) else ""
        stat = getattr(cmp.info.get(m), "stat", "")
        stat = f" <- {stat}" if stat else ""
        cells = " | ".join(_cell_text(cmp, m, c) for c in cmp.cells[m])
        lines.append(f"| {m}{unit}{stat} | {cells} |")
    notes = _notes(cmp)
    return "\n".join([*lines, *([""] + notes if notes else [])])


def _finite(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def render_json(cmp: Comparison) -> str:
    """Every figure of the comparison; keys are only ever added (``format_version``)."""
    doc = {
        "format_version": COMPARE_FORMAT,
        "title": cmp.title,
        "baseline": cmp.columns[0].label,
        "header": cmp.header,
        "differing_params": cmp.differing,
        "columns": [
            {
                "label": c.label,
                "run": c.run,
                "policy": c.policy,
                "arch": c.arch,
                "backend": c.backend,
                "reps": len(c.reps),
                "identical_reps": c.identical_reps,
                "duration_s": c.duration_s,
            }
            for c in cmp.columns
        ],
        "metrics": {
            m: {
                "unit": cmp.units.get(m, ""),
                "kind": getattr(cmp.info.get(m), "kind", "time"),
                "stat": getattr(cmp.info.get(m), "stat", ""),
                "lower_is_better": getattr(cmp.info.get(m), "lower_is_better", True),
                "cells": [
                    {
                        "mean": c.mean,
                        "std": c.std,
                        "n": c.n,
                        "min": c.min,
                        "max": c.max,
                        "cv_pct": c.cv_pct,
                        "samples": c.samples,
                        **c.pct,
                        "change_pct": c.change_pct,
                        "p_value": _finite(c.p_value),
                        "significant": c.significant,
                        "verdict": c.verdict,
                        "direction": cmp.better(m, c),
                    }
                    for c in cmp.cells[m]
                ],
            }
            for m in cmp.metrics
        },
    }
    return json.dumps(doc, indent=1)


def render_html(cmp: Comparison) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c.label)}</th>" for c in cmp.columns)
    body = []
    for m in cmp.metrics:
        unit = f" ({esc(cmp.units[m])})" if cmp.units.get(m) else ""
        tds = "".join(
            f"<td class='{cmp.better(m, c)}{' sig' if c.mark else ''}'>"
            f"{esc(_cell_text(cmp, m, c))}</td>"
            for c in cmp.cells[m]
        )
        body.append(f"<tr><th>{esc(m)}{unit}</th>{tds}</tr>")
    header = "".join(f"<p>{esc(h)}</p>" for h in [*cmp.header, legend(cmp)])
    return (
        "<!doctype html><meta charset=utf-8><title>mmbench compare</title>"
        "<style>td,th{padding:2px 8px;text-align:right;font-family:monospace}"
        " .sig{font-weight:bold} .better{color:#070} .worse{color:#a00}</style>"
        f"<p>{esc(cmp.title)}</p>{header}<table><tr><th>metric</th>{head}</tr>"
        + "".join(body)
        + "</table>\n"
    )


RENDERERS = {
    "text": render_terminal,
    "markdown": render_markdown,
    "json": render_json,
    "html": render_html,
}
