"""Workload ``mmu-pressure``: a guest with many processes at the shadow-page limit (seed 004).

``--processes`` guest processes, each with its own page tables mapping ``--process-mb`` of
its own memory, share ``-c`` vCPUs. The guest scheduler runs, every round on each vCPU,
each of its hot processes (the first ``--hot``) and then the next of its cold ones, each
for one slice that touches the process's whole area. With many processes the guest's page
tables need more sps than ``--mmu-pages`` (``KVM_SET_NR_MMU_PAGES``; 64, as in the seed
thread, to make the effect plain), so faults hit ``make_mmu_pages_available()`` and the
reclaim policy decides which sps go: the hot set's or the cold set's.

Reports faults, ``mmu_recycled``, roots zapped while in use, time, and the sp count over
time (series ``mmu_used_pages``, with ``pf_fixed`` over time) for ``mmbench plot``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmbench.backends.vmapi import SlotSpec, VmApi, VmSpec
from mmbench.errors import ConfigError
from mmbench.host.hookspecs import hookimpl
from mmbench.model.memslots import PAGE_SHIFT
from mmbench.model.shadow.reclaim import KVM_MIN_ALLOC_MMU_PAGES
from mmbench.workloads.base import Metric, Param, Samples, WorkloadSpec
from mmbench.workloads.guest_layout import (
    HUGE_PAGE_SIZE,
    KERNEL_RESERVE,
    REGION_PAGES,
    align_up,
    backing_param,
)

MiB = 1 << 20


class MmuPressure:
    name = "mmu-pressure"
    description = "many guest processes with a hot and a cold set, at the shadow-page limit"
    paths = ("reclaim",)
    backends = ("sim",)
    default_plots = ("mmu_used_pages", "mmu_recycled", "pf_fixed", "slice.ms")
    headline = ("run_ms", "hot_slice_ms")
    probe = {"rounds": 10}
    phases = ("hot_slice_ms", "cold_slice_ms")
    params = (
        Param("vcpus", int, 4, "vCPUs the processes share", ("-c", "--vcpus"), min=1, max=64),
        Param("processes", int, 64, "guest processes, each with its own page tables", min=1),
        Param("process_mb", int, 4, "MB each process maps and touches per slice", min=1),
        Param("hot", int, 4, "processes in the hot set (run every round)", min=0),
        Param(
            "shared_mb",
            int,
            0,
            "MB every process also maps and touches (shared memory: one guest page, an"
            " sp per process)",
            min=0,
        ),
        Param(
            "hot_passes",
            int,
            8,
            "passes over its area a hot process makes per slice (it runs longer)",
            min=1,
        ),
        Param("rounds", int, 100, "scheduler rounds per vCPU", min=1, max=1_000_000),
        Param(
            "mmu_pages",
            int,
            64,
            "n_max_mmu_pages (KVM_SET_NR_MMU_PAGES, >= 64); 0: KVM's default, 20 per"
            " mille of guest pages",
            min=0,
        ),
        backing_param("4k"),  # shadow paging maps the guest's 4 KiB pages whatever backs them
    )
    metrics = {
        "run_ms": Metric("ms", "time until every vCPU finished its rounds"),
        "hot_slice_ms": Metric("ms", "mean time of a hot process's pass, first one excluded"),
        "cold_slice_ms": Metric(
            "ms",
            "mean time of a cold process's slice",
            samples=Samples("slice", "ms", where=("hot", 0, 0)),
        ),
        "faults": Metric("", "shadow page faults", kind="count", stat="pf_fixed"),
        "hot_faults": Metric("", "faults in hot slices, first one excluded", kind="count"),
        "mmu_recycled": Metric(
            "", "sps zapped by reclaim at the limit", kind="count", stat="mmu_recycled"
        ),
        "roots_zapped_in_use": Metric(
            "", "of those, roots with root_count != 0 (invalidated, vCPUs reload)", kind="count"
        ),
        "sp_allocs": Metric("", "sps allocated", kind="count", stat="mmu_cache_miss"),
        "max_mmu_pages_used": Metric("", "most sps live at once", kind="count"),
        "n_max_mmu_pages": Metric("", "the limit in force", kind="count"),
        "root_reloads": Metric("", "root reloads by vCPUs (KVM_REQ_MMU_RELOAD)", kind="count"),
        "remote_tlb_flushes": Metric(
            "", "remote TLB flushes", kind="count", stat="remote_tlb_flush"
        ),
        "mmu_lock_max_hold_ms": Metric("ms", "longest mmu_lock hold"),
        "vcpu_stall_ms": Metric("ms", "mmu_lock wait of the vCPUs, summed"),
    }

    # -- layout --------------------------------------------------------------------------
    def layout(self, p: WorkloadSpec, arch: Any) -> VmSpec:
        if p.hot > p.processes:
            raise ConfigError("--hot", f"must be <= --processes ({p.processes}), got {p.hot}")
        if p.vcpus > p.processes:
            raise ConfigError("-c", f"must be <= --processes ({p.processes}), got {p.vcpus}")
        if p.processes - p.hot < p.vcpus:
            raise ConfigError(
                "--hot", f"leaves {p.processes - p.hot} cold processes for {p.vcpus} vCPUs"
            )
        if 0 < p.mmu_pages < KVM_MIN_ALLOC_MMU_PAGES:
            raise ConfigError(
                "--mmu-pages",
                f"must be 0 (KVM's default) or >= {KVM_MIN_ALLOC_MMU_PAGES}"
                f" (KVM_SET_NR_MMU_PAGES refuses less), got {p.mmu_pages}",
            )
        total = (p.processes * p.process_mb + p.shared_mb) * MiB
        if total > arch.max_guest_bytes:
            raise ConfigError("--process-mb", f"{total >> 30} GiB exceeds what {arch.name} models")
        pages = p.process_mb * MiB >> PAGE_SHIFT
        shared = p.shared_mb * MiB >> PAGE_SHIFT
        top = p.processes * align_up(pages, REGION_PAGES)
        probe = [
            [(i * pages, (i + 1) * pages)] + ([(top, top + shared)] if shared else [])
            for i in range(p.processes)
        ]
        pt_pages = arch.page_table_pages(probe)
        gfn = align_up((KERNEL_RESERVE >> PAGE_SHIFT) + pt_pages, REGION_PAGES)
        own = []
        for _ in range(p.processes):
            own.append((gfn, gfn + pages))
            gfn = align_up(gfn + pages, REGION_PAGES)
        common = ((gfn, gfn + shared),) if shared else ()
        gfn = align_up(gfn + shared, REGION_PAGES)
        areas = tuple((area, *common) for area in own)
        return VmSpec(
            slots=(SlotSpec(0, 0, gfn << PAGE_SHIFT, "pc.ram"),),
            areas_per_vcpu=areas,
            pt_gfn=KERNEL_RESERVE >> PAGE_SHIFT,
            max_gfn=gfn,
            nr_vcpus=p.vcpus,
            nr_mmu_pages=p.mmu_pages,
            trace_mmu_pages=True,
            huge_pages=p.backing != "4k",
            huge_page_size=HUGE_PAGE_SIZE[p.backing],
            host_page_size=HUGE_PAGE_SIZE[p.backing],  # what the host allocates
        )

    def schedule(self, p: WorkloadSpec, vcpu: int) -> list[int]:
        """The process vCPU ``vcpu`` runs in each slice (one pass over its area): each round
        its hot processes, ``hot_passes`` slices each, then its next cold one."""
        hot = list(range(vcpu, p.hot, p.vcpus))
        cold = list(range(p.hot + vcpu, p.processes, p.vcpus))
        out = []
        for r in range(p.rounds):
            for proc in hot:
                out += [proc] * p.hot_passes
            out.append(cold[r % len(cold)])
        return out

    # -- the run -------------------------------------------------------------------------
    def run(self, vm: VmApi, p: WorkloadSpec) -> dict[str, float]:
        spec = self.layout(p, vm.arch)
        kvm = vm.create(spec)
        # one entry per (slice, area): (process, first slice of the process in round 0?)
        entries: dict[int, list[tuple[int, bool]]] = {}
        for v in range(p.vcpus):
            slices, entries[v], seen = [], [], set()
            for proc in self.schedule(p, v):
                for g0, g1 in spec.areas_per_vcpu[proc]:
                    slices.append((proc, g0, g1))
                    entries[v].append((proc, proc not in seen))
                seen.add(proc)
            vm.start_schedule(v, slices)
        vm.run_host(lambda: None, name="vmm")
        return self._metrics(vm, p, kvm, entries)

    def _metrics(self, vm: VmApi, p: WorkloadSpec, kvm: Any, entries) -> dict[str, float]:
        hot_ms, cold_ms, hot_faults = [], [], 0
        for r in vm.passes:
            proc, first = entries[r.vcpu][r.index]
            is_hot = proc < p.hot
            vm.event(
                "slice",
                t_ns=r.start_ns,
                vcpu=r.vcpu,
                process=proc,
                hot=is_hot,
                ms=r.ms,
                faults=r.faults,
            )
            if not is_hot:
                cold_ms.append(r.ms)
            elif not first:
                hot_ms.append(r.ms)
                hot_faults += r.faults
        st = vm.stats()
        used = vm.series().get("mmu_used_pages", [])
        return {
            "run_ms": max(r.end_ns for r in vm.passes) / 1e6,
            "hot_slice_ms": float(np.mean(hot_ms)) if hot_ms else 0.0,
            "cold_slice_ms": float(np.mean(cold_ms)),
            "faults": st["pf_fixed"],
            "hot_faults": hot_faults,
            "mmu_recycled": st["mmu_recycled"],
            "roots_zapped_in_use": st["mmu_recycled_roots"],
            "sp_allocs": st["mmu_cache_miss"],
            "max_mmu_pages_used": max((n for _, n in used), default=0),
            "n_max_mmu_pages": kvm.mmu.n_max_mmu_pages,
            "root_reloads": st["root_reloads"],
            "remote_tlb_flushes": st["remote_tlb_flush"],
            "mmu_lock_max_hold_ms": st["mmu_lock_max_hold_ns"] / 1e6,
            "vcpu_stall_ms": st["vcpu_stall_ns"] / 1e6,
        }


@hookimpl
def mmbench_register_workloads(register):
    register(MmuPressure)
