"""``mmbench validate``: a fidelity report, the model with a calibrated table against the
kernel on every scenario the kvm backend runs (``scenarios.SCENARIOS``).

Each scenario is played at sizes the calibration did not use (one size will do): on the
model once, since it is deterministic, under the host's kernel configuration (preempt
model, HZ, CPUs: ``hostkernel``, as recorded by ``calibrate``); on the kernel
``--repeat`` times, since its timings here vary up to 3x. Each cell is the model against
the kernel's median, with the kernel's spread (min-max over the repetitions) beside it,
marked inside when the model is within 25% of the median. The summary line counts the
cells inside, times and counts apart (a count tests the model's structure, a time its
costs as well).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmbench.errors import ConfigError
from mmbench.host.manager import get_host
from mmbench.model.sched import KernelConfig
from mmbench.run import assemble

from .hostkernel import host_kernel, model_config
from .scenarios import SCENARIOS, Scenario

# DEFAULT_SIZES_MB (the sizes validate runs) is in commands.py, with its flags
TOLERANCE_PCT = 25.0  # a cell is inside when |model - kernel median| <= 25% of the median
FORMATS = ("text", "markdown", "json")
REPORT_FORMAT = 2  # version of ``validate --format json`` (2: cells with spread, summary)


@dataclass
class Cell:
    """One quantity of one scenario at one size: the model against the kernel's runs."""

    scenario: str
    policy: str
    size_mb: int
    quantity: str
    what: str
    count: bool
    model: float | None
    kernel: list[float]  # one per repetition
    note: str = ""  # why there is no model figure
    unit: str = "ms"  # of a time

    @property
    def median(self) -> float:
        return float(np.median(self.kernel)) if self.kernel else float("nan")

    @property
    def error_pct(self) -> float | None:
        if self.model is None or not self.kernel or not self.median:
            return None
        return (self.model - self.median) / self.median * 100

    @property
    def inside(self) -> bool:
        e = self.error_pct
        return e is not None and abs(e) <= TOLERANCE_PCT

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            kernel_median=self.median if self.kernel else None,
            kernel_min=min(self.kernel, default=None),
            kernel_max=max(self.kernel, default=None),
            error_pct=self.error_pct,
            inside=self.inside,
        )
        return d


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError("--sizes-mb", f"expected MiB sizes like 256,1024, got {text!r}") from None
    if not sizes or any(s < 24 or s % 2 for s in sizes):
        raise ConfigError(
            "--sizes-mb", f"need even sizes >= 24 MiB (the scenarios' smallest guest), got {text!r}"
        )
    return sizes


def play(
    sc: Scenario,
    backend: str,
    size_mb: int,
    costs_file: str | None = None,
    kernel: KernelConfig | None = None,
) -> dict[str, float]:
    """``sc`` on a fresh VM of ``backend`` (closed afterwards); the model under ``kernel``."""
    with assemble(
        sc.policy, arch=sc.arch, costs_file=costs_file, backend=backend, kernel=kernel
    ) as run:
        return sc.play(run.vm, size_mb)


def measure(
    sizes: list[int],
    costs_file: str,
    repeat: int,
    kernel: KernelConfig,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
    background: list[float] | None = None,
) -> list[Cell]:
    """Every scenario at every size: the model once, the kernel ``repeat`` times; and the
    CPUs other processes used during each kernel run (``background``, appended to)."""
    cells = []
    background = [] if background is None else background
    for mb in sizes:
        for sc in scenarios:
            if not sc.sized and mb != sizes[0]:
                continue
            note = ""
            try:
                model: dict[str, float] | None = play(sc, "sim", mb, costs_file, kernel)
            except ConfigError as e:  # the model refuses what it does not model
                model, note = None, f"not modelled: {e.message}"
            runs = []
            for _ in range(repeat):
                run, busy = background_cpus(lambda sc=sc, mb=mb: play(sc, "kvm", mb))
                runs.append(run)
                background.append(busy)
            for q in sc.quantities:
                # a workload reports -1 where no event of that kind happened
                got = [float(r[q.key]) for r in runs if r[q.key] >= 0]
                m = None if model is None or model[q.key] < 0 else float(model[q.key])
                why = note or ("" if m is not None else "the model had no such event")
                if not got:
                    why = "; ".join(filter(None, [why, f"no {q.key} in any kernel run"]))
                elif not np.median(got):  # no relative error against 0
                    why = "; ".join(filter(None, [why, f"the kernel's median {q.key} is 0"]))
                cells.append(
                    Cell(
                        sc.name,
                        sc.policy,
                        mb,
                        q.key,
                        q.what,
                        q.count,
                        m,
                        got,
                        why,
                        q.unit,
                    )
                )
    return cells


