"""Workload ``dirty-log``: dirty_log_perf_test shaped like a live migration that rolls back.

Seed 002: stopping dirty logging on a 4 TiB guest took 13 s because collapsible sptes
were zapped synchronously under mmu_lock. Here, as in
``tools/testing/selftests/kvm/dirty_log_perf_test.c``: ``--vcpus`` vCPUs populate their
slices of a huge-page backed guest; dirty logging starts (write-protect, or eager page
splitting; with or without manual protect and initially-set); for each iteration every
vCPU writes ``--dirty-percent`` of its slice (whole 2 MiB runs) and the VMM collects the
dirty log (``KVM_GET_DIRTY_LOG``, then ``KVM_CLEAR_DIRTY_LOG`` in 1 GiB chunks as QEMU
does with manual protect). Then logging stops while the guest runs on for
``--run-on-s``, reading its memory: the policy decides how 4 KiB sptes become huge again.
"""

from __future__ import annotations

from typing import Any

from mmbench.backends.vmapi import VmApi, VmSpec
from mmbench.errors import ConfigError
from mmbench.host.hookspecs import hookimpl
from mmbench.model.memslots import PAGE_SHIFT
from mmbench.workloads.base import Metric, Param, Samples, WorkloadSpec, choice, parse_bool
from mmbench.workloads.guest_layout import (
    backing_param,
    check_size,
    one_slot_guest,
    size_param,
    vcpu_slices,
)
from mmbench.workloads.sizes import REGION, TiB

SLOT = 0
CLEAR_CHUNK_PAGES = 1 << 18  # QEMU's clear_bitmap_shift default: clear 1 GiB at a time
DISABLE_AFTER_NS = 1_000_000  # the guest is running when the VMM stops logging
ENABLE_MODES = ("wrprot", "eager-split")


