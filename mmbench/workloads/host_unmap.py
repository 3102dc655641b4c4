"""Workload ``host-unmap``: the host unmaps guest memory while the vCPUs keep touching it.

After the kernel's ``mmu_stress_test`` (vCPUs write while the host ``mprotect``s their
memory) and the unmap tests of ``memslot_perf_test`` (``test_memslot_unmap_loop``:
``madvise(MADV_DONTNEED)`` of chunks while a vCPU touches the slot), both in
tools/testing/selftests/kvm/. ``--vcpus`` vCPUs loop over their slices of a ``--size``
guest; once every vCPU has mapped its slice (one pass each, ``populate_ms``), they loop
over it again while the host calls ``VmApi.host_unmap`` ``--unmaps`` times, one
``--unmap-size`` range every ``--interval-ms``, walking across the vCPUs' memory, by
``--how`` (``munmap``: a fresh
mapping over the range, ``dontneed``, ``mprotect``; with mprotect the vCPUs read, so a
write never meets the read-only window, which the real kernel answers with -EFAULT).
KVM's MMU notifier zaps what maps each range; the vCPUs refault it, and faults that race
an invalidation retry.

``play(vm, p)`` runs one scenario on any ``VmApi`` and returns its metrics (what
``validate`` sets beside the model).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmbench.backends.vmapi import VmApi, VmSpec
from mmbench.errors import ConfigError
from mmbench.host.hookspecs import hookimpl
from mmbench.workloads.base import Metric, Param, Samples, WorkloadSpec, choice
from mmbench.workloads.guest_layout import (
    backing_param,
    check_size,
    one_slot_guest,
    size_param,
    vcpu_slices,
)
from mmbench.workloads.sizes import REGION, GiB, MiB, parse_size

HOWS = ("dontneed", "munmap", "mprotect")


class HostUnmap:
    name = "host-unmap"
    headline = ("invalidate_p50_us",)
    # small enough for ``mmbench list --costs`` to run once per cost
    probe = {"size": 256 << 20, "unmap_size": 16 << 20, "unmaps": 4, "interval_ms": 5.0}
    description = "host munmap/MADV_DONTNEED/mprotect of guest memory under running vCPUs"
    paths = ("mmu-notifier",)
    phases = ("populate_ms",)
    default_plots = ("mmu_lock_hold_hist",)
    default_arch = "x86-shadow"  # this host's MMU (tdp_mmu=N)
    params = (
        size_param(1 * GiB, "guest memory: 1G, 64G or bytes"),
        Param("vcpus", int, 2, "vCPUs that keep touching memory", ("-v", "--vcpus"), 1, max=512),
        Param(
            "unmap_size",
            int,
            64 * MiB,
            "bytes per host call (a multiple of 2 MiB)",
            min=REGION,
            parse=parse_size,
            unit="size",
        ),
        Param(
            "how",
            str,
            "dontneed",
            "host call: dontneed, munmap or mprotect",
            parse=choice("--how", HOWS),
        ),
        Param("unmaps", int, 10, "host calls made", min=1, max=100000),
        Param("interval_ms", float, 20.0, "ms between the starts of two host calls", above=0),
        Param("warmup_ms", float, 1000.0, "longest wait for the vCPUs to map their slices", min=0),
        backing_param(),
    )
    metrics = {
        "invalidate_p50_us": Metric(
            "us",
            "host call latency (munmap/madvise/mprotect: notifier start, mm, end), median",
            samples=Samples("host-unmap", "ns", 1e-3),
        ),
        "invalidate_p99_us": Metric("us", "host call latency, 99th percentile"),
        "invalidate_max_us": Metric("us", "host call latency, longest"),
        "kvm_invalidate_p50_us": Metric(
            "us", "KVM's share of a host call (invalidate_range_start + _end), median"
        ),
        "kvm_invalidate_max_us": Metric("us", "KVM's share of a host call, longest"),
        "vcpu_stall_ms": Metric(
            "ms", "vCPU time waiting for mmu_lock or re-faulting an invalidated range"
        ),
        "pass_max_ms": Metric("ms", "longest guest pass over its slice while the host unmapped"),
        "faults_retried": Metric(
            "", "faults that raced an invalidation and retried (RET_PF_RETRY)", kind="count"
        ),
        "refaults": Metric(
            "",
            "faults fixed while the host unmapped (the vCPUs refaulting)",
            kind="count",
            stat="pf_fixed",
        ),
        "remote_tlb_flushes": Metric(
            "", "remote TLB flushes", kind="count", stat="remote_tlb_flush"
        ),
        "sptes_zapped": Metric("", "leaf sptes zapped", kind="count"),
        "cmo_bytes": Metric("B", "bytes cleaned to the PoC (DC CIVAC)", kind="count"),
        "tlbi_count": Metric("", "TLBI instructions issued", kind="count"),
        "populate_ms": Metric("ms", "time for the vCPUs to map their slices first"),
    }

    def layout(self, p: WorkloadSpec, arch: Any) -> VmSpec:
        check_size(p.size, arch)
        if p.size % REGION:
            raise ConfigError("--size", f"must be a multiple of 2 MiB (got {p.size})")
        if p.unmap_size % REGION:
            raise ConfigError("--unmap-size", f"must be a multiple of 2 MiB (got {p.unmap_size})")
        spec = one_slot_guest(p.size, vcpu_slices(p.size, p.vcpus, arch), 16, p.backing)
        span = (spec.areas_per_vcpu[-1][0][1] - spec.areas_per_vcpu[0][0][0]) << 12
        if p.unmap_size > span:
            raise ConfigError(
                "--unmap-size", f"{p.unmap_size} exceeds the vCPUs' memory ({span} bytes)"
            )
        return spec

    def run(self, vm: VmApi, p: WorkloadSpec) -> dict[str, float]:
        return play(vm, p, self.layout(p, vm.arch))


def ranges(spec: VmSpec, unmap_size: int, n: int) -> list[int]:
    """The gpa of each host call: consecutive ranges across the vCPUs' memory, wrapping."""
    lo = spec.areas_per_vcpu[0][0][0] << 12
    hi = spec.areas_per_vcpu[-1][0][1] << 12
    slots = (hi - lo) // unmap_size
    return [lo + (i % slots) * unmap_size for i in range(n)]


