"""Reading a sweep back: tables of a metric against swept keys, claim shares, plots.

A group is the points sharing the value of the keys asked for (``--x``, ``--y``); over
the other keys and every repetition of its points, a policy's metric is summarised as
mean and standard deviation (the error bars). ``--x`` alone draws one line per policy;
``--x`` and ``--y`` draw a heatmap per policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmbench.errors import ConfigError
from mmbench.report import store
from mmbench.sweep import sweepdir
from mmbench.sweep.claims import Claim, Share, check_claim, parse_claim, share


@dataclass
class PointResult:
    id: str
    values: dict[str, Any]
    reps: dict[str, list[dict[str, float]]]  # policy label -> per-repetition metrics
    means: dict[str, dict[str, float]]  # policy label -> mean metrics
    failed: dict[str, str]


@dataclass
class SweepResults:
    dir: Path
    index: dict[str, Any]
    points: list[PointResult]
    missing: list[str]

    @property
    def policies(self) -> list[str]:
        return list(self.index["policies"])

    @property
    def metrics(self) -> list[str]:
        names: dict[str, None] = {}
        for p in self.points:
            for m in p.means.values():
                names.update(dict.fromkeys(m))
        return list(names)


def point_result(pid: str, values: dict[str, Any], record: dict[str, Any]) -> PointResult:
    reps, means, failed = {}, {}, {}
    for r in record["results"]:
        if "failed" in r:
            failed[r["policy"]] = r["failed"]
            continue
        means[r["policy"]] = r["metrics"]
        reps[r["policy"]] = r.get("reps") or [r["metrics"]]
    return PointResult(pid, values, reps, means, failed)


def load_results(sweep_dir: Path) -> SweepResults:
    """Every stored point of the sweep in ``sweep_dir`` (missing ones are listed)."""
    index = sweepdir.read_index(sweep_dir)
    points, missing = [], []
    for p in index["points"]:
        try:
            record = store.load(sweep_dir, p["id"])
        except ConfigError:
            missing.append(p["id"])
            continue
        points.append(point_result(p["id"], p["values"], record))
    return SweepResults(sweep_dir, index, points, missing)


def claims_for(res: SweepResults, extra: list[str]) -> list[Claim]:
    texts = [*res.index.get("claims", []), *extra]
    claims = []
    for i, text in enumerate(dict.fromkeys(texts)):
        field = f"--claim {text!r}" if text in extra else f"index claims[{i}]"
        claim = parse_claim(text, field)
        check_claim(claim, field, res.metrics or [claim.metric], res.policies)
        claims.append(claim)
    return claims


def shares(res: SweepResults, claims: list[Claim]) -> list[Share]:
    return [share(c, [p.means for p in res.points]) for c in claims]


def sensitivity(res: SweepResults, claim: Claim) -> tuple[str, float, float] | None:
    """For a claim that does not hold everywhere: the numeric key whose lower and upper
    halves (split at its median over the points) differ most in the claim's share."""
    best = None
    for key in res.index["axes"]:
        xs, ok = [], []
        for p in res.points:
            v, h = p.values.get(key), claim.holds(p.means)
            if isinstance(v, int | float) and not isinstance(v, bool) and h is not None:
                xs.append(float(v))
                ok.append(h)
        if len(set(xs)) < 2:
            continue
        mid = float(np.median(xs))
        low = [h for x, h in zip(xs, ok, strict=True) if x <= mid]
        high = [h for x, h in zip(xs, ok, strict=True) if x > mid]
        if not low or not high:
            continue
        a, b = sum(low) / len(low), sum(high) / len(high)
        if best is None or abs(a - b) > abs(best[1] - best[2]):
            best = (key, a, b)
    return best


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def check_axis(res: SweepResults, key: str | None, flag: str) -> None:
    if key is not None and key not in res.index["axes"]:
        axes = ", ".join(res.index["axes"]) or "none"
        raise ConfigError(flag, f"{key!r} is not swept here (swept keys: {axes})")


def check_metric(res: SweepResults, metric: str) -> None:
    if metric not in res.metrics:
        raise ConfigError("--metric", f"unknown {metric!r} (known: {', '.join(res.metrics)})")