def busy_ticks(proc_stat: str, self_stat: str) -> tuple[int, int]:
    """(all CPUs' busy clock ticks, this process's own user+system ticks) from the text of
    /proc/stat and /proc/self/stat.

    /proc/stat's ``user`` and ``nice`` already include ``guest`` and ``guest_nice``
    (``account_guest_time()``, kernel/sched/cputime.c, adds guest time to
    ``CPUTIME_USER``/``CPUTIME_NICE`` and again to ``CPUTIME_GUEST``/``_GUEST_NICE``), so
    the busy time is user + nice + system + irq + softirq + steal, without the guest
    columns: summing every column counted the VM's own vCPU time twice, and once more
    than the process's ``utime`` (which includes its guest time, ``gtime``) takes away,
    as if other processes had run it."""
    fields = [int(x) for x in proc_stat.splitlines()[0].split()[1:]]
    fields += [0] * (8 - len(fields))  # user nice system idle iowait irq softirq steal
    busy = fields[0] + fields[1] + fields[2] + sum(fields[5:8])
    own = self_stat.rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime, stime (every thread of the process)


def _busy_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f, open("/proc/self/stat") as g:
        return busy_ticks(f.read(), g.read())


def background_from(
    before: tuple[int, int], after: tuple[int, int], seconds: float, hz: int
) -> float:
    """The CPUs other processes kept busy between two ``busy_ticks`` readings, on average:
    all busy time less this process's own (its vCPU threads' guest time included)."""
    (b0, o0), (b1, o1) = before, after
    return max(0.0, ((b1 - b0) - (o1 - o0)) / hz / max(seconds, 1e-9))