class DirtyLog:
    name = "dirty-log"
    description = "dirty_log_perf_test + migration rollback: populate, log, iterate, stop, run on"
    paths = ("dirty-log-stop",)
    phases = (
        "populate_ms",
        "enable_dirty_log_ms",
        "dirty_memory_ms",
        "get_dirty_log_ms",
        "clear_dirty_log_ms",
        "disable_dirty_log_ms",
        "hugepage_recovery_ms",
    )
    default_plots = ("phases", "mmu_lock_hold_hist")
    headline = ("disable_dirty_log_ms", "vcpu_stall_max_ms")
    probe = {"size": "1G", "vcpus": 2, "run_on_s": 1.0}
    default_arch = "x86-tdp"
    params = (
        size_param(4 * TiB, "guest memory: 4T, 64G, 512M or bytes (memstress -b, in total)"),
        Param(
            "vcpus", int, 8, "vCPUs, each with its own slice (-v)", ("-v", "--vcpus"), 1, max=512
        ),
        Param("iterations", int, 2, "dirty + get/clear iterations (-i)", ("-i", "--iterations"), 1),
        Param(
            "dirty_percent",
            float,
            100.0,
            "percent of each slice written per iteration (whole 2 MiB runs)",
            above=0,
            max=100,
        ),
        Param(
            "enable",
            str,
            "wrprot",
            "how logging starts: wrprot (write-protect) or eager-split (kvm.eager_page_split)",
            parse=choice("--enable", ENABLE_MODES),
        ),
        Param(
            "manual_protect",
            bool,
            True,
            "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 (-g turns it off in the selftest)",
            parse=parse_bool,
        ),
        Param(
            "initially_set",
            bool,
            True,
            "KVM_DIRTY_LOG_INITIALLY_SET (with manual protect)",
            parse=parse_bool,
        ),
        backing_param(),
        Param("run_on_s", float, 90.0, "seconds the guest runs on after logging stops", above=0),
        Param(
            "delete_slot_after_s",
            float,
            0.0,
            "seconds after logging stops at which QEMU deletes the slot (memory unplugged):"
            " a lazy-collapse worker still pending must drop it. 0: never",
            min=0,
        ),
    )
    metrics = {
        "populate_ms": Metric("ms", "Populate memory time: every vCPU writes its slice"),
        "enable_dirty_log_ms": Metric("ms", "Enabling dirty logging time"),
        "dirty_memory_ms": Metric(
            "ms",
            "Iteration dirty memory time, mean over iterations",
            samples=Samples("iteration", "dirty_ms"),
        ),
        "get_dirty_log_ms": Metric(
            "ms", "Iteration get dirty log time, mean", samples=Samples("iteration", "get_ms")
        ),
        "clear_dirty_log_ms": Metric(
            "ms",
            "Iteration clear dirty log time, mean (all chunks)",
            samples=Samples("iteration", "clear_ms"),
        ),
        "disable_dirty_log_ms": Metric("ms", "Disabling dirty logging time (the ioctl)"),
        "vcpu_stall_ms": Metric("ms", "vCPU mmu_lock wait after logging stops, summed"),
        "vcpu_stall_max_ms": Metric("ms", "longest single mmu_lock wait of a vCPU in the run"),
        "mmu_lock_max_hold_ms": Metric("ms", "longest mmu_lock hold by the host (ioctls, worker)"),
        "remote_tlb_flushes": Metric(
            "",
            "remote TLB flushes after logging stops (remote_tlb_flush: IPIs sent)",
            kind="count",
            stat="remote_tlb_flush",
        ),
        "remote_tlb_flush_requests": Metric(
            "",
            "kvm_flush_remote_tlbs calls after logging stops",
            kind="count",
            stat="remote_tlb_flush_requests",
        ),
        "faults_after_disable": Metric(
            "", "page faults after logging stops", kind="count", stat="pf_fixed"
        ),
        "hugepage_recovery_ms": Metric(
            "ms", "from the disable until every region is 2 MiB-mapped again (-1: not in run)"
        ),
        "huge_mapped_pct": Metric("%", "guest memory 2 MiB-mapped at the end", False, "rate"),
        "pages_dirtied": Metric("", "pages reported dirty over all iterations", kind="count"),
        "sptes_zapped": Metric("", "leaf sptes zapped in the run", kind="count"),
    }

    def layout(self, p: WorkloadSpec, arch: Any) -> VmSpec:
        # an arch whose model has no dirty logging (x86-shadow) is refused by the model
        # itself; on --backend kvm the kernel does the logging
        check_size(p.size, arch)
        if p.size % REGION:
            raise ConfigError("--size", f"must be a multiple of 2 MiB (got {p.size})")
        if p.initially_set and not p.manual_protect:
            raise ConfigError("--initially-set", "needs --manual-protect true")
        # the region models (x86-tdp, arm64) have no guest page tables: memory from gfn 0,
        # as in dirty_log_perf_test; a guest with real tables (kvm) reserves room for them
        guest_tables = not arch.dirty_log
        areas = vcpu_slices(p.size, p.vcpus, arch, reserve_kernel=guest_tables)
        return one_slot_guest(p.size, areas, 16 if guest_tables else 0, p.backing, SLOT)

    def run(self, vm: VmApi, p: WorkloadSpec) -> dict[str, float]:
        spec = self.layout(p, vm.arch)
        if p.delete_slot_after_s and getattr(vm, "backend", "sim") != "sim":
            raise ConfigError(
                "--delete-slot-after-s", "runs on backend sim only (the slot holds the guest)"
            )
        vm.create(spec)
        areas = [a[0] for a in spec.areas_per_vcpu]
        npages = p.size >> PAGE_SHIFT
        out: dict[str, float] = {}

        def guests(ranges: list[tuple[int, int]]) -> float:
            """Start one write pass per vCPU, run them; the slowest vCPU's time (ms)."""
            n0 = len(vm.passes)
            for v, (g0, g1) in enumerate(ranges):
                vm.start_passes(v, g0, g1, 1, write=True)
            vm.run_host(lambda: None, name="vmm-wait")
            return max(r.ms for r in vm.passes[n0:])

        out["populate_ms"] = guests(areas)
        vm.event("phase", phase="populate", ms=out["populate_ms"])
        if p.manual_protect:
            vm.enable_manual_protect(p.initially_set)
        vm.set_eager_page_split(p.enable == "eager-split")
        times: dict[str, float] = {}
        vm.run_host(lambda: times.update(enable=vm.set_dirty_logging(SLOT, True)), "vmm-enable")
        out["enable_dirty_log_ms"] = times["enable"] / 1e6
        vm.event("phase", phase="enable", ms=out["enable_dirty_log_ms"])

        per_region = REGION >> PAGE_SHIFT
        write_pages = [
            max(per_region, int((g1 - g0) * p.dirty_percent / 100) // per_region * per_region)
            for g0, g1 in areas
        ]
        dirty_ms, get_ms, clear_ms = [], [], []
        dirtied = 0
        for i in range(p.iterations):
            ranges = [(g0, g0 + n) for (g0, _), n in zip(areas, write_pages, strict=True)]
            dirty_ms.append(guests(ranges))
            got: dict[str, float] = {}

            def collect(got: dict[str, float] = got) -> None:
                got["get_ns"], got["pages"] = vm.get_dirty_log(SLOT)
                got["clear_ns"] = 0
                if p.manual_protect:
                    for first in range(0, npages, CLEAR_CHUNK_PAGES):
                        n = min(CLEAR_CHUNK_PAGES, npages - first)
                        got["clear_ns"] += vm.clear_dirty_log(SLOT, first, n)

            vm.run_host(collect, "vmm-migration")
            get_ms.append(got["get_ns"] / 1e6)
            clear_ms.append(got["clear_ns"] / 1e6)
            dirtied += int(got["pages"])
            out[f"iter{i + 1}_dirty_memory_ms"] = dirty_ms[-1]
            out[f"iter{i + 1}_get_dirty_log_ms"] = get_ms[-1]
            out[f"iter{i + 1}_clear_dirty_log_ms"] = clear_ms[-1]
            vm.event(
                "iteration",
                index=i + 1,
                dirty_ms=dirty_ms[-1],
                get_ms=get_ms[-1],
                clear_ms=clear_ms[-1],
                pages=int(got["pages"]),
            )
        out["dirty_memory_ms"] = sum(dirty_ms) / len(dirty_ms)
        out["get_dirty_log_ms"] = sum(get_ms) / len(get_ms)
        out["clear_dirty_log_ms"] = sum(clear_ms) / len(clear_ms)

        # logging stops (the migration rolled back) while the guest runs on
        before = vm.stats()
        t0 = vm.now_ns()
        for v, (g0, g1) in enumerate(areas):
            vm.start_loop(v, g0, g1, int(t0 + p.run_on_s * 1e9), write=False)

        def stop() -> None:
            vm.sleep_ns(DISABLE_AFTER_NS)
            times["disable_at"] = vm.now_ns()
            times["disable"] = vm.set_dirty_logging(SLOT, False)
            if p.delete_slot_after_s:
                vm.sleep_ns(p.delete_slot_after_s * 1e9)
                vm.event("slot-delete", delete_ns=vm.delete_memslot(SLOT))

        vm.run_host(stop, "vmm-disable")
        after = vm.stats()
        out["disable_dirty_log_ms"] = times["disable"] / 1e6
        vm.event("phase", phase="disable", ms=out["disable_dirty_log_ms"])
        # what the backend observed: the kernel shows no mmu_lock figures and no huge-page
        # recovery time, so those metrics exist on the model only
        if "vcpu_stall_ns" in after:
            out["vcpu_stall_ms"] = (after["vcpu_stall_ns"] - before["vcpu_stall_ns"]) / 1e6
            out["vcpu_stall_max_ms"] = after["vcpu_stall_max_ns"] / 1e6
            out["mmu_lock_max_hold_ms"] = after["mmu_lock_max_hold_host_ns"] / 1e6
        out["remote_tlb_flushes"] = after["remote_tlb_flush"] - before["remote_tlb_flush"]
        if "remote_tlb_flush_requests" in after:
            requests = after["remote_tlb_flush_requests"] - before["remote_tlb_flush_requests"]
            out["remote_tlb_flush_requests"] = requests
        out["faults_after_disable"] = after["pf_fixed"] - before["pf_fixed"]
        if "huge_target" in after:
            full_at = after.get("huge_full_at_ns", -1)
            restored = full_at >= times["disable_at"] and after["huge_target"] > 0
            recovery = (full_at - times["disable_at"]) / 1e6 if restored else -1.0
            out["hugepage_recovery_ms"] = recovery
            target = max(1.0, after["huge_target"])
            out["huge_mapped_pct"] = 100.0 * after.get("huge_regions", 0) / target
        out["pages_dirtied"] = dirtied
        out["sptes_zapped"] = after["sptes_zapped"]
        return out


@hookimpl
def mmbench_register_workloads(register):
    register(DirtyLog)
