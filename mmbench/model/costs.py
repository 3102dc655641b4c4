"""Cost tables: what each model primitive charges to the virtual clock, and why.

Every constant carries its provenance, one of four kinds (``Cost.kind``):

- ``measured``: on a named host, kernel and preempt model, on a date, with its spread
  (``range``: a CI or the runs' spread); ``mmbench calibrate`` writes these.
- ``derived``: from a cited public figure: ``ref`` (URL, lore message or kernel commit),
  ``figure`` (the number as published) and ``derivation`` (the arithmetic, one line).
- ``estimate``: reasoning (``provenance``) and a stated ``range``.
- ``absent``: 0 ns because the mechanism does not exist on the arch (the provenance says
  which kernel code shows it).

Build them with ``Cost.measured``, ``Cost.derived``, ``Cost.estimate`` and
``Cost.absent``; ``Cost.missing()`` says what a cost lacks (``mmbench list --costs``
prints it, ``tests/test_costs.py`` fails on it for every registered arch). ``mmbench
calibrate`` writes tables in YAML and ``--costs FILE`` loads one over an arch's defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmbench.errors import ConfigError
from mmbench.yamlfile import load_yaml

KINDS = ("measured", "derived", "estimate", "absent")


@dataclass(frozen=True)
class Cost:
    """One constant. ``range`` (low, high ns) is where the constant may lie: the spread
    of a measurement, the bounds a derivation or an estimate's reasoning gives; ``mmbench
    sweep`` samples it (``costs: stated``). ``provenance`` is the one-line source; the
    other fields are its parts, by ``kind`` (see the module docstring)."""

    ns: float
    provenance: str
    doc: str = ""
    range: tuple[float, float] | None = None
    kind: str = ""
    ref: str = ""  # derived: URL, lore message-id or commit
    figure: str = ""  # derived: the published number
    derivation: str = ""  # derived: the arithmetic from figure to ns
    host: str = ""  # measured: where, on which kernel and preempt model, when
    kernel: str = ""
    preempt: str = ""
    date: str = ""

    def __post_init__(self) -> None:
        if self.range is not None and not 0 <= self.range[0] <= self.ns <= self.range[1]:
            raise ValueError(f"cost {self.ns} ns outside its stated range {self.range}")

    @classmethod
    def measured(
        cls,
        ns: float,
        how: str,
        doc: str = "",
        *,
        host: str,
        kernel: str,
        preempt: str,
        date: str,
        spread: tuple[float, float],
    ) -> Cost:
        """A measurement: ``spread`` is its CI or the runs' range (ns)."""
        prov = (
            f"measured on {host}, kernel {kernel}, preempt {preempt}, {date}: {how};"
            f" spread {_ns(spread[0])}-{_ns(spread[1])} ns"
        )
        return cls(ns, prov, doc, spread, "measured", host=host, kernel=kernel,
                   preempt=preempt, date=date)  # fmt: skip

    @classmethod
    def derived(
        cls,
        ns: float,
        doc: str = "",
        *,
        ref: str,
        figure: str,
        derivation: str,
        range: tuple[float, float] | None = None,
    ) -> Cost:
        """From a cited public figure: where, the figure, the arithmetic."""
        prov = f"{ref}: {figure}; {derivation}"
        return cls(ns, prov, doc, range, "derived", ref=ref, figure=figure, derivation=derivation)

    @classmethod
    def estimate(cls, ns: float, why: str, doc: str = "", *, range: tuple[float, float]) -> Cost:
        """An estimate: the reasoning and the range it gives."""
        return cls(ns, f"estimate: {why}", doc, range, "estimate")

    @classmethod
    def absent(cls, why: str, doc: str = "unused") -> Cost:
        """0 ns: the arch has no such mechanism (``why`` names the kernel code)."""
        return cls(0.0, f"absent: {why}", doc, None, "absent")

    def missing(self) -> list[str]:
        """What this cost's provenance lacks for its kind (empty: complete)."""
        if self.kind not in KINDS:
            return [f"kind (one of {', '.join(KINDS)})"]
        need = {"measured": ("host", "kernel", "preempt", "date", "range")}
        need |= {"derived": ("ref", "figure", "derivation"), "estimate": ("range",)}
        out = [f for f in need.get(self.kind, ()) if not getattr(self, f)]
        if not self.provenance.strip():
            out.append("provenance")
        if self.kind == "absent" and self.ns != 0:
            out.append("ns == 0 (an absent mechanism costs nothing)")
        return out

    def as_dict(self) -> dict[str, Any]:
        """The cost as ``list --costs --format json`` and ``to_yaml`` write it."""
        out: dict[str, Any] = {"ns": self.ns, "kind": self.kind, "provenance": self.provenance}
        out["range"] = list(self.range) if self.range is not None else None
        for f in ("ref", "figure", "derivation", "host", "kernel", "preempt", "date"):
            if getattr(self, f):
                out[f] = getattr(self, f)
        return out