def groups(
    res: SweepResults, metric: str, keys: list[str]
) -> list[tuple[tuple[Any, ...], dict[str, tuple[float, float, int]]]]:
    """Per value of ``keys`` (in first-seen order, numbers sorted): per policy the mean,
    standard deviation and count of ``metric`` over the group's repetitions."""
    cells: dict[str, tuple[tuple[Any, ...], dict[str, list[float]]]] = {}
    for p in res.points:
        vals = tuple(p.values.get(k) for k in keys)
        _, per = cells.setdefault(_key(vals), (vals, {}))
        for label, reps in p.reps.items():
            per.setdefault(label, []).extend(r[metric] for r in reps if metric in r)
    out = []
    for vals, per in cells.values():
        stats = {
            label: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for label, v in per.items()
            if v
        }
        out.append((vals, stats))

    def order(item: tuple) -> tuple:
        return tuple((0, v, "") if _num(v) else (1, 0, _key(v)) for v in item[0])

    return sorted(out, key=order)


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def table(res: SweepResults, metric: str, keys: list[str]) -> str:
    """Markdown: one row per group, one column per policy (mean ± sd, % vs the first)."""
    labels = res.policies
    head = [*keys, *labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for vals, stats in groups(res, metric, keys):
        base = stats.get(labels[0])
        cells = [_show(v) for v in vals]
        for label in labels:
            if label not in stats:
                cells.append("-")
                continue
            mean, sd, n = stats[label]
            text = f"{mean:.4g}" + (f" ± {sd:.2g}" if n > 1 else "")
            if base and label != labels[0] and base[0]:
                text += f" ({100 * (mean / base[0] - 1):+.3g}%)"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(res: SweepResults, metric: str, x: str, y: str | None, out: str) -> None:
    """``metric`` against ``x`` per policy with error bars, or a heatmap over ``x``, ``y``
    (one panel per policy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = res.policies
    title = f"{res.index['name']}: {metric}"
    if y is None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        rows = groups(res, metric, [x])
        numeric = all(_num(v[0]) for v, _ in rows)
        ticks = [v[0] if numeric else i for i, (v, _) in enumerate(rows)]
        for label in labels:
            pts = [(t, s[label]) for t, (_, s) in zip(ticks, rows, strict=True) if label in s]
            if not pts:
                continue
            ax.errorbar(
                [t for t, _ in pts],
                [s[0] for _, s in pts],
                yerr=[s[1] for _, s in pts],
                marker="o",
                capsize=4,
                label=label,
            )
        if not numeric:
            ax.set_xticks(ticks, [_show(v[0]) for v, _ in rows])
        elif all(t > 0 for t in ticks) and max(ticks) / min(ticks) >= 10:
            ax.set_xscale("log")
            if len(ticks) <= 12:  # label the swept values themselves, not powers of ten
                ax.set_xticks(ticks, [_show(t) for t in ticks])
                ax.minorticks_off()
        ax.set_xlabel(x)
        ax.set_ylabel(metric)
        pooled = " and the other swept keys" if len(res.index["axes"]) > 1 else ""
        ax.set_title(f"{title}\n(mean ± sd over repetitions{pooled})", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend()
    else:
        rows = groups(res, metric, [x, y])
        xs = _levels(v[0] for v, _ in rows)
        ys = _levels(v[1] for v, _ in rows)
        fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels) + 1, 4), squeeze=False)
        grids = {label: np.full((len(ys), len(xs)), np.nan) for label in labels}
        for vals, stats in rows:
            i, j = ys.index(_key(vals[1])), xs.index(_key(vals[0]))
            for label, (mean, _, _) in stats.items():
                if label in grids:
                    grids[label][i, j] = mean
        finite = [g[np.isfinite(g)] for g in grids.values()]
        lo = min((float(f.min()) for f in finite if f.size), default=0.0)
        hi = max((float(f.max()) for f in finite if f.size), default=1.0)
        for ax, label in zip(axes[0], labels, strict=True):
            im = ax.imshow(grids[label], origin="lower", aspect="auto", vmin=lo, vmax=hi)
            for (i, j), v in np.ndenumerate(grids[label]):
                if math.isfinite(v):  # dark text on the bright end of viridis
                    ink = "k" if v > (lo + hi) / 2 else "w"
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8, color=ink)
            ax.set_xticks(range(len(xs)), [_show(json.loads(v)) for v in xs])
            ax.set_yticks(range(len(ys)), [_show(json.loads(v)) for v in ys])
            ax.set_xlabel(x)
            ax.set_ylabel(y)
            ax.set_title(label)
        fig.colorbar(im, ax=axes[0].tolist(), label=metric)
        fig.suptitle(title)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _levels(values: Any) -> list[str]:
    vals = list({_key(v): v for v in values}.values())
    vals.sort(key=lambda v: (0, v, "") if _num(v) else (1, 0, _key(v)))
    return [_key(v) for v in vals]
