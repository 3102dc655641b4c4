"""Names and values as a KVM developer reads them in reports: parameters with human sizes
(``4T``) and hex addresses, the parameters in which runs differ, how long each ran, and a
metric's unit, direction and kernel stat name (``sps_zapped <- mmu_shadow_zapped``)."""

from __future__ import annotations

from typing import Any


def _workload(name: str) -> Any:
    from mmbench.host.manager import get_host

    return get_host().registry.entries["workload"].get(name)


def show_value(workload: str, key: str, value: Any) -> str:
    """A parameter's value as typed on the command line (``4T``, ``0xfebc0000``)."""
    wl = _workload(workload)
    for p in getattr(wl, "params", ()):
        if p.name == key:
            return p.show(value)
    if key.endswith("gpa") and isinstance(value, int):
        return f"{value:#x}"
    return str(value)


def params_text(record: dict[str, Any], keys: list[str] | None = None) -> str:
    """``threads=8 mb=2000 ... size=4T``: a run's parameters (or only ``keys``)."""
    params = record.get("params", {})
    return " ".join(
        f"{k}={show_value(record['workload'], k, v)}"
        for k, v in params.items()
        if keys is None or k in keys
    )


def differing_params(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each parameter whose value is not the same in every run: param -> run -> value."""
    if len(records) < 2:
        return {}
    keys: list[str] = []
    for rec in records:
        keys += [k for k in rec.get("params", {}) if k not in keys]
    out = {}
    for k in keys:
        vals = {rec["name"]: rec.get("params", {}).get(k) for rec in records}
        if len({repr(v) for v in vals.values()}) > 1:
            out[k] = vals
    return out


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "wall time not recorded"
    if seconds < 120:
        return f"{seconds:.1f} s wall"
    return f"{seconds / 60:.1f} min wall"


def compare_header(
    records: list[dict[str, Any]], baseline: str, differing: dict[str, dict[str, Any]]
) -> list[str]:
    """The lines above a comparison: shared parameters, those that differ, each run."""
    first = records[0]
    same = [k for k in first.get("params", {}) if k not in differing]
    lines = [f"{first['workload']} {params_text(first, same)}".rstrip()]
    for k, by_run in differing.items():
        vals = ", ".join(
            f"{run}: {'-' if v is None else show_value(first['workload'], k, v)}"
            for run, v in by_run.items()
        )
        lines.append(f"differs: {k} ({vals})")
    for rec in records:
        ok = [r for r in rec["results"] if "failed" not in r]
        where = sorted(
            {f"{r['arch']} on {r['backend']}, costs '{r.get('costs', '-')}'" for r in ok}
        )
        lines.append(
            f"run {rec['name']}: {duration_text(rec.get('duration_s'))},"
            f" {rec.get('reps', 1)} rep(s), {', '.join(where) or 'all failed'},"
            f" created {rec.get('created', '?')}"
        )
    lines.append(f"baseline: {baseline}")
    return lines


def metric_line(name: str, info: Any, samples: bool = False) -> str:
    """``sps_zapped <- mmu_shadow_zapped (count, lower is better)``."""
    if info is None:
        return f"{name} (undeclared)"
    stat = f" <- {info.stat}" if getattr(info, "stat", "") else ""
    what = info.unit or info.kind
    way = "lower is better" if info.lower_is_better else "higher is better"
    per = f"; p50/p90/p99 of {info.samples.series}.{info.samples.field}" if samples else ""
    return f"{name}{stat} ({what}, {way}{per})"
