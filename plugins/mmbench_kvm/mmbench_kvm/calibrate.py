"""``mmbench calibrate``: measure this host's KVM and fit the x86-shadow cost constants.

Each experiment is a small VM on the driver (one vCPU, one data slot of host memory that
is populated before the guest runs, so guest faults time KVM's work and not the host's
page allocator, as a refault does). The kernel's own stats give the counts a time is
made of; least squares over several sizes gives the per-item costs the model charges:

* warm pass, stride 4 KiB                 -> ``touch_page`` (ns per page, no fault)
* populate, three access patterns          -> per fault, per spte installed, per sp
  (warm guest tables: 8 sptes per fault;       allocated: ``fault_exit`` (+ the
  2 MiB stride: 1 sp and 8 sptes per fault;    ``fault_locked`` estimate),
  fresh tables: 1 spte per fault)              ``spte_install``, ``sp_alloc``
* ROM-slot delete, quirk off               -> ``memslot_update`` (a delete does two)
* populate, host memory not populated,    -> ``host_page_fault``, ``host_page_zero``: the time
  THP and 4 KiB backings                      beyond the populate fit, per host page
                                              faulted in and per 4 KiB of them
* teardown of each of those VMs           -> ``vm_destroy``, ``memslot_free_page``: its time
  beyond the zap (``zap_sp``, ``zap_spte`` x what it held), fitted on the slot pages
* ROM-slot delete, quirk on, dense/sparse  -> ``zap_sp``, ``zap_spte``: directly from the
  kernel's ``kvm_mmu_prepare_zap_page`` timestamps inside the delete where tracefs is
  mounted (the mean interval between two sps' zaps is one sp's zap with its sptes, free
  of the SRCU grace period that dominates a delete's time), else from the delete times

The patterns differ in faults:sptes:sps ratios, which is what makes the three populate
costs separable; the same holds for sps:sptes in the two zap patterns.

With ``--reps N`` every experiment runs N times and each repetition is fitted on its own:
a cost is the median of its N fits (robust to one noisy repetition, as kernel timings
here vary up to 3x) with a bootstrap 95% confidence interval of that median
(``scipy.stats.bootstrap``). The costs no experiment here can separate are listed with
the reason, not fitted.
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmbench.errors import ConfigError
from mmbench.report.environment import collect as collect_environment

from . import ioctls as k
from .guest import PAGE_SIZE_2M, PAGE_SIZE_4K, GuestLayout
from .hostkernel import host_kernel
from .kvm_vm import check_host_memory
from .system import KvmSystem
from .tracing import TraceInstance
from .vcpu import Vcpu
from .vm import Vm

MiB = 1 << 20
ROM_BYTES = 128 * 1024
# DEFAULT_FIT_SIZES_MB (the sizes calibrate fits on) is in commands.py, with its flags
DELETE_REPEATS = 5  # SRCU grace periods make single memslot deletes noisy


@dataclass
class Sample:
    """One timed kernel operation and the counts (from KVM's stats) it was made of."""

    kind: str  # warm | populate | delete_slot | delete_all
    pattern: str
    size_mb: int
    ns: int
    counts: dict[str, int] = field(default_factory=dict)


def _delta(a: dict[str, int], b: dict[str, int], key: str) -> int:
    return b.get(key, 0) - a.get(key, 0)


class _Rig:
    """A one-vCPU VM: system slot, a data slot at DATA_BASE, a ROM gpa mapped above it."""

    def __init__(
        self,
        system: KvmSystem,
        size: int,
        *,
        accessed: bool,
        quirk_on: bool,
        thp: bool = True,
        prefault: bool = True,
    ):
        self.base = GuestLayout.DATA_BASE
        self.size = size
        self.rom = self.base + size + PAGE_SIZE_2M
        layout = GuestLayout()
        layout.map(self.base, size, accessed=accessed)
        layout.map(self.rom, ROM_BYTES, accessed=accessed)
        self.vm: Vm = system.create_vm()
        try:
            if not quirk_on:
                self.vm.disable_quirks(k.KVM_X86_QUIRK_SLOT_ZAP_ALL)
            self.vm.load_system_image(layout.build())
            self.vm.add_memslot(1, self.base, size, thp=thp, prefault=prefault)
            self.vcpu: Vcpu = self.vm.create_vcpu()
            self.vcpu.setup_cpl3()
            self.vcpu.claim_thread()
        except BaseException:
            self.vm.close()
            raise

    def stats(self) -> dict[str, int]:
        return {**self.vm.stats(), **self.vcpu.stats()}

    def timed_pass(self, start: int, end: int, stride: int) -> tuple[int, dict[str, int]]:
        s0 = self.stats()
        self.vcpu.set_touch(start, end, stride=stride)
        t0 = _now()
        self.vcpu.run()
        ns = _now() - t0
        s1 = self.stats()
        return ns, {
            "faults": _delta(s0, s1, "pf_fixed"),
            "sptes": _delta(s0, s1, "pages_4k"),
            "sps": _delta(s0, s1, "mmu_cache_miss"),
            "pages": (end - start) // stride,
        }

    def rom_delete(self, trace: TraceInstance | None = None) -> tuple[int, dict[str, int]]:
        """Add the ROM slot, read it once, then time its delete (what rom.sh does). With
        ``trace``, also the span of its ``kvm_mmu_prepare_zap_page`` events."""
        self.vm.add_memslot(2, self.rom, ROM_BYTES, thp=False)
        self.vcpu.set_touch(self.rom, self.rom + ROM_BYTES, write=False)
        self.vcpu.run()
        s0 = self.stats()
        if trace:
            trace.clear()
        ns = self.vm.delete_memslot(2)
        s1 = self.stats()
        sps = _delta(s0, s1, "mmu_shadow_zapped")
        # the model's zap_spte is charged per spte *or child link* an sp held
        out = {"sps": sps, "sptes": -_delta(s0, s1, "pages_4k") + sps}
        if trace:
            counts, first, last, lost = trace.take()
            traced = counts.get("kvm_mmu_prepare_zap_page", 0)
            if traced == sps and traced > 1 and not lost:
                out["span_ns"] = round((last - first) * 1e9)  # sps - 1 intervals
        return ns, out

    def close(self) -> tuple[int, dict[str, int]]:
        """Destroy the VM; its time and what it held (the model's teardown counts)."""
        st = self.stats()
        sps = st.get("mmu_cache_miss", 0) - st.get("mmu_shadow_zapped", 0)
        counts = {
            "sps": sps,
            "sptes": st.get("pages_4k", 0) + sps,  # leaves and child links, as zap_spte
            "slot_pages": sum(ms.size for ms in self.vm.memslots.values()) // PAGE_SIZE_4K,
        }
        return self.vm.close(), counts


def _now() -> int:
    import time

    return time.perf_counter_ns()


def measure(
    system: KvmSystem, sizes_mb: list[int], trace: TraceInstance | None = None
) -> list[Sample]:
    """All calibration experiments at each size (about 3 small VMs per size)."""
    out: list[Sample] = []
    for mb in sizes_mb:
        size = mb * MiB
        check_host_memory(size, "--sizes-mb")
        rig = _Rig(system, size, accessed=True, quirk_on=True)  # warm tables, 8 per fault
        try:
            end = rig.base + size
            ns, c = rig.timed_pass(rig.base, end, PAGE_SIZE_4K)
            out.append(Sample("populate", "4k-warm", mb, ns, c))
            ns, c = rig.timed_pass(rig.base, end, PAGE_SIZE_4K)
            out.append(Sample("warm", "4k", mb, ns, c))
            ns, c = rig.rom_delete(trace)
            out.append(Sample("delete_all", "dense", mb, ns, c))
        finally:
            out.append(_teardown(rig, "dense", mb))
        rig = _Rig(system, size, accessed=True, quirk_on=True)  # one sp per 8 sptes
        try:
            ns, c = rig.timed_pass(rig.base, rig.base + size, PAGE_SIZE_2M)
            out.append(Sample("populate", "2m-stride", mb, ns, c))
            ns, c = rig.rom_delete(trace)
            out.append(Sample("delete_all", "sparse", mb, ns, c))
        finally:
            out.append(_teardown(rig, "sparse", mb))
        rig = _Rig(system, size, accessed=False, quirk_on=False)  # fresh tables, 1 per fault
        try:
            ns, c = rig.timed_pass(rig.base, rig.base + size, PAGE_SIZE_4K)
            out.append(Sample("populate", "4k-fresh", mb, ns, c))
            for _ in range(DELETE_REPEATS):  # quirk off: the guest keeps its sptes
                ns, c = rig.rom_delete()
                out.append(Sample("delete_slot", "rom", mb, ns, c))
        finally:
            out.append(_teardown(rig, "fresh", mb))
        for thp in (True, False):  # host memory not populated: guest faults fault it in
            rig = _Rig(system, size, accessed=True, quirk_on=True, thp=thp, prefault=False)
            try:
                ns, c = rig.timed_pass(rig.base, rig.base + size, PAGE_SIZE_4K)
                host_page = PAGE_SIZE_2M if thp else PAGE_SIZE_4K
                c |= {"host_pages": size // host_page, "host_4k": size // PAGE_SIZE_4K}
                out.append(Sample("populate_host", "thp" if thp else "4k", mb, ns, c))
            finally:
                rig.close()
    return out


def _teardown(rig: _Rig, pattern: str, mb: int) -> Sample:
    ns, counts = rig.close()
    return Sample("teardown", pattern, mb, ns, counts)


def _rel_fit(rows: list[list[float]], ns: list[float]) -> tuple[np.ndarray, float]:
    """Fit minimising relative error (each row scaled by 1/ns); returns (x, rms rel err)."""
    a, b = np.array(rows, dtype=float), np.array(ns, dtype=float)
    w = 1.0 / b
    from scipy.optimize import nnls  # Lawson-Hanson: exact non-negative least squares

    x, _ = nnls(a * w[:, None], np.ones_like(b))
    err = float(np.sqrt(np.mean((a @ x / b - 1.0) ** 2)))
    return x, err


def fit(samples: list[Sample], defaults: Any) -> tuple[dict[str, float], dict[str, float]]:
    """Costs in ns and the fit's rms relative residual per group."""
    by = {kind: [s for s in samples if s.kind == kind] for kind in {s.kind for s in samples}}
    touch = float(np.median([s.ns / s.counts["pages"] for s in by["warm"]]))
    memslot_update = float(np.median([s.ns for s in by["delete_slot"]])) / 2
    pop = by["populate"]
    (c_fault, c_spte, c_sp), err_pop = _rel_fit(
        [[s.counts["faults"], s.counts["sptes"], s.counts["sps"]] for s in pop],
        [s.ns - s.counts["pages"] * touch for s in pop],
    )
    dels = by["delete_all"]
    timed = [s for s in dels if "span_ns" in s.counts]
    if len(timed) >= 2:  # one sp's zap = zap_sp + its sptes x zap_spte, between two events
        (c_zap_sp, c_zap_spte), err_zap = _rel_fit(
            [[1.0, s.counts["sptes"] / s.counts["sps"]] for s in timed],
            [max(1.0, s.counts["span_ns"] / (s.counts["sps"] - 1)) for s in timed],
        )
    else:
        (c_zap_sp, c_zap_spte), err_zap = _rel_fit(
            [[s.counts["sps"], s.counts["sptes"]] for s in dels],
            [max(1.0, s.ns - 2 * memslot_update) for s in dels],
        )
    # teardown: kvm_destroy_vm's time beyond zapping what the VM held
    tds = by.get("teardown", [])
    (c_destroy, c_free_page), err_td = _rel_fit(
        [[1.0, s.counts["slot_pages"]] for s in tds],
        [max(1.0, s.ns - s.counts["sps"] * c_zap_sp - s.counts["sptes"] * c_zap_spte) for s in tds],
    )
    # host memory faulted in by the guest's first touch (hva_to_pfn's slow path): the
    # time beyond the populate fit, per host page faulted in and per 4 KiB zeroed
    hosts = by.get("populate_host", [])
    (c_host_fault, c_host_zero), err_host = _rel_fit(
        [[s.counts["host_pages"], s.counts["host_4k"]] for s in hosts],
        [
            max(
                1.0,
                s.ns
                - s.counts["pages"] * touch
                - s.counts["faults"] * c_fault
                - s.counts["sptes"] * c_spte
                - s.counts["sps"] * c_sp,
            )
            for s in hosts
        ],
    )
    locked = defaults["fault_locked"].ns
    costs = {
        "touch_page": touch,
        "fault_exit": max(0.0, c_fault - locked),
        "spte_install": c_spte,
        "sp_alloc": c_sp,
        "memslot_update": memslot_update,
        "zap_sp": c_zap_sp,
        "zap_spte": c_zap_spte,
        "vm_destroy": c_destroy,
        "memslot_free_page": c_free_page,
        "host_page_fault": c_host_fault,
        "host_page_zero": c_host_zero,
    }
    errors = {"populate": err_pop, "zap": err_zap, "teardown": err_td, "host": err_host}
    return costs, errors


# costs the model charges that these experiments cannot separate, and why
NOT_FITTED = {
    "fault_locked": "the kernel's fault time cannot be split at mmu_lock from outside; an"
    " estimate, subtracted from the fitted per-fault cost",
    "rmap_walk": "an empty rmap head costs too little to see beside the delete's SRCU wait",
    "remote_tlb_flush": "one vCPU here: a flush IPIs nobody, so its cost is in memslot_update",
    "kick_vcpu": "one vCPU here: nobody to kick",
    "lock_handoff": "needs contention on mmu_lock, which one vCPU never makes",
    "root_reload": "a reload is inside the refault pass, not separable by counts",
    "vcpu_flush_exit": "inside the refault pass, not separable by counts",
}


@dataclass
class Estimate:
    """One cost over the repetitions: the median of the per-repetition fits and the
    bootstrap 95% CI of that median (None with one repetition)."""

    ns: float
    ci: tuple[float, float] | None
    per_rep: list[float]


def estimate(per_rep: list[dict[str, float]]) -> dict[str, Estimate]:
    """Median and bootstrap CI of each cost over repetitions' own fits."""
    from scipy.stats import bootstrap

    out = {}
    for name in per_rep[0]:
        vals = np.array([r[name] for r in per_rep], dtype=float)
        ci = None
        if len(vals) > 1 and np.ptp(vals) > 0:
            res = bootstrap(
                (vals,), np.median, confidence_level=0.95, n_resamples=2000,
                method="percentile", random_state=0,
            )  # fmt: skip
            ci = (float(res.confidence_interval.low), float(res.confidence_interval.high))
        elif len(vals) > 1:
            ci = (float(vals[0]), float(vals[0]))
        out[name] = Estimate(float(np.median(vals)), ci, [round(float(v), 2) for v in vals])
    return out


def cost_table_yaml(
    costs: dict[str, Estimate],
    errors: dict[str, float],
    samples: list[Sample],
    sizes: list[int],
    reps: int,
) -> dict[str, Any]:
    env = collect_environment()
    host = env["hostname"]
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    preempt = host_kernel()["preempt"] or "unknown"
    where = (
        f"{host} ({env['cpu']}, kernel {env['kernel']}, preempt {preempt}, modules"
        f" {'+'.join(env['kvm_modules'])}, tdp_mmu={env['kvm_params'].get('kvm.tdp_mmu', '?')})"
        f" on {date}"
    )
    sz = "/".join(map(str, sizes))
    how = {
        "touch_page": "median warm-pass time per page",
        "fault_exit": "per-fault cost from the populate fit, minus fault_locked's estimate"
        " (the kernel's time cannot be split at mmu_lock)",
        "spte_install": "per spte installed, populate fit",
        "sp_alloc": "per sp allocated (mmu_cache_miss), populate fit",
        "memslot_update": "half the median ROM-slot delete time with SLOT_ZAP_ALL off",
        "zap_sp": "per sp zapped (mmu_shadow_zapped), ROM delete fit with SLOT_ZAP_ALL on",
        "zap_spte": "per spte or child link dropped, ROM delete fit with SLOT_ZAP_ALL on",
    }
    if any("span_ns" in s.counts for s in samples if s.kind == "delete_all"):
        how["zap_sp"] = (
            "per sp, from the intervals between kvm_mmu_prepare_zap_page tracepoints inside"
            " ROM deletes with SLOT_ZAP_ALL on (dense and sparse sps)"
        )
        how["zap_spte"] = "per spte or child link, from the same tracepoint intervals"
    how["vm_destroy"] = (
        "fixed part of the last close() of a VM beyond its zap (zap_sp, zap_spte x the sps"
        " and sptes it held), teardown fit"
    )
    how["memslot_free_page"] = "per memslot page freed at teardown, teardown fit"
    how["host_page_fault"] = (
        "per host page a guest's first touch faulted in (THP and 4 KiB backings, host"
        " memory not populated), beyond the populate fit"
    )
    how["host_page_zero"] = "per 4 KiB of those host pages, the same fit"
    group = {"zap_sp": "zap", "zap_spte": "zap", "spte_install": "populate"}
    group |= {"host_page_fault": "host", "host_page_zero": "host"}
    group |= {"vm_destroy": "teardown", "memslot_free_page": "teardown"}
    group |= {"sp_alloc": "populate", "fault_exit": "populate"}
    out = {}
    for name, est in costs.items():
        resid = f", fit rms error {errors[group[name]]:.0%}" if name in group else ""
        ci = f", 95% CI {est.ci[0]:.1f}-{est.ci[1]:.1f} ns" if est.ci else ", one repetition"
        entry: dict[str, Any] = {
            "ns": round(est.ns, 2),
            "provenance": f"mmbench calibrate on {where}: {how[name]}, {sz} MiB guests,"
            f" median of {reps} repetitions' fits{ci}{resid}",
            "per_rep": est.per_rep,
        }
        if est.ci:
            entry["ci95"] = [round(est.ci[0], 2), round(est.ci[1], 2)]
        out[name] = entry
    return {
        "name": f"x86-shadow calibrated on {host} {date}",
        "costs": out,
        "calibration": {
            "host": host,
            "date": date,
            "kernel": platform.release(),
            "preempt": preempt,
            "reps": reps,
            # the running kernel's configuration: validate runs the model under it
            "host_kernel": host_kernel(),
            "sizes_mb": sizes,
            "not_fitted": NOT_FITTED,
            "fit_rms_error": {k: round(v, 4) for k, v in errors.items()},
            "samples": [asdict(s) for s in samples],
        },
    }


def _tracer() -> TraceInstance | None:
    """The kvmmmu tracepoints of a memslot delete, where tracefs is mounted; else the zap
    costs come from delete times (the provenance says which)."""
    try:
        return TraceInstance(("memslot-delete",))
    except (ConfigError, OSError):
        return None


def _half_width(est: Estimate) -> float:
    """Half the CI's width relative to the estimate."""
    return (est.ci[1] - est.ci[0]) / 2 / est.ns if est.ci and est.ns else 0.0


def parse_sizes(text: str, field: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(field, f"expected MiB sizes like 32,64,128, got {text!r}") from None
    if len(sizes) < 2 or any(s < 2 or s % 2 for s in sizes):
        raise ConfigError(field, f"need at least two even sizes >= 2 MiB, got {text!r}")
    return sizes


def calibrate(args: argparse.Namespace) -> int:
    """`mmbench calibrate` (the flags are in commands.py)."""
    from mmbench.host.manager import get_host

    from .backend import KvmBackend

    sizes = parse_sizes(args.sizes_mb, "--sizes-mb")
    if not 1 <= args.reps <= 100:
        raise ConfigError("--reps", f"must be 1..100 (got {args.reps})")
    ok, why = KvmBackend().available()
    if not ok:
        raise ConfigError("calibrate", f"needs the kvm backend, unavailable here: {why}")
    out = Path(args.output)
    if not out.parent.is_dir():
        raise ConfigError("--output", f"directory {out.parent} does not exist")
    defaults = get_host().registry.get("arch", "x86-shadow").costs
    trace = _tracer()
    try:
        with KvmSystem() as system:
            per_rep = [measure(system, sizes, trace) for _ in range(args.reps)]
    finally:
        if trace:
            trace.close()
    fits = [fit(rep, defaults) for rep in per_rep]
    costs = estimate([c for c, _ in fits])
    errors = {g: float(np.median([e[g] for _, e in fits])) for g in fits[0][1]}
    samples = [s for rep in per_rep for s in rep]
    doc = cost_table_yaml(costs, errors, samples, sizes, args.reps)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(out)
    print(
        f"calibrated on {', '.join(map(str, sizes))} MiB guests, {args.reps} repetitions"
        f" ({len(samples)} runs); each cost: median of the repetitions' fits, 95% CI"
    )
    for name, est in costs.items():
        old = defaults[name].ns
        ci = (
            f"[{est.ci[0]:9.1f} .. {est.ci[1]:9.1f}] +-{_half_width(est):4.0%}"
            if est.ci
            else "(one repetition: no CI)"
        )
        print(f"  {name:<15} {est.ns:>10.1f} ns  {ci}   (default {old:g} ns)")
    print("  fit rms error (median): " + ", ".join(f"{k} {v:.1%}" for k, v in errors.items()))
    print("  not fitted: " + "; ".join(f"{k} ({v})" for k, v in NOT_FITTED.items()))
    print(f"wrote {out}")
    return 0
