"""``mmbench validate``: the model with a calibrated cost table against the kernel.

One scenario, written once against the VM API and played on both backends at sizes the
calibration did not use: a guest thread populates its memory and makes a warm pass,
rom.sh adds, reads and deletes the 128 KiB ROM slot, the thread makes one more pass
(refaulting whatever the delete zapped), and the VM is destroyed. Under fast-invalidate
(``SLOT_ZAP_ALL`` on) that gives the ROM delete, refault and teardown times; under
zap-slot the ROM delete time again. A second scenario is ``rom-access`` itself with two
guest threads that keep running while rom.sh deletes the ROM slot again and again: the
steady-state ROM delete latency and the time per pass, where contention for mmu_lock (and
whether the kernel yields it) decides the figures. The model runs under the host's kernel
configuration (preempt model, HZ, CPUs: ``hostkernel``), as recorded by ``calibrate``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmbench.backends.vmapi import VmApi
from mmbench.errors import ConfigError
from mmbench.host.manager import get_host
from mmbench.model.sched import KernelConfig
from mmbench.run import assemble
from mmbench.workloads.base import resolve_params
from mmbench.workloads.rom_access import ROM_SLOT, RomAccess

from .calibrate import parse_sizes
from .hostkernel import host_kernel, model_config

DEFAULT_SIZES_MB = (256, 1024)
QUANTITIES = (
    ("fast-invalidate", "rom_delete_ms", "ROM delete, SLOT_ZAP_ALL on"),
    ("fast-invalidate", "refault_pass_ms", "pass after the delete (refaults)"),
    ("fast-invalidate", "teardown_ms", "teardown (last close of the VM fd)"),
    ("zap-slot", "rom_delete_ms", "ROM delete, SLOT_ZAP_ALL off"),
    # counts: the model's structure, not its costs
    ("fast-invalidate", "sps_zapped", "sps zapped by the delete (count)"),
    ("fast-invalidate", "refaults", "faults in the pass after it (count)"),
    # vCPUs running while the ROM slot is deleted (rom-access, 2 threads)
    ("fast-invalidate", "rom_delete_running_ms", "ROM delete while 2 vCPUs run, SLOT_ZAP_ALL on"),
    ("fast-invalidate", "pass_running_ms", "time per pass of 2 vCPUs across ROM deletes"),
)
RUNNING = {"rom_delete_running_ms", "pass_running_ms"}


def scenario(vm: VmApi, size_mb: int) -> dict[str, float]:
    """populate + warm pass, one rom.sh iteration, one pass, destroy; times in ms."""
    wl = RomAccess()
    p = resolve_params(wl.params, {"threads": 1, "mb": size_mb, "passes": 2})
    spec = wl.layout(p, vm.arch)
    vm.create(spec)
    ((g0, g1),) = spec.areas_per_vcpu[0]
    r0, r1 = spec.areas_per_vcpu[1][0]
    vm.start_passes(0, g0, g1, 2)
    vm.run_host(lambda: None, name="vmm-wait")
    out: dict[str, float] = {}

    def rom_sh() -> None:
        vm.add_memslot(ROM_SLOT, p.rom_gpa, p.rom_kib * 1024, "pc.rom")
        vm.guest_access(1, r0, r1)
        before = vm.stats()["mmu_shadow_zapped"]
        out["rom_delete_ms"] = vm.delete_memslot(ROM_SLOT) / 1e6
        out["sps_zapped"] = vm.stats()["mmu_shadow_zapped"] - before

    vm.run_host(rom_sh, name="vmm-rom.sh")
    vm.start_passes(0, g0, g1, 1)
    vm.run_host(lambda: None, name="vmm-wait")
    out["populate_ms"] = vm.passes[0].ms
    out["warm_pass_ms"] = vm.passes[1].ms
    out["refault_pass_ms"] = vm.passes[-1].ms
    out["refaults"] = vm.passes[-1].faults
    out["teardown_ms"] = vm.destroy() / 1e6
    return out


def scenario_running(vm: VmApi, size_mb: int) -> dict[str, float]:
    """``rom-access -c 2 -m SIZE --passes 20 --rom-interval-ms 1``: ROM deletes while two
    guest threads write their memory; mean delete latency and mean warm pass, in ms."""
    wl = RomAccess()
    p = resolve_params(
        wl.params, {"threads": 2, "mb": size_mb, "passes": 20, "rom_interval_ms": 1.0}
    )
    m = wl.run(vm, p)
    return {"rom_delete_running_ms": m["memslot_delete_ms"], "pass_running_ms": m["pass_time_ms"]}


def play(
    backend: str,
    policy: str,
    size_mb: int,
    costs_file: str | None,
    kernel: KernelConfig | None = None,
) -> dict[str, float]:
    """The scenarios on one backend under one policy (fresh VMs, closed afterwards); the
    model under ``kernel``, the host's configuration."""

    def one(fn) -> dict[str, float]:
        with assemble(
            policy, arch="x86-shadow", costs_file=costs_file, backend=backend, kernel=kernel
        ) as run:
            return fn(run.vm, size_mb)

    out = one(scenario)
    if any(pol == policy and key in RUNNING for pol, key, _ in QUANTITIES):
        out.update(one(scenario_running))
    return out


