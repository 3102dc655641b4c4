"""What a run writes: the stored record (``result.json``, ``result.schema.json``) and the
``run --json`` document (``run.schema.json``), with counts as integers and units named.

Stability rule: within one ``schema_version`` fields are only ever added, never renamed,
retyped or removed; a change that does either bumps the version, and the schema files
in this directory say what each version holds.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

RUN_JSON_VERSION = 1  # version of the ``run --json`` document
RUN_SCHEMA_FILE = Path(__file__).with_name("run.schema.json")


def typed(metrics: dict[str, float], info: dict[str, Any]) -> dict[str, float | int]:
    """Counts that are whole numbers as integers (``4559827``, not ``4559827.0``); a mean
    of counts over repetitions stays a float where it is not whole."""
    out: dict[str, float | int] = {}
    for k, v in metrics.items():
        whole = isinstance(v, int | float) and float(v).is_integer() and abs(v) < 2**53
        out[k] = int(v) if whole and getattr(info.get(k), "kind", "") == "count" else v
    return out


def typed_results(results: list[dict[str, Any]], info: dict[str, Any]) -> list[dict[str, Any]]:
    """Every policy's metrics and repetitions with ``typed`` values."""
    out = []
    for r in results:
        r = dict(r)
        if "metrics" in r:
            r["metrics"] = typed(r["metrics"], info)
        if "reps" in r:
            r["reps"] = [typed(m, info) for m in r["reps"]]
        out.append(r)
    return out


def units(info: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, str]:
    """Each reported metric's unit (``""`` for a count), as the workload declares it."""
    names = [m for r in results for m in r.get("metrics", {})]
    return {m: getattr(info.get(m), "unit", "") for m in dict.fromkeys(names)}


def run_document(record: dict[str, Any]) -> dict[str, Any]:
    """The ``run --json`` document of a stored record: the figures without the series
    and the environment (``mmbench show --json`` prints the whole record)."""
    keys = ("policy", "arch", "backend", "kernel", "metrics", "reps", "failed")
    doc = {
        "schema_version": RUN_JSON_VERSION,
        "workload": record["workload"],
        "name": record["name"],
        "params": record["params"],
        "reps": record.get("reps", 1),
        "duration_s": record.get("duration_s"),
        "units": record.get("units", {}),
        "results": [{k: r[k] for k in keys if k in r} for r in record["results"]],
    }
    if "kernel" in record:  # the kernel configuration the run modelled or ran on
        doc["kernel"] = record["kernel"]
    return doc


@cache
def run_schema() -> dict[str, Any]:
    return json.loads(RUN_SCHEMA_FILE.read_text(encoding="utf-8"))
