"""Scale check for dirty-log and teardown: wall time and peak RSS per policy and size.

Not a test: prints the figures the README quotes. Each run is its own process under
``/usr/bin/time -v`` (one policy, ``--jobs 1``), so the RSS is that run's alone.

    python benchmarks/scale.py            # the headline sizes and a linearity sweep
    python benchmarks/scale.py --quick    # small sizes only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

DIRTY_LOG = ("collapse-sync", "lazy-collapse", "recover-in-place", "tdp-zap-collapsible")
TEARDOWN = {"arm64": ("s2-unmap", "s2-elide"), "x86-tdp": ("zap-all",)}
KEY = {"dirty-log": "disable_dirty_log_ms", "teardown": "teardown_ms"}


def run(workload: str, arch: str, policy: str, size: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as runs:
        cmd = [
            "/usr/bin/time",
            "-v",
            sys.executable,
            "-m",
            "mmbench",
            "run",
            workload,
            "--arch",
            arch,
            "--policy",
            policy,
            "--size",
            size,
            "--jobs",
            "1",
            "--json",
            *extra,
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "MMBENCH_RUNS_DIR": runs}
        )
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    h, m, s = wall.groups()
    metrics = json.loads(proc.stdout)["results"][0]["metrics"]
    return {
        "wall_s": int(h or 0) * 3600 + int(m) * 60 + float(s),
        "rss_mb": int(rss.group(1)) / 1024,
        "metrics": metrics,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes only")
    args = ap.parse_args()
    dl_sizes = ["64G", "256G"] if args.quick else ["512G", "1T", "2T", "4T"]
    td_sizes = ["4G", "16G"] if args.quick else ["16G", "32G", "64G"]
    print(
        f"{'workload':<10} {'arch':<8} {'policy':<17} {'size':>5} {'wall s':>7} "
        f"{'RSS MB':>7} {'modelled':>26}"
    )
    for size in dl_sizes:
        for pol in DIRTY_LOG:
            r = run("dirty-log", "x86-tdp", pol, size, [])
            fig = f"disable {r['metrics'][KEY['dirty-log']]:.3f} ms"
            print(
                f"{'dirty-log':<10} {'x86-tdp':<8} {pol:<17} {size:>5} {r['wall_s']:>7.2f} "
                f"{r['rss_mb']:>7.0f} {fig:>26}",
                flush=True,
            )
    for size in td_sizes:
        for arch, pols in TEARDOWN.items():
            for pol in pols:
                r = run("teardown", arch, pol, size, [])
                fig = f"teardown {r['metrics'][KEY['teardown']]:.3f} ms"
                print(
                    f"{'teardown':<10} {arch:<8} {pol:<17} {size:>5} {r['wall_s']:>7.2f} "
                    f"{r['rss_mb']:>7.0f} {fig:>26}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