def background_cpus(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and the CPUs other processes kept busy meanwhile, on average: the kernel
    times of a shared host are inflated by them, and the model knows nothing of them."""
    hz = os.sysconf("SC_CLK_TCK")
    t0, before = time.monotonic(), _busy_ticks()
    out = fn()
    t1, after = time.monotonic(), _busy_ticks()
    return out, background_from(before, after, t1 - t0, hz)


def summary(cells: list[Cell]) -> str:
    """``N of M within 25%`` over every cell with a model figure, then times and counts."""

    def part(cs: list[Cell]) -> str:
        scored = [c for c in cs if c.error_pct is not None]
        return f"{sum(c.inside for c in scored)} of {len(scored)}"

    times = [c for c in cells if not c.count]
    counts = [c for c in cells if c.count]
    line = (
        f"{part(cells)} within {TOLERANCE_PCT:.0f}% of the kernel's median"
        f" (times {part(times)}, counts {part(counts)})"
    )
    unscored = sum(c.error_pct is None for c in cells)
    return line + (f"; {unscored} without a figure on both sides" if unscored else "")


def _fmt(v: float, count: bool) -> str:
    if count:
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def _row(c: Cell) -> list[str]:
    model = "-" if c.model is None else _fmt(c.model, c.count)
    if c.kernel:
        median = _fmt(c.median, c.count)
        spread = f"{_fmt(min(c.kernel), c.count)}-{_fmt(max(c.kernel), c.count)}"
    else:
        median = spread = "-"
    err = "n/a" if c.error_pct is None else f"{c.error_pct:+.0f}%"
    mark = "" if c.error_pct is None else ("inside" if c.inside else "OUTSIDE")
    return [c.what + ("" if c.count else f" ({c.unit})"), model, median, spread, err, mark]


HEAD = ["quantity", "model", "kernel", "spread", "error", ""]


def render(cells: list[Cell], fmt: str, header: dict[str, Any]) -> str:
    """Text (grouped by scenario, at most 100 columns) or a markdown table."""
    notes = sorted({f"{c.size_mb}M {c.scenario} {c.policy}: {c.note}" for c in cells if c.note})
    k = header["model_kernel"]
    intro = [
        f"the model with {header['costs']} (fitted on {header['fit_sizes_mb']} MiB)",
        f"against this kernel ({header['release']}), {header['repeat']} run(s) per cell",
        f"model's host kernel: preempt {k['preempt']}, HZ {k['hz']}, {k['host_cpus']} CPUs,"
        f" {k['sched']}",
        f"spread: the kernel's min-max; inside: within {TOLERANCE_PCT:.0f}% of its median",
    ]
    bg = header["background_cpus"]
    intro.append(
        f"other processes kept {bg['median']:.2f} of {k['host_cpus']} CPUs busy during the"
        f" kernel runs (median; max {bg['max']:.2f})"
    )
    if bg["max"] > 0.25:
        intro.append("  so the kernel's times are inflated by them; the model's are not")
    if fmt == "markdown":
        out = [*(f"{line}  " for line in intro), ""]
        out.append("| size | scenario | policy | " + " | ".join(HEAD) + " |")
        out.append("|" + "|".join("---" for _ in range(len(HEAD) + 3)) + "|")
        for c in cells:
            out.append(
                "| " + " | ".join([f"{c.size_mb} MiB", c.scenario, c.policy, *_row(c)]) + " |"
            )
        out += ["", f"**{summary(cells)}**", *(f"- {n}" for n in notes)]
        return "\n".join(out)
    rows = [_row(c) for c in cells]
    widths = [max(len(r[i]) for r in [HEAD, *rows]) for i in range(len(HEAD))]
    widths[0] = min(widths[0], 100 - 2 - sum(widths[1:]) - len(HEAD))
    out, group = list(intro), None
    for c, r in zip([None, *cells], [HEAD, *rows], strict=True):
        if c is not None and (c.size_mb, c.scenario, c.policy) != group:
            group = (c.size_mb, c.scenario, c.policy)
            out.append(f"{c.size_mb} MiB, {c.scenario}, {c.policy}")
        label = r[0] if len(r[0]) <= widths[0] else r[0][: widths[0] - 1] + "…"
        cols = [
            label.ljust(widths[0]),
            *(v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)),
        ]
        out.append(("  " + " ".join(cols)).rstrip())
    return "\n".join([*out, summary(cells), *notes])


def validate(args: argparse.Namespace) -> int:
    """`mmbench validate` (the flags are in commands.py)."""
    from .backend import KvmBackend

    fmt = "json" if args.json else args.format
    if fmt not in FORMATS:
        raise ConfigError("--format", f"must be one of {', '.join(FORMATS)} (got {fmt!r})")
    sizes = parse_sizes(args.sizes_mb)
    names = list(dict.fromkeys(s.name for s in SCENARIOS))
    unknown = [n for n in args.scenario or () if n not in names]
    if unknown:
        raise ConfigError("--scenario", f"unknown {unknown[0]!r} (allowed: {', '.join(names)})")
    chosen = tuple(s for s in SCENARIOS if not args.scenario or s.name in args.scenario)
    path = Path(args.costs)
    get_host().registry.get("arch", "x86-shadow").costs.with_overrides(path)  # checks it
    cal = (yaml.safe_load(path.read_text()) or {}).get("calibration") or {}
    fitted = set(cal.get("sizes_mb") or [])
    if fitted & set(sizes):
        raise ConfigError(
            "--sizes-mb",
            f"{sorted(fitted & set(sizes))} MiB were used for fitting {path};"
            f" choose sizes other than {sorted(fitted)}",
        )
    if args.repeat < 1:
        raise ConfigError("--repeat", f"must be >= 1 (got {args.repeat})")
    ok, why = KvmBackend().available()
    if not ok:
        raise ConfigError("validate", f"needs the kvm backend, unavailable here: {why}")
    here = host_kernel()
    kernel = model_config(cal.get("host_kernel") or here)
    background: list[float] = []
    cells = measure(sizes, str(path), args.repeat, kernel, chosen, background)
    header = {
        "costs": str(path),
        "fit_sizes_mb": sorted(fitted),
        "kernel": here,
        "release": platform.release(),
        "model_kernel": kernel.as_dict(),
        "repeat": args.repeat,
        "background_cpus": {
            "median": round(float(np.median(background)), 2),
            "max": round(max(background), 2),
        },
    }
    if fmt == "json":
        doc = {"format": REPORT_FORMAT, **header, "summary": summary(cells)}
        print(json.dumps({**doc, "cells": [c.as_dict() for c in cells]}))
    else:
        print(render(cells, fmt, header))
    return 0
