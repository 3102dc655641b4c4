"""Running a sweep's points on dask.distributed.

One task is one policy at one point, all its repetitions (``execute`` with one job: the
worker is the unit of parallelism). Tasks carry everything they need as data, the
point's run config and its cost overrides, so a worker on another machine needs mmbench
and its plugins installed, not the sweep file. A worker that dies has its tasks run again
elsewhere: that is the scheduler's ``allowed-failures`` (``--retries``); a task that fails
that often raises ``KilledWorker``. Results come back to the client, which alone writes.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from distributed.diagnostics.plugin import WorkerPlugin

from mmbench.errors import ConfigError
from mmbench.sweep.spec import Point
from mmbench.yamlfile import load_yaml


def cost_entries(pt: Point, sweep_name: str) -> dict[str, dict[str, Any]]:
    """The point's cost overrides as a ``--costs`` file's entries: the config's file (if
    any), then the swept constants."""
    entries: dict[str, dict[str, Any]] = {}
    if pt.cost_file:
        doc = load_yaml(pt.cost_file, "costs")
        for key, val in doc["costs"].items():
            entries[key] = val if isinstance(val, dict) else {"ns": val}
    for key, ns in pt.costs.items():
        entries[key] = {"ns": ns, "provenance": f"sweep {sweep_name} point {pt.id}"}
    return entries


def run_task(
    doc: dict[str, Any], costs: dict[str, dict[str, Any]], policy: str, reps: int
) -> dict[str, Any]:
    """On a worker: one policy of one point, ``reps`` repetitions. Returns the runner's
    result, the resolved parameters and the worker's environment."""
    from mmbench.report import environment
    from mmbench.run.config import load_config
    from mmbench.run.runner import execute, resolve

    with tempfile.TemporaryDirectory(prefix="mmbench-point-") as tmp:
        doc = {k: v for k, v in doc.items() if k != "costs"}
        doc["policies"] = [policy]
        doc["reps"] = reps
        if costs:
            table = Path(tmp, "costs.yaml")
            table.write_text(yaml.safe_dump({"costs": costs}), encoding="utf-8")
            doc["costs"] = str(table)
        req = load_config(Path(tmp, "point.yaml"), doc=doc)
        req.jobs = 1
        run = resolve(req)
        (result,) = execute(run)
    return {"result": result, "params": run.spec.values, "environment": environment.collect()}


@contextmanager
def client(scheduler: str | None, workers: int, retries: int) -> Iterator[Any]:
    """A dask Client: on ``scheduler`` (``tcp://HOST:PORT``), or on a LocalCluster of
    ``workers`` processes, one thread each (the model is pure Python: threads would share
    one GIL), bound to 127.0.0.1, no dashboard."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": retries}):
        if scheduler:
            try:
                c = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    "--scheduler", f"cannot reach {scheduler}: {str(exc).splitlines()[0]}"
                ) from None
            try:
                yield c
            finally:
                c.close()
            return
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # no fixed port: several sweeps may run
            silence_logs=logging.ERROR,
        )
        c = Client(cluster)
        try:
            c.register_plugin(IgnoreSigint(), name="mmbench-ignore-sigint")
            yield c
        finally:
            c.close()
            cluster.close()


class IgnoreSigint(WorkerPlugin):
    """A local worker ignores SIGINT: a terminal's Ctrl-C goes to the whole process group,
    and it is the client's to handle (it closes the cluster and says what was saved); a
    worker that caught it would only print a traceback. Its ``setup`` runs on the worker's
    event loop, in the worker process's main thread, where signal handlers are set."""

    def setup(self, worker: Any) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_points(
    dask_client: Any,
    points: list[Point],
    sweep_name: str,
    reps: int,
    on_point: Callable[[Point, list[dict[str, Any]]], None],
    tick: Callable[[str], None] | None = None,
) -> None:
    """Submit every policy of every point; call ``on_point`` with a point's task results
    (in its policy order) as soon as all of them are back, so each is saved at once."""
    from distributed import as_completed

    token = uuid.uuid4().hex[:8]
    pending: dict[str, dict[str, Any]] = {pt.id: {} for pt in points}
    futures = {}
    for pt in points:
        costs = cost_entries(pt, sweep_name)
        for label in pt.policies:
            fut = dask_client.submit(
                run_task,
                pt.doc,
                costs,
                label,
                reps,
                key=f"mmbench-{token}-{pt.id}-{label}",
                pure=False,
            )
            futures[fut] = (pt, label)
    by_id = {pt.id: pt for pt in points}
    try:
        for fut in as_completed(futures):
            pt, label = futures[fut]
            pending[pt.id][label] = fut.result()
            if tick:
                tick(f"{pt.id} {label}")
            if len(pending[pt.id]) == len(pt.policies):
                done = pending.pop(pt.id)
                on_point(by_id[pt.id], [done[x] for x in pt.policies])
    except BaseException:
        dask_client.cancel(list(futures), force=True)
        raise


def default_workers(jobs: int | None, tasks: int) -> int:
    return max(1, jobs or min(tasks, os.cpu_count() or 1))
