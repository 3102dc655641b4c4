"""``mmbench bench``: the model's own speed against the kernel's, on one scenario.

Each repetition runs ``mmbench run WORKLOAD ... --policy P`` twice, back to back: once on
the model (backend ``sim``) and once on this host's kernel (backend ``kvm``), each in a
fresh process, so interpreter start-up, imports, argument checks and storing the record
count as they do for a user who types the command. The run's own ``duration_s`` (the
workload alone) is reported beside it, and start-up is the difference. Which backend goes
first alternates between repetitions, so a drift in the host's load falls on both.
Wall time is measured around the child, CPU time and peak RSS come from ``wait4()``'s
rusage of that child alone (``ru_maxrss``).

The kernel row is left out, with the reason in one line, where the kernel backend cannot
run the scenario: /dev/kvm absent or unusable, the kvm plugin not installed or blocked,
an arch other than the host's MMU, or a policy with no kernel knob.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmbench.commands.parsing import positive_int
from mmbench.commands.run import add_policy_and_arch, add_workload_parsers, request_from_args
from mmbench.errors import ConfigError
from mmbench.host.manager import get_host
from mmbench.run.runner import RunRequest, resolve

KERNEL_BACKEND = "kvm"
MODEL_BACKEND = "sim"
FORMATS = ("text", "json")
BENCH_FORMAT = 1  # version of ``bench --format json``
MAX_REPEAT = 100


def _bench_options(p: argparse.ArgumentParser, sub: bool) -> None:
    """Options valid before and after WORKLOAD (as ``run``'s: SUPPRESS in the copies)."""
    d = argparse.SUPPRESS if sub else None
    add_policy_and_arch(
        p,
        d,
        "policy to time; repeat for several (default: the workload's, as run)",
        "arch backend of both runs (default: the workload's; the kernel runs only its own MMU)",
    )
    p.add_argument(
        "--repeat",
        type=positive_int,
        default=d,
        metavar="N",
        help=f"repetitions of each pair of runs (default: 3, at most {MAX_REPEAT})",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default=d,
        help="a text table (default) or one JSON document",
    )


def bench_parser(sub: argparse._SubParsersAction, reg) -> None:
    bench = sub.add_parser(
        "bench",
        help="the model's wall time and peak RSS against the kernel's on the same scenario",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _bench_options(bench, sub=False)
    bench.set_defaults(func=cmd_bench, config=None)
    add_workload_parsers(bench, reg, _bench_options)


@dataclass
class Sample:
    """One child process: ``mmbench run`` of one policy on one backend."""

    wall_s: float
    run_s: float  # the record's duration_s: the workload alone
    cpu_s: float  # user + system, from the child's rusage
    peak_rss_mb: float  # ru_maxrss (KiB on Linux)


@dataclass
class Row:
    policy: str
    backend: str
    samples: list[Sample] = field(default_factory=list)
    skipped: str = ""  # why this backend did not run the policy

    def values(self, name: str) -> list[float]:
        return [getattr(s, name) for s in self.samples]

    def median(self, name: str) -> float:
        return float(statistics.median(self.values(name)))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"policy": self.policy, "backend": self.backend}
        if self.skipped:
            out["skipped"] = self.skipped
            return out
        for name in ("wall_s", "run_s", "cpu_s", "peak_rss_mb"):
            vals = self.values(name)
            out[name] = [round(v, 4) for v in vals]
            out[f"{name}_median"] = round(self.median(name), 4)
            out[f"{name}_min"] = round(min(vals), 4)
            out[f"{name}_max"] = round(max(vals), 4)
        startup = [s.wall_s - s.run_s for s in self.samples]
        out["startup_s_median"] = round(float(statistics.median(startup)), 4)
        return out


def command_args(workload_cls: type, params: dict[str, Any]) -> list[str]:
    """The workload flags as typed, from the values ``run``'s parsing gave (raw strings)."""
    by_name = {prm.name: prm for prm in workload_cls.params}
    out: list[str] = []
    for name, value in params.items():
        prm = by_name[name]
        if prm.switch:
            out += [prm.cli[0]] if value == "true" else []
        else:
            out += [prm.cli[0], str(value)]
    return out


def kernel_refusal(req: RunRequest, policy: str, arch: str) -> str:
    """Why the kernel backend cannot run this policy of the scenario ('' if it can):
    the one line its own ``resolve`` refuses with."""
    try:
        resolve(
            RunRequest(req.workload, dict(req.params), [policy], arch=arch, backend=KERNEL_BACKEND)
        )
    except ConfigError as exc:
        return str(exc)
    return ""


def run_child(argv: list[str], runs_dir: str) -> tuple[Sample | None, str]:
    """One ``mmbench run ... --json`` in a fresh process; (sample, '') or (None, why)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env = {**os.environ, "MMBENCH_RUNS_DIR": runs_dir}
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: the child heard it too; do not leave it behind
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode(errors="replace")
    if proc.returncode:
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        return None, f"exit {proc.returncode}: {lines[-1] if lines else 'no message'}"
    doc = json.loads(stdout)
    failed = [r["failed"] for r in doc["results"] if "failed" in r]
    if failed:
        return None, f"the run failed: {failed[0]}"
    return (
        Sample(
            wall_s=wall,
            run_s=float(doc["duration_s"]),
            cpu_s=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=usage.ru_maxrss / 1024,
        ),
        "",
    )


def cmd_bench(args: argparse.Namespace) -> int:
    if not args.workload:
        names = get_host().registry.names_str("workload")
        raise ConfigError("WORKLOAD", f"name a workload (workloads: {names})")
    repeat = getattr(args, "repeat", None) or 3
    if repeat > MAX_REPEAT:
        raise ConfigError("--repeat", f"must be 1..{MAX_REPEAT} (got {repeat})")
    fmt = getattr(args, "format", None) or "text"
    req = request_from_args(args)  # the run command's parsing, refusals and all
    req.backend = MODEL_BACKEND
    resolved = resolve(req)
    arch = resolved.arch_name
    policies = [p.label for p in resolved.policies]
    flags = command_args(type(resolved.workload), req.params)
    base = [sys.executable, "-m", "mmbench", "run", req.workload, *flags, "--arch", arch]
    rows: dict[tuple[str, str], Row] = {}
    for pol in policies:
        rows[(pol, MODEL_BACKEND)] = Row(pol, MODEL_BACKEND)
        rows[(pol, KERNEL_BACKEND)] = Row(
            pol, KERNEL_BACKEND, skipped=kernel_refusal(req, pol, arch)
        )
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="mmbench-bench-") as runs_dir:
        for i in range(repeat):
            order = (
                (MODEL_BACKEND, KERNEL_BACKEND) if i % 2 == 0 else (KERNEL_BACKEND, MODEL_BACKEND)
            )
            for pol in policies:
                for backend in order:
                    row = rows[(pol, backend)]
                    if row.skipped:
                        continue
                    name = f"bench-{backend}-{len(row.samples)}-{policies.index(pol)}"
                    argv = [*base, "--policy", pol, "--backend", backend, "--json", "--name", name]
                    sample, why = run_child(argv, runs_dir)
                    if sample is None and backend == MODEL_BACKEND:
                        print(
                            f"mmbench: bench: the model's run of {pol} failed, {why}",
                            file=sys.stderr,
                        )
                        return 1
                    if sample is None:  # e.g. the guest does not fit in this host's memory
                        row.skipped, row.samples = f"its run failed, {why}", []
                        continue
                    row.samples.append(sample)
                    _progress(f"{pol} on {backend}: {sample.wall_s:.2f} s ({i + 1}/{repeat})")
            _wipe(Path(runs_dir))  # stored records of a big guest's series add up
    command = " ".join(["mmbench", "run", req.workload, *flags, "--arch", arch])
    doc = document(req.workload, resolved.spec.values, arch, repeat, command, list(rows.values()))
    doc["host"] = {
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpus": os.cpu_count(),
        "bytecode_cached": not os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }
    if fmt == "json":
        print(json.dumps(doc, indent=1))
    else:
        print(render(doc))
    return 0


def _progress(line: str) -> None:
    if sys.stderr.isatty():
        print(f"  {line}", file=sys.stderr, flush=True)


def _wipe(runs_dir: Path) -> None:
    for d in runs_dir.iterdir():
        shutil.rmtree(d) if d.is_dir() else d.unlink()


def document(
    workload: str, params: dict[str, Any], arch: str, repeat: int, command: str, rows: list[Row]
) -> dict[str, Any]:
    """``bench --format json``: each row's samples and their median and min-max, and per
    policy the model/kernel ratios (of the medians, and the spread of the back-to-back
    pairs' ratios)."""
    ratios = []
    by = {(r.policy, r.backend): r for r in rows}
    for r in rows:
        kern = by.get((r.policy, KERNEL_BACKEND))
        if r.backend != MODEL_BACKEND or kern is None or kern.skipped or not kern.samples:
            continue
        pairs = [m.wall_s / k.wall_s for m, k in zip(r.samples, kern.samples, strict=False)]
        ratios.append(
            {
                "policy": r.policy,
                "wall": round(r.median("wall_s") / kern.median("wall_s"), 4),
                "wall_pairs_min": round(min(pairs), 4),
                "wall_pairs_max": round(max(pairs), 4),
                "run": round(r.median("run_s") / kern.median("run_s"), 4),
            }
        )
    return {
        "bench_format": BENCH_FORMAT,
        "workload": workload,
        "params": params,
        "arch": arch,
        "repeat": repeat,
        "command": command,
        "rows": [r.as_dict() for r in rows],
        "ratios": ratios,
    }


def _spread(row: dict[str, Any], name: str, fmt: str) -> str:
    med, lo, hi = (row[f"{name}_{k}"] for k in ("median", "min", "max"))
    return f"{med:{fmt}} ({lo:{fmt}}-{hi:{fmt}})"


def render(doc: dict[str, Any]) -> str:
    """The text table: a row per policy and backend, then the ratios, then what was not run."""
    head = (
        f"{doc['command']} --policy P --backend sim|kvm --json: {doc['repeat']} repetition(s),"
        " each run a fresh process, model and kernel back to back (alternating first)"
    )
    cols = ("policy", "backend", "wall s, median (min-max)", "run s", "start-up s",
            "CPU s", "peak RSS MB, median (max)")  # fmt: skip
    table = []
    for r in doc["rows"]:
        if "skipped" in r:
            continue
        table.append(
            (
                r["policy"],
                "model" if r["backend"] == MODEL_BACKEND else "kernel",
                _spread(r, "wall_s", ".3f"),
                f"{r['run_s_median']:.3f}",
                f"{r['startup_s_median']:.3f}",
                f"{r['cpu_s_median']:.2f}",
                f"{r['peak_rss_mb_median']:.0f} ({r['peak_rss_mb_max']:.0f})",
            )
        )
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(cols)]
    lines = [head, ""]
    for t in (cols, *table):
        lines.append("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip())
    if doc["ratios"]:
        lines.append("")
    for q in doc["ratios"]:
        lines.append(
            f"model/kernel wall time, {q['policy']}: {q['wall']:.3f} of the kernel's"
            f" (back-to-back pairs {q['wall_pairs_min']:.3f}-{q['wall_pairs_max']:.3f};"
            f" the runs alone, without start-up: {q['run']:.3f})"
        )
    skipped = [r for r in doc["rows"] if "skipped" in r]
    reasons = {r["skipped"] for r in skipped}
    if skipped:
        lines.append("")
    if len(reasons) == 1 and len(skipped) == len({r["policy"] for r in doc["rows"]}):
        lines.append(f"kernel not run: {reasons.pop()}")
    else:
        for r in skipped:
            lines.append(f"kernel not run for {r['policy']}: {r['skipped']}")
    lines.append(
        "wall: the whole process as typed; run: the record's duration_s (the workload alone);"
        " start-up: the difference"
    )
    host = doc.get("host", {})
    if host:
        before, after = host["loadavg_1min"]
        lines.append(
            f"host: {host['cpus']} CPUs, load average {before:.2f} before, {after:.2f} after"
            " (others' load slows the kernel's vCPU threads and the model alike)"
        )
        if not host["bytecode_cached"]:
            lines.append(
                "PYTHONDONTWRITEBYTECODE is set: every run compiles mmbench's source again,"
                " which start-up includes"
            )
    return "\n".join(lines)
