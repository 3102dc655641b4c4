"""The comparison table: policies side by side, the first as baseline, % change per metric.

Shaped like the seeds' Before/After and mmtests' compare-kernels: one row per metric,
one column per policy, the baseline's value and each other column's change against it.
"""

from __future__ import annotations

from typing import Any


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1000:
        return f"{int(v):d}"
    return f"{v:.3f}"


def _delta(v: float, base: float) -> str:
    if base == 0:
        return "(   n/a  )" if v else "(  0.00%)"
    return f"({(v - base) / abs(base) * 100:+7.2f}%)"


def comparison_table(record: dict[str, Any], units: dict[str, str] | None = None) -> str:
    """Text table of ``record["results"]``; the first result is the baseline."""
    results = record["results"]
    units = units or {}
    labels = [r["policy"] for r in results]
    metrics = list(results[0]["metrics"])
    name_w = max(len(m) + len(units.get(m, "")) + 3 for m in metrics)
    cells = []
    for m in metrics:
        base = results[0]["metrics"][m]
        row = [_num(base)]
        for r in results[1:]:
            v = r["metrics"][m]
            row.append(f"{_num(v)} {_delta(v, base)}")
        cells.append(row)
    widths = [max(len(labels[i]), *(len(row[i]) for row in cells)) for i in range(len(labels))]
    head = f"{'':<{name_w}}" + "".join(
        f"  {lab:>{w}}" for lab, w in zip(labels, widths, strict=True)
    )
    lines = [_title(record), head]
    for m, row in zip(metrics, cells, strict=True):
        unit = f" [{units[m]}]" if units.get(m) else ""
        label = f"{m}{unit}"
        lines.append(
            f"{label:<{name_w}}" + "".join(f"  {c:>{w}}" for c, w in zip(row, widths, strict=True))
        )
    return "\n".join(lines)


def _title(record: dict[str, Any]) -> str:
    params = " ".join(
        f"{k}=0x{v:x}" if k.endswith("gpa") and isinstance(v, int) else f"{k}={v}"
        for k, v in record.get("params", {}).items()
    )
    first = record["results"][0]
    return (
        f"{record['workload']} {params}\n"
        f"run {record.get('name', '-')}: arch {first['arch']}, backend {first['backend']},"
        f" costs '{first.get('costs', '-')}'; baseline {first['policy']}, change vs baseline"
    )