def _ns(x: float) -> str:
    return f"{x:.3g}"


# Host user space touching guest memory through its own mapping: no KVM primitive, so no
# arch table has it; a table may override it under the same name.
HOST_TOUCH_PAGE = Cost(
    19.7,
    "measured: one qword written per 4 KiB page over 512 MiB of faulted private anonymous"
    " memory (numpy strided store), 15 repetitions, median 19.7 ns, min 18.5, max 23.5;"
    " this development host (2 CPUs, nested under kvm_pvm), Linux 6.18.44, 2026",
    "host write of one qword per guest page (memslot_perf_test's rw loop)",
    (18.5, 23.5),
)


class CostTable:
    """Named costs in nanoseconds; attribute access gives the number."""

    def __init__(self, name: str, costs: Mapping[str, Cost]) -> None:
        self.name = name
        self.costs = dict(costs)

    def __getattr__(self, key: str) -> float:
        # Only reached on a miss: the number is then kept as an attribute, so the fault
        # path's many lookups are plain attribute reads (``costs`` is never changed in
        # place; ``with_overrides`` builds a new table).
        try:
            ns = self.__dict__["costs"][key].ns
        except KeyError:
            raise AttributeError(f"cost table {self.name!r} has no cost {key!r}") from None
        self.__dict__[key] = ns
        return ns

    def __getitem__(self, key: str) -> Cost:
        return self.costs[key]

    def with_overrides(self, path: str | Path) -> CostTable:
        """This table with the costs in a YAML file (from ``mmbench calibrate``) applied."""
        p = Path(path)
        doc = load_yaml(p, "--costs")
        entries = (doc or {}).get("costs") if isinstance(doc, dict) else None
        if not isinstance(entries, dict):
            raise ConfigError("--costs", f"{p}: expected a mapping 'costs: {{name: ...}}'")
        merged = dict(self.costs)
        cal = doc.get("calibration") if isinstance(doc.get("calibration"), dict) else None
        for key, val in entries.items():
            if key not in merged:
                raise ConfigError(
                    f"--costs {p}: costs.{key}",
                    f"unknown cost (known: {', '.join(sorted(merged))})",
                )
            if isinstance(val, dict):
                ns, prov = val.get("ns"), str(val.get("provenance", f"file {p}"))
            else:
                ns, prov = val, f"file {p}"
            if not isinstance(ns, int | float) or isinstance(ns, bool) or not 0 <= ns < math.inf:
                raise ConfigError(
                    f"--costs {p}: costs.{key}", f"must be a finite number >= 0 (ns), got {ns!r}"
                )
            merged[key] = _override(float(ns), prov, merged[key], val, cal)
        name = str(doc.get("name", f"{self.name}+{p.name}"))
        return CostTable(name, merged)

    def ranged(self) -> dict[str, tuple[float, float]]:
        """The costs with a stated range, by name."""
        return {k: c.range for k, c in self.costs.items() if c.range is not None}

    def to_yaml(self) -> str:
        import yaml  # PyYAML only when a table is written or read (start-up)

        return yaml.safe_dump(
            {
                "name": self.name,
                "costs": {k: c.as_dict() for k, c in self.costs.items()},
            },
            sort_keys=True,
        )


def _range_for(ns: float, stated: tuple[float, float] | None) -> tuple[float, float] | None:
    """An override keeps the default's stated range when it lies inside it (a sweep
    samples the box); a value outside it was measured or chosen elsewhere: no range."""
    if stated is not None and stated[0] <= ns <= stated[1]:
        return stated
    return None


def _override(ns: float, prov: str, default: Cost, val: Any, cal: dict | None) -> Cost:
    """A cost from a ``--costs`` file. A calibration's (``mmbench calibrate`` writes a
    ``calibration`` block naming host, kernel, preempt model and date) is a measurement
    with its CI (else its repetitions' range) as spread; any other value is the file's,
    keeping the default's range only where it lies inside it (a sweep's point)."""
    if cal is not None and isinstance(val, dict):
        ci = val.get("ci95") or (
            [min(val["per_rep"]), max(val["per_rep"])] if val.get("per_rep") else None
        )
        spread = (min(float(ci[0]), ns), max(float(ci[1]), ns)) if ci else (ns, ns)
        return Cost(ns, prov, default.doc, spread, "measured", host=str(cal.get("host", "")),
                    kernel=str(cal.get("kernel", "")), preempt=str(cal.get("preempt", "")),
                    date=str(cal.get("date", "")))  # fmt: skip
    kind = "estimate" if _range_for(ns, default.range) else ""
    return Cost(ns, prov, default.doc, _range_for(ns, default.range), kind)
