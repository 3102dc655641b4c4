"""A sweep file: a run config (``mmbench run --config``) plus a ``sweep:`` section.

```yaml
workload: rom-access
policies: [zap-slot, fast-invalidate]
params: {passes: 120}
sweep:
  grid:                                  # a mapping, or a list of them (their union)
    params.rom_interval_ms: [500, 2000, 8000]
  sample:                                # and/or: n seeded draws, crossed with the grid
    n: 32
    seed: 1
    space:
      costs: stated                      # every cost of the arch over its stated range
      costs.zap_spte: {range: [20, 90]}  # one cost, uniform in a range (log: true)
  reps: 3                                # repetitions per point (default: the config's)
  claims: ["pass_time_ms: zap-slot < fast-invalidate"]
```

A key is a run-config key (``arch``, ``policies``, ``backend``, ``check``, ``costs``), a
key inside a run-config section (``params.mb``, or any section the config reader knows,
e.g. ``kernel.hz``), or ``costs.NAME``, one constant of the arch's cost table. Every
point is checked by the config reader itself before anything runs, so whatever it
refuses in a config it refuses in a sweep, naming the sweep's field.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmbench.errors import ConfigError
from mmbench.host.manager import Host, get_host
from mmbench.run import config as run_config
from mmbench.sweep import MAX_POINTS
from mmbench.sweep.claims import Claim, check_claim, parse_claim
from mmbench.yamlfile import load_yaml

STATED = "stated"
AXIS_FORMS = "a list of values, {range: [LOW, HIGH]} (grid: with steps: N) or 'stated' (costs)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Sample(_Strict):
    n: int = Field(ge=1)
    seed: int = Field(0, ge=0)
    space: dict[str, Any] = Field(min_length=1)


class _Section(_Strict):
    grid: dict[str, Any] | list[dict[str, Any]] | None = None
    sample: _Sample | None = None
    reps: int | None = Field(None, ge=1, le=1000)
    claims: list[str] = []


@dataclass
class Point:
    id: str
    values: dict[str, Any]  # swept key -> value, in the sweep file's order
    doc: dict[str, Any]  # the point's run config
    costs: dict[str, float] = field(default_factory=dict)  # costs.NAME overrides (ns)
    policies: list[str] = field(default_factory=list)  # labels run here, baseline first
    cost_file: str | None = None  # the point's ``costs:`` file, resolved


@dataclass
class Sweep:
    path: Path
    doc: dict[str, Any]  # the whole file, as read
    points: list[Point]
    axes: list[str]
    reps: int
    claims: list[Claim]
    workload: str
    policies: list[str]  # labels, the first is the baseline
    metrics: list[str]
    grid_axes: list[str] = field(default_factory=list)  # the axes a grid sweeps


@dataclass(frozen=True)
class _Axis:
    key: str
    field: str  # where in the file, for errors
    values: list[Any] | None = None  # discrete values
    low: float | None = None
    high: float | None = None
    steps: int | None = None
    log: bool = False
    integer: bool = False


def load_sweep(path: str | Path, max_points: int = MAX_POINTS, host: Host | None = None) -> Sweep:
    """Read ``path``, check it whole and expand its points; nothing runs or is written."""
    host = host or get_host()
    p = Path(path)
    where = str(p)
    doc = load_yaml(p, "FILE")
    if not isinstance(doc, dict) or "sweep" not in doc:
        raise ConfigError(f"{where}: sweep", "missing (a run config with a 'sweep:' section)")
    base = {k: v for k, v in doc.items() if k != "sweep"}
    base_req = run_config.load_config(p, host, doc=base)  # the config part, as `run` reads it
    try:
        section = _Section.model_validate(doc["sweep"])
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in ("sweep", *err["loc"]))
        raise ConfigError(f"{where}: {loc}", err["msg"]) from None
    wl = host.registry.get("workload", base_req.workload)
    table = host.registry.get("arch", base_req.arch).costs
    grids = section.grid if isinstance(section.grid, list) else [section.grid]
    grids = [] if section.grid is None else grids
    if section.grid is not None and (not grids or any(not g for g in grids)):
        raise ConfigError(f"{where}: sweep.grid", "empty (give KEY: [VALUE, ...])")
    if not grids and section.sample is None:
        raise ConfigError(f"{where}: sweep", "give a grid, a sample, or both")
    grid_axes = [
        [_axis(k, v, f"sweep.grid.{k}", wl, table, grid=True) for k, v in g.items()] for g in grids
    ]
    sample_axes: list[_Axis] = []
    if section.sample is not None:
        for k, v in section.sample.space.items():
            sample_axes += _expand(k, v, "sweep.sample.space", wl, table)
    grid_keys = {a.key for axes in grid_axes for a in axes}
    for a in sample_axes:
        if a.key in grid_keys:
            raise ConfigError(f"{where}: {a.field}", "also in sweep.grid (sweep a key once)")
    n_grid = sum(math.prod(len(a.values or ()) for a in axes) for axes in grid_axes) or 1
    n_sample = section.sample.n if section.sample else 1
    total = n_grid * n_sample
    if total > max_points:
        raise ConfigError(
            f"{where}: sweep",
            f"{total} points, more than {max_points} (raise the limit with --max-points N)",
        )
    combos = [
        dict(zip([a.key for a in axes], vals, strict=True))
        for axes in grid_axes
        for vals in itertools.product(*(a.values for a in axes))
    ] or [{}]
    samples = _draw(sample_axes, section.sample) if section.sample else [{}]
    points = []
    for i, (g, s) in enumerate(itertools.product(combos, samples)):
        values = {**g, **s}
        points.append(_point(f"p{i:04d}", values, base))
    axes = list(
        dict.fromkeys([*[a.key for axes in grid_axes for a in axes], *[a.key for a in sample_axes]])
    )
    fields = {a.key: a.field for a in [*sum(grid_axes, []), *sample_axes]}
    seen: set[str] = set()
    for pt in points:
        pt.policies = _check_point(pt, p, host, fields, where)
        seen.update(pt.policies)
    # every policy the sweep runs: the config's in its order (the baseline first), then
    # those only swept points run, first seen first
    first = [pt_label for pt in points for pt_label in pt.policies]
    labels = list(dict.fromkeys([*_base_labels(p, host, base), *first]))
    labels = [x for x in labels if x in seen]
    reps = section.reps or base_req.reps
    claims = []
    for i, text in enumerate(section.claims):
        f = f"{where}: sweep.claims[{i}]"
        claim = parse_claim(text, f)
        check_claim(claim, f, wl.metrics, labels)
        claims.append(claim)
    grid_keys_ordered = list(dict.fromkeys(a.key for axes in grid_axes for a in axes))
    return Sweep(
        p,
        doc,
        points,
        axes,
        reps,
        claims,
        base_req.workload,
        labels,
        list(wl.metrics),
        grid_keys_ordered,
    )


def _expand(key: str, raw: Any, prefix: str, wl: Any, table: Any) -> list[_Axis]:
    """``costs: stated`` is every cost of the table with a stated range."""
    if key == "costs" and raw == STATED:
        ranged = table.ranged()
        if not ranged:
            raise ConfigError(f"{prefix}.costs", f"cost table {table.name!r} states no range")
        return [_axis(f"costs.{k}", STATED, f"{prefix}.costs", wl, table) for k in ranged]
    return [_axis(key, raw, f"{prefix}.{key}", wl, table)]


def _axis(key: str, raw: Any, where: str, wl: Any, table: Any, grid: bool = False) -> _Axis:
    """One swept key and its values or range, checked against what the key can take."""
    if not isinstance(key, str) or not key:
        raise ConfigError(where, "a key must be a non-empty string")
    top, _, sub = key.partition(".")
    # one workload per sweep; repetitions are sweep.reps, the same at every point
    allowed = [k for k in run_config.KEYS if k not in ("description", "workload", "reps")]
    if top not in allowed:
        raise ConfigError(
            where, f"unknown key (allowed: {', '.join(allowed)}, SECTION.KEY, costs.NAME)"
        )
    numeric, integer = False, False
    if top == "params" and sub:
        prm = {p.name: p for p in wl.params}.get(sub)
        if prm is None:
            known = ", ".join(sorted(p.name for p in wl.params))
            raise ConfigError(where, f"unknown parameter of {wl.name} (known: {known})")
        numeric = prm.type in (int, float)
        integer = prm.type is int
    elif top == "costs" and sub:
        if sub not in table.costs:
            known = ", ".join(sorted(table.costs))
            raise ConfigError(where, f"unknown cost of {table.name!r} (known: {known})")
        numeric = True
    if raw == STATED:
        stated = table.costs[sub].range if top == "costs" and sub else None
        if stated is None:
            why = "states no range" if top == "costs" and sub else "is for costs.NAME keys"
            raise ConfigError(where, f"'stated' {why} (give {AXIS_FORMS})")
        low, high = stated
        if grid:  # the stated box's corners and its default, per cost
            return _Axis(key, where, values=sorted({low, table.costs[sub].ns, high}))
        return _Axis(key, where, low=low, high=high)
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(where, "empty list of values")
        return _Axis(key, where, values=list(raw))
    if not isinstance(raw, dict) or "range" not in raw:
        raise ConfigError(where, f"expected {AXIS_FORMS}, got {raw!r}")
    extra = sorted(set(raw) - {"range", "steps", "log"})
    if extra:
        raise ConfigError(f"{where}.{extra[0]}", "unknown (allowed: range, steps, log)")
    if not numeric:
        raise ConfigError(
            where,
            "a range needs a numeric key (params.NAME of type int or float, costs.NAME);"
            " give a list of values",
        )
    rng = raw["range"]
    nums = isinstance(rng, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in rng
    )
    if not nums or len(rng) != 2:
        raise ConfigError(f"{where}.range", f"expected [LOW, HIGH], two numbers, got {rng!r}")
    if integer and not all(float(x).is_integer() for x in rng):
        raise ConfigError(f"{where}.range", f"{sub} is an integer parameter, got {rng!r}")
    low, high = rng
    if not low < high:
        raise ConfigError(f"{where}.range", f"LOW must be below HIGH, got {rng!r}")
    log = raw.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise ConfigError(f"{where}.log", "true or false; true needs LOW > 0")
    steps = raw.get("steps")
    if grid:
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
            raise ConfigError(f"{where}.steps", f"a grid range needs steps: N >= 2, got {steps!r}")
        return _Axis(key, where, values=_steps(low, high, steps, log, integer))
    if steps is not None:
        raise ConfigError(f"{where}.steps", "only in a grid (a sample draws from the range)")
    return _Axis(key, where, low=low, high=high, log=log, integer=integer)


def _steps(low: float, high: float, steps: int, log: bool, integer: bool) -> list[Any]:
    import numpy as np

    vals = (np.geomspace if log else np.linspace)(low, high, steps)
    if integer:
        return list(dict.fromkeys(int(round(v)) for v in vals))
    return [float(v) for v in vals]


def _draw(axes: list[_Axis], sample: _Sample) -> list[dict[str, Any]]:
    """``n`` points, each key drawn independently (uniform, log-uniform, or one of the
    values), from one seeded generator: the same file draws the same points."""
    import numpy as np

    rng = np.random.default_rng(sample.seed)
    out = []
    for _ in range(sample.n):
        point: dict[str, Any] = {}
        for a in axes:
            if a.values is not None:
                point[a.key] = a.values[int(rng.integers(len(a.values)))]
            elif a.integer:
                point[a.key] = int(rng.integers(int(a.low), int(a.high) + 1))
            elif a.log:
                point[a.key] = float(math.exp(rng.uniform(math.log(a.low), math.log(a.high))))
            else:
                point[a.key] = float(rng.uniform(a.low, a.high))
        out.append(point)
    return out


def _point(pid: str, values: dict[str, Any], base: dict[str, Any]) -> Point:
    doc = copy.deepcopy(base)
    costs: dict[str, float] = {}
    for key, val in values.items():
        top, _, sub = key.partition(".")
        if top == "costs" and sub:
            costs[sub] = val
        elif sub:
            section = doc.setdefault(top, {})
            if not isinstance(section, dict):
                raise ConfigError(key, f"the config's {top!r} is not a mapping")
            section[sub] = val
        else:
            doc[key] = val
    return Point(pid, values, doc, costs)


def _check_point(
    pt: Point, path: Path, host: Host, fields: dict[str, str], where: str
) -> list[str]:
    """What the config reader refuses at this point, named as the sweep's field; returns
    the point's policy labels."""
    from mmbench.run.runner import resolve

    try:
        req = run_config.load_config(path, host, doc=pt.doc)
        labels = [pol.label for pol in resolve(req, host).policies]
        pt.cost_file = req.costs_file
    except ConfigError as exc:
        key = exc.field.removeprefix(f"{where}: ")
        swept = next((f for k, f in fields.items() if key == k or key.startswith(k + ".")), None)
        if swept is None:
            raise
        raise ConfigError(f"{where}: {swept}", f"{exc.message} (point {pt.id})") from None
    table = host.registry.get("arch", req.arch).costs
    for name, ns in pt.costs.items():
        f = f"{where}: {fields[f'costs.{name}']}"
        if name not in table.costs:
            raise ConfigError(f, f"arch {req.arch} has no cost {name!r} (point {pt.id})")
        if not isinstance(ns, int | float) or isinstance(ns, bool) or not 0 <= ns < math.inf:
            raise ConfigError(f, f"must be a finite number >= 0 (ns), got {ns!r}")
    return labels


def _base_labels(path: Path, host: Host, base: dict[str, Any]) -> list[str]:
    from mmbench.run.runner import resolve

    return [
        pol.label for pol in resolve(run_config.load_config(path, host, doc=base), host).policies
    ]