def compare(
    sizes: list[int], costs_file: str, repeat: int = 3, kernel: KernelConfig | None = None
) -> list[dict[str, Any]]:
    """Model once (it is deterministic) under the host's ``kernel`` configuration, kernel
    ``repeat`` times (median: it is noisy)."""
    kernel = kernel or model_config()
    rows = []
    for mb in sizes:
        for policy in dict.fromkeys(q[0] for q in QUANTITIES):
            model = play("sim", policy, mb, costs_file, kernel)
            runs = [play("kvm", policy, mb, None) for _ in range(repeat)]
            real = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
            for pol, key, what in QUANTITIES:
                if pol != policy:
                    continue
                m, k = model[key], real[key]
                rows.append(
                    {
                        "size_mb": mb,
                        "policy": policy,
                        "quantity": key,
                        "what": what,
                        "model": m,
                        "kernel": k,
                        "error_pct": (m - k) / k * 100 if k else None,
                    }
                )
    return rows


class Validate:
    """Predictions of the model (with a calibrated table) vs the kernel, side by side."""

    name = "validate"
    help = "model (with --costs from calibrate) vs /dev/kvm at sizes not used for fitting"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--costs",
            default="costs-kvm.yaml",
            metavar="FILE",
            help="cost table from mmbench calibrate (%(default)s)",
        )
        parser.add_argument(
            "--sizes-mb",
            default=",".join(map(str, DEFAULT_SIZES_MB)),
            help="guest sizes, MiB, not among the calibration's (default: %(default)s)",
        )
        parser.add_argument(
            "--repeat", type=int, default=3, help="kernel runs per point, median (%(default)s)"
        )
        parser.add_argument("--json", action="store_true", help="print the rows as JSON")

    def run(self, args: argparse.Namespace) -> int:
        from .backend import KvmBackend

        sizes = parse_sizes(args.sizes_mb, "--sizes-mb")
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
        rows = compare(sizes, str(path), args.repeat, kernel)
        if args.json:
            doc = {"costs": str(path), "fit_sizes_mb": sorted(fitted), "kernel": here}
            print(json.dumps({**doc, "model_kernel": kernel.as_dict(), "rows": rows}))
            return 0
        print(f"model with {path} (fitted on {sorted(fitted)} MiB) vs this kernel")
        k = kernel.as_dict()
        print(f"model's host kernel: preempt {k['preempt']}, HZ {k['hz']}, {k['host_cpus']} CPUs")
        head = f"{'size':>6}  {'quantity (ms unless a count)':<52} {'model':>10} {'kernel':>10}"
        print(f"{head} {'error':>8}")
        for r in rows:
            label = f"{r['policy']}: {r['what']}"
            err = "n/a" if r["error_pct"] is None else f"{r['error_pct']:+.0f}%"
            fmt = ".3f" if r["quantity"].endswith("_ms") else ".0f"
            print(
                f"{r['size_mb']:>4}M  {label:<52} {r['model']:>10{fmt}}"
                f" {r['kernel']:>10{fmt}} {err:>8}"
            )
        return 0