def play(vm: VmApi, p: WorkloadSpec, spec: VmSpec | None = None) -> dict[str, float]:
    """One host-unmap scenario on ``vm`` (any backend); returns its metrics. ``p`` holds
    the workload's parameters (``resolve_params(HostUnmap.params, {...})``)."""
    spec = spec or HostUnmap().layout(p, vm.arch)
    vm.create(spec)
    areas = [a for ((a),) in spec.areas_per_vcpu]
    for v, (g0, g1) in enumerate(areas):  # populate: every vCPU maps its slice once
        vm.start_passes(v, g0, g1, 1, write=True)
    vm.run_host(lambda: None, name="vmm-wait")
    populate_ms = max(r.ms for r in vm.passes)
    populated = len(vm.passes)
    write = p.how != "mprotect"
    ms = 1_000_000
    t_begin = vm.now_ns()
    until = t_begin + int((p.unmaps + 1) * p.interval_ms * ms)
    for v, (g0, g1) in enumerate(areas):
        vm.start_loop(v, g0, g1, until, write=write)
    gpas = ranges(spec, p.unmap_size, p.unmaps)
    times: list[int] = []
    marks: dict[str, Any] = {}

    def host() -> None:
        marks["before"] = vm.stats()
        marks["t0"] = t0 = vm.now_ns()
        for i, gpa in enumerate(gpas):
            wait = t0 + (i + 1) * p.interval_ms * ms - vm.now_ns()
            if wait > 0:
                vm.sleep_ns(wait)
            times.append(vm.host_unmap(gpa, p.unmap_size, p.how))
        marks["t1"] = vm.now_ns()

    vm.run_host(host, name="vmm-unmap")
    st = vm.stats()
    before = marks["before"]
    t0, t1 = marks["t0"], marks["t1"]
    lat = np.array(times, dtype=np.float64) / 1e3
    during = [r for r in vm.passes[populated:] if r.end_ns > t0 and r.start_ns < t1]
    out: dict[str, float] = {
        "invalidate_p50_us": float(np.percentile(lat, 50)),
        "invalidate_p99_us": float(np.percentile(lat, 99)),
        "invalidate_max_us": float(lat.max()),
        "populate_ms": populate_ms,
        "refaults": st["pf_fixed"] - before["pf_fixed"],
        "remote_tlb_flushes": st["remote_tlb_flush"] - before["remote_tlb_flush"],
    }
    if during:
        out["pass_max_ms"] = max(r.ms for r in during)
    for key, stat in (
        ("faults_retried", "faults_retried"),
        ("sptes_zapped", "sptes_zapped"),
        ("cmo_bytes", "cmo_bytes"),
        ("tlbi_count", "tlbi"),
    ):
        if stat in st and stat in before:
            out[key] = st[stat] - before[stat]
    if "vcpu_stall_ns" in st:
        stall = st["vcpu_stall_ns"] - before["vcpu_stall_ns"]
        stall += st["mmu_notifier_retry_wait_ns"] - before["mmu_notifier_retry_wait_ns"]
        out["vcpu_stall_ms"] = stall / 1e6
    kvm_ns = [ev["kvm_ns"] for _, ev in vm.series().get("host-unmap", []) if "kvm_ns" in ev]
    if kvm_ns:
        out["kvm_invalidate_p50_us"] = float(np.percentile(kvm_ns, 50)) / 1e3
        out["kvm_invalidate_max_us"] = float(max(kvm_ns)) / 1e3
    return out


@hookimpl
def mmbench_register_workloads(register):
    register(HostUnmap)
