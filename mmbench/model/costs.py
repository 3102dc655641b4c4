"""Cost tables: what each model primitive charges to the virtual clock, and why.

Every constant carries its provenance: a measurement on a named host, a published
figure, or an explicit estimate. ``mmbench calibrate`` writes tables in the same format
(YAML) and ``--costs FILE`` loads one over an arch backend's defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmbench.errors import ConfigError
from mmbench.yamlfile import load_yaml


@dataclass(frozen=True)
class Cost:
    """One constant. ``range`` (low, high ns) is where the constant may lie: the spread
    of a measurement, or the bounds an estimate's reasoning gives; ``mmbench sweep``
    samples it (``costs: stated``). None where the provenance states none."""

    ns: float
    provenance: str
    doc: str = ""
    range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.range is not None and not 0 <= self.range[0] <= self.ns <= self.range[1]:
            raise ValueError(f"cost {self.ns} ns outside its stated range {self.range}")


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
        try:
            return self.__dict__["costs"][key].ns
        except KeyError:
            raise AttributeError(f"cost table {self.name!r} has no cost {key!r}") from None

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
            merged[key] = Cost(float(ns), prov, merged[key].doc, _range_for(ns, merged[key].range))
        name = str(doc.get("name", f"{self.name}+{p.name}"))
        return CostTable(name, merged)

    def ranged(self) -> dict[str, tuple[float, float]]:
        """The costs with a stated range, by name."""
        return {k: c.range for k, c in self.costs.items() if c.range is not None}

    def to_yaml(self) -> str:
        return yaml.safe_dump(
            {
                "name": self.name,
                "costs": {
                    k: {"ns": c.ns, "provenance": c.provenance} for k, c in self.costs.items()
                },
            },
            sort_keys=True,
        )


def _range_for(ns: float, stated: tuple[float, float] | None) -> tuple[float, float] | None:
    """An override keeps the default's stated range when it lies inside it (a sweep
    samples the box); a value outside it was measured or chosen elsewhere: no range."""
    if stated is not None and stated[0] <= ns <= stated[1]:
        return stated
    return None
