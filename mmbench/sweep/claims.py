"""Ordering claims, ``METRIC: A < B [< C ...]``, and the share of points where one holds.

A seed's claim is an ordering of policies on one metric (seed 001: zap-slot's pass time
below fast-invalidate's). Over a sweep it is a question of where it holds: at a point it
holds when the policies' means (over repetitions) are strictly in that order. Over a
uniform sample of a box, the share of points estimates the share of the box's volume;
the Wilson interval says how far the estimate can be off for that many points.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from mmbench.errors import ConfigError

_CLAIM = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*:\s*(.+?)\s*$")


@dataclass(frozen=True)
class Claim:
    metric: str
    order: tuple[str, ...]  # policy labels, each below the next ("<") or above (">")
    op: str

    @property
    def text(self) -> str:
        return f"{self.metric}: " + f" {self.op} ".join(self.order)

    def holds(self, means: Mapping[str, Mapping[str, float]]) -> bool | None:
        """At one point (policy label -> metrics): True/False, None when a policy in the
        claim failed or lacks the metric there."""
        vals = []
        for label in self.order:
            m = means.get(label)
            if m is None or self.metric not in m:
                return None
            vals.append(m[self.metric])
        pairs = zip(vals, vals[1:], strict=False)
        return all(a < b if self.op == "<" else a > b for a, b in pairs)


def parse_claim(text: str, field: str) -> Claim:
    """``pass_time_ms: zap-slot < fast-invalidate``; errors name ``field``."""
    m = _CLAIM.match(text) if isinstance(text, str) else None
    ops = {op for op in "<>" if m and op in m.group(2)}
    if not m or len(ops) != 1:
        raise ConfigError(
            field, f"expected 'METRIC: POLICY < POLICY [< ...]' (or '>'), got {text!r}"
        )
    op = ops.pop()
    order = tuple(p.strip() for p in m.group(2).split(op))
    if len(order) < 2 or not all(order):
        raise ConfigError(field, f"an ordering needs two policies or more, got {text!r}")
    if len(set(order)) != len(order):
        raise ConfigError(field, f"a policy appears twice in {text!r}")
    return Claim(m.group(1), order, op)


def check_claim(claim: Claim, field: str, metrics: Iterable[str], policies: Iterable[str]):
    """Refuse a claim on a metric the workload does not report or a policy not run."""
    metrics, policies = list(metrics), list(policies)
    if claim.metric not in metrics:
        raise ConfigError(field, f"unknown metric {claim.metric!r} (known: {', '.join(metrics)})")
    for label in claim.order:
        if label not in policies:
            raise ConfigError(
                field, f"policy {label!r} is not run by this sweep (runs: {', '.join(policies)})"
            )


@dataclass(frozen=True)
class Share:
    claim: Claim
    holds: int
    points: int  # points where every policy of the claim has the metric
    low: float  # Wilson 95% interval of the share
    high: float

    @property
    def share(self) -> float:
        return self.holds / self.points if self.points else float("nan")

    def line(self) -> str:
        if not self.points:
            return f"{self.claim.text}: no point has every policy of the claim"
        return (
            f"{self.claim.text}: holds at {self.holds} of {self.points} points"
            f" ({100 * self.share:.0f}%; 95% CI {100 * self.low:.0f}-{100 * self.high:.0f}%)"
        )


def share(claim: Claim, points: Iterable[Mapping[str, Mapping[str, float]]]) -> Share:
    """How many of ``points`` (each policy label -> mean metrics) the claim holds at."""
    verdicts = [v for v in (claim.holds(p) for p in points) if v is not None]
    k, n = sum(verdicts), len(verdicts)
    low = high = float("nan")
    if n:
        from scipy.stats import binomtest

        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        low, high = float(ci.low), float(ci.high)
    return Share(claim, k, n, low, high)
