"""Comparisons in the style of mmtests' compare-kernels: a baseline column, per-metric
mean (Amean for times and counts, Hmean for rates), stddev, % change against the
baseline and a mark where Welch's t-test over the repetitions finds the difference
significant. Rendered as text, markdown, JSON or HTML.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIGNIFICANCE = 0.05  # p below this marks a difference '*'; below 0.01, '**'


@dataclass
class Column:
    label: str  # run/policy
    run: str
    policy: str
    reps: list[dict[str, float]]
    arch: str
    backend: str

    @property
    def identical_reps(self) -> bool:
        """Several repetitions, all alike: a seedless workload on the deterministic model
        repeats itself exactly, and a ``±0`` would read as a measured spread."""
        return len(self.reps) > 1 and all(r == self.reps[0] for r in self.reps[1:])


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    change_pct: float | None = None  # vs baseline
    p_value: float | None = None
    baseline: bool = False

    @property
    def mark(self) -> str:
        if self.p_value is None or math.isnan(self.p_value):
            return ""
        return "**" if self.p_value < 0.01 else "*" if self.p_value < SIGNIFICANCE else ""


@dataclass
class Comparison:
    title: str
    columns: list[Column]
    metrics: list[str]
    units: dict[str, str] = field(default_factory=dict)
    cells: dict[str, list[Cell]] = field(default_factory=dict)


def _mean(values: np.ndarray, kind: str) -> float:
    if kind == "rate" and len(values) and np.all(values > 0):
        from scipy import stats  # imported when needed: it costs ~0.5 s at start-up

        return float(stats.hmean(values))
    return float(np.mean(values))


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


def columns_of(records: list[dict[str, Any]]) -> list[Column]:
    cols = []
    single = len(records) == 1
    for rec in records:
        for res in rec["results"]:
            reps = res.get("reps") or [res["metrics"]]
            label = res["policy"] if single else f"{rec['name']}/{res['policy']}"
            cols.append(
                Column(label, rec["name"], res["policy"], reps, res["arch"], res["backend"])
            )
    return cols


def compare(records: list[dict[str, Any]], metric_info: dict[str, Any] | None = None) -> Comparison:
    """Set every policy of every run side by side; the first column is the baseline."""
    metric_info = metric_info or {}
    cols = columns_of(records)
    metrics = [m for m in cols[0].reps[0] if all(m in c.reps[0] for c in cols)]
    units = {m: getattr(metric_info.get(m), "unit", "") for m in metrics}
    workloads = sorted({r["workload"] for r in records})
    title = (
        f"{', '.join(workloads)}: "
        + " vs ".join(c.label for c in cols)
        + f" (baseline {cols[0].label}; * p<{SIGNIFICANCE}, ** p<0.01, Welch's t-test)"
    )
    cmp = Comparison(title, cols, metrics, units)
    for m in metrics:
        kind = getattr(metric_info.get(m), "kind", "time")
        base = np.array([r[m] for r in cols[0].reps], dtype=float)
        row = []
        for i, col in enumerate(cols):
            vals = np.array([r[m] for r in col.reps], dtype=float)
            cell = Cell(
                _mean(vals, kind), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)
            )
            cell.baseline = i == 0
            if i:
                b = _mean(base, kind)
                cell.change_pct = (cell.mean - b) / abs(b) * 100 if b else None
                cell.p_value = _welch(base, vals)
            row.append(cell)
        cmp.cells[m] = row
    return cmp


def _num(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return f"{int(v):d}"
    return f"{v:.3f}"


def _cell_text(c: Cell) -> str:
    s = _num(c.mean)
    if c.n > 1 and c.std:
        s += f" ±{_num(c.std)}"
    if c.change_pct is not None:
        s += f" ({c.change_pct:+.2f}%){c.mark}"
    elif not c.baseline:
        s += " (n/a)"  # the baseline is 0
    return s


def render_text(cmp: Comparison) -> str:
    labels = [c.label for c in cmp.columns]
    names = [f"{m} [{cmp.units[m]}]" if cmp.units.get(m) else m for m in cmp.metrics]
    rows = [[_cell_text(c) for c in cmp.cells[m]] for m in cmp.metrics]
    name_w = max(len(n) for n in names)
    widths = [max(len(lab), *(len(r[i]) for r in rows)) for i, lab in enumerate(labels)]
    lines = [
        cmp.title,
        " " * name_w + "".join(f"  {lab:>{w}}" for lab, w in zip(labels, widths, strict=True)),
    ]
    for name, row in zip(names, rows, strict=True):
        lines.append(
            f"{name:<{name_w}}" + "".join(f"  {c:>{w}}" for c, w in zip(row, widths, strict=True))
        )
    return "\n".join([*lines, *_notes(cmp)])


def _notes(cmp: Comparison) -> list[str]:
    same = [c for c in cmp.columns if c.identical_reps]
    if not same:
        return []
    which = ", ".join(f"{c.label} ({len(c.reps)})" for c in same)
    return [f"repetitions identical (no seed varies them; the model is deterministic): {which}"]


def render_markdown(cmp: Comparison) -> str:
    head = "| metric | " + " | ".join(c.label for c in cmp.columns) + " |"
    sep = "|---|" + "---:|" * len(cmp.columns)
    lines = [f"**{cmp.title}**", "", head, sep]
    for m in cmp.metrics:
        unit = f" ({cmp.units[m]})" if cmp.units.get(m) else ""
        lines.append(f"| {m}{unit} | " + " | ".join(_cell_text(c) for c in cmp.cells[m]) + " |")
    notes = _notes(cmp)
    return "\n".join([*lines, *([""] + notes if notes else [])])


def render_json(cmp: Comparison) -> str:
    doc = {
        "title": cmp.title,
        "baseline": cmp.columns[0].label,
        "columns": [
            {
                "label": c.label,
                "run": c.run,
                "policy": c.policy,
                "arch": c.arch,
                "backend": c.backend,
                "reps": len(c.reps),
                "identical_reps": c.identical_reps,
            }
            for c in cmp.columns
        ],
        "metrics": {
            m: {
                "unit": cmp.units.get(m, ""),
                "cells": [
                    {
                        "mean": c.mean,
                        "std": c.std,
                        "n": c.n,
                        "change_pct": c.change_pct,
                        "p_value": c.p_value,
                        "significant": bool(c.mark),
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
            f"<td{' class=sig' if c.mark else ''}>{esc(_cell_text(c))}</td>" for c in cmp.cells[m]
        )
        body.append(f"<tr><th>{esc(m)}{unit}</th>{tds}</tr>")
    return (
        "<!doctype html><meta charset=utf-8><title>mmbench compare</title>"
        "<style>td,th{padding:2px 8px;text-align:right;font-family:monospace}"
        " .sig{font-weight:bold}</style>"
        f"<p>{esc(cmp.title)}</p><table><tr><th>metric</th>{head}</tr>"
        + "".join(body)
        + "</table>\n"
    )


RENDERERS = {
    "text": render_text,
    "markdown": render_markdown,
    "json": render_json,
    "html": render_html,
}
