"""Workload ``rom-access``: ``./mmtest -c 8 -m 2000 -e ./rom.sh`` (seeds 000 and 001).

``-c`` guest threads, each in its own process on its own vCPU, write one qword per 4 KiB
page of ``-m`` MB in passes (mmtest's time per pass). Meanwhile rom.sh, on a vCPU of its
own, reads a PCI option ROM every ``--rom-interval-ms``: QEMU maps the ROM BAR (memslot
add), the guest kernel reads it, QEMU unmaps it (memslot delete) -- and the delete is where
the invalidation policy runs.

Guest layout (QEMU pc-like): RAM below the 3 GiB PCI hole in slot 0 and above 4 GiB in
slot 1; the ROM slot in the hole at ``--rom-gpa``; guest page tables at the start of RAM.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmbench.backends.vmapi import SlotSpec, VmApi, VmSpec
from mmbench.errors import ConfigError
from mmbench.host.hookspecs import hookimpl
from mmbench.model.memslots import PAGE_SHIFT, Memslot, Memslots
from mmbench.model.shadow.reclaim import KVM_MIN_ALLOC_MMU_PAGES
from mmbench.workloads.base import Metric, Param, Samples, WorkloadSpec, parse_int_auto
from mmbench.workloads.guest_layout import KERNEL_RESERVE, REGION_PAGES, align_up
from mmbench.workloads.sizes import size_text

MiB = 1 << 20
GiB = 1 << 30
LOW_RAM_END = 3 * GiB  # pc machine: RAM above this moves above 4 GiB
HIGH_RAM_START = 4 * GiB
ROM_SLOT = 2


class RomAccess:
    name = "rom-access"
    description = "mmtest -c N -m MB -e ./rom.sh: memory passes while rom.sh remaps a PCI ROM"
    paths = ("memslot-delete", "reclaim")  # reclaim: with --mmu-pages, composed (+)
    params = (
        Param(
            "threads",
            int,
            8,
            "guest threads, one vCPU each (mmtest -c)",
            ("-c", "--threads"),
            min=1,
            max=256,
        ),
        Param("mb", int, 2000, "MB each thread writes per pass (mmtest -m)", ("-m", "--mb"), min=1),
        Param("passes", int, 30, "passes per thread; the first populates", min=2, max=100000),
        Param("rom_interval_ms", float, 500.0, "rom.sh: pause between ROM reads (ms)", above=0),
        Param("rom_kib", int, 128, "size of the option ROM (KiB, multiple of 4)", min=4, max=16384),
        Param(
            "rom_jitter",
            float,
            0.2,
            "rom.sh: each pause is interval x U(1-j, 1+j), as a shell loop's sleep varies",
            min=0,
            max=0.99,
        ),
        Param("seed", int, 0, "random seed (rom.sh pauses); repetitions use seed+i", min=0),
        Param(
            "rom_gpa",
            int,
            0xFEBC0000,
            "guest-physical address of the ROM BAR",
            parse=parse_int_auto,
            min=0,
            unit="gpa",
        ),
        Param(
            "mmu_pages",
            int,
            0,
            "n_max_mmu_pages (KVM_SET_NR_MMU_PAGES, >= 64); 0: KVM's default, 20 per mille"
            " of guest pages (compose a reclaim policy: --policy zap-slot+lru-scan)",
            min=0,
        ),
    )
    default_plots = ("pass.ms", "rom-access.delete_ns", "mmu_lock_hold_hist")
    phases = ("populate_ms", "pass_time_ms", "memslot_add_ms", "memslot_delete_ms")
    metrics = {
        "pass_time_ms": Metric(
            "ms",
            "mean time of a warm pass (mmtest's figure)",
            samples=Samples("pass", "ms", where=("index", 1, float("inf"))),
        ),
        "populate_ms": Metric(
            "ms",
            "mean time of the first pass, which faults everything in",
            samples=Samples("pass", "ms", where=("index", 0, 0)),
        ),
        "memslot_delete_ms": Metric(
            "ms",
            "ROM memslot delete latency (the policy's flush)",
            samples=Samples("rom-access", "delete_ns", 1e-6),
        ),
        "memslot_add_ms": Metric(
            "ms", "ROM memslot add latency", samples=Samples("rom-access", "add_ns", 1e-6)
        ),
        "rom_access_ms": Metric("ms", "one rom.sh iteration: add, guest read, delete"),
        "rom_reads": Metric("", "ROM reads during the run", kind="count"),
        "sptes_zapped": Metric("", "leaf sptes zapped", kind="count"),
        "sps_zapped": Metric("", "shadow pages zapped", kind="count", stat="mmu_shadow_zapped"),
        "sp_allocs": Metric("", "shadow pages allocated", kind="count", stat="mmu_cache_miss"),
        "refaults": Metric("", "page faults in warm passes", kind="count", stat="pf_fixed"),
        "remote_tlb_flushes": Metric(
            "", "remote TLB flushes", kind="count", stat="remote_tlb_flush"
        ),
        "lock_breaks": Metric("", "mmu_lock breaks taken by zaps", kind="count"),
        "mmu_recycled": Metric(
            "", "sps zapped by reclaim at n_max_mmu_pages", kind="count", stat="mmu_recycled"
        ),
        "mmu_lock_max_hold_ms": Metric("ms", "longest mmu_lock hold"),
        "vcpu_stall_ms": Metric("ms", "mmu_lock wait of the guest threads' vCPUs, summed"),
        "vcpu_stall_max_ms": Metric("ms", "longest single mmu_lock wait of a vCPU"),
    }

    # -- layout --------------------------------------------------------------------------
    def layout(self, p: WorkloadSpec, arch: Any) -> VmSpec:
        if arch.region_granular:
            raise ConfigError(
                "--arch", "rom-access needs 4 KiB slots and guest page tables: use x86-shadow"
            )
        thread_pages = p.mb * MiB >> PAGE_SHIFT
        rom_bytes = p.rom_kib * 1024
        if rom_bytes % 4096:
            raise ConfigError("--rom-kib", f"must be a multiple of 4 (got {p.rom_kib})")
        if p.rom_gpa % 4096:
            raise ConfigError("--rom-gpa", f"must be 4 KiB aligned (got 0x{p.rom_gpa:x})")
        if p.rom_gpa + rom_bytes > arch.max_guest_bytes:  # per-gfn state up to the ROM's end
            raise ConfigError(
                "--rom-gpa",
                f"0x{p.rom_gpa:x} + {size_text(rom_bytes)} lies beyond the"
                f" {size_text(arch.max_guest_bytes)} of guest-physical space arch {arch.name}"
                " models",
            )
        total = p.threads * p.mb * MiB
        if total > arch.max_guest_bytes:
            raise ConfigError(
                "-m",
                f"{p.threads} x {p.mb} MB = {total / GiB:.0f} GiB exceeds what arch"
                f" {arch.name} models ({arch.max_guest_bytes / GiB:.0f} GiB)",
            )
        if 0 < p.mmu_pages < KVM_MIN_ALLOC_MMU_PAGES:
            raise ConfigError(
                "--mmu-pages",
                f"must be 0 (KVM's default) or >= {KVM_MIN_ALLOC_MMU_PAGES}"
                f" (KVM_SET_NR_MMU_PAGES refuses less), got {p.mmu_pages}",
            )
        rom0 = p.rom_gpa >> PAGE_SHIFT
        rom_area = (rom0, rom0 + (rom_bytes >> PAGE_SHIFT))
        # thread areas, after a reserve for the kernel and its page tables
        areas: list[tuple[int, int]] = []
        probe = [[(i * thread_pages, (i + 1) * thread_pages)] for i in range(p.threads)]
        pt_pages = arch.page_table_pages([*probe, [rom_area]])
        gfn = align_up((KERNEL_RESERVE >> PAGE_SHIFT) + pt_pages, REGION_PAGES)
        low_end, high_start = LOW_RAM_END >> PAGE_SHIFT, HIGH_RAM_START >> PAGE_SHIFT
        for _ in range(p.threads):
            if gfn < high_start and gfn + thread_pages > low_end:
                gfn = high_start
            areas.append((gfn, gfn + thread_pages))
            gfn = align_up(gfn + thread_pages, REGION_PAGES)
        top = max(a[1] for a in areas)
        slots = [SlotSpec(0, 0, min(top, low_end) << PAGE_SHIFT, "pc.ram")]
        if top > high_start:
            slots.append(
                SlotSpec(1, HIGH_RAM_START, (top - high_start) << PAGE_SHIFT, "pc.ram above 4g")
            )
        max_gfn = max(top, high_start, rom_area[1])
        check = Memslots(max_gfn)
        for s in slots:
            check.add(Memslot(s.id, s.gpa >> PAGE_SHIFT, s.size >> PAGE_SHIFT))
        check.check_new(ROM_SLOT, rom_area[0], rom_area[1] - rom_area[0], field="--rom-gpa")
        return VmSpec(
            slots=tuple(slots),
            areas_per_vcpu=(*((a,) for a in areas), (rom_area,)),
            pt_gfn=KERNEL_RESERVE >> PAGE_SHIFT,
            max_gfn=max_gfn,
            nr_mmu_pages=p.mmu_pages,
        )

    # -- the run -------------------------------------------------------------------------
    def run(self, vm: VmApi, p: WorkloadSpec) -> dict[str, float]:
        spec = self.layout(p, vm.arch)
        vm.create(spec)
        rom_vcpu = p.threads
        rom0, rom1 = spec.areas_per_vcpu[rom_vcpu][0]
        for v in range(p.threads):
            ((g0, g1),) = spec.areas_per_vcpu[v]
            vm.start_passes(v, g0, g1, p.passes)
        accesses: list[tuple[int, int, int]] = []
        rng = np.random.default_rng(p.seed)

        def rom_sh() -> None:
            while True:
                pause = p.rom_interval_ms * rng.uniform(1 - p.rom_jitter, 1 + p.rom_jitter)
                vm.sleep_ns(pause * 1e6)
                if vm.guests_done():
                    return
                t_add = vm.add_memslot(ROM_SLOT, p.rom_gpa, p.rom_kib * 1024, "pc.rom")
                t_read = vm.guest_access(rom_vcpu, rom0, rom1)
                t_del = vm.delete_memslot(ROM_SLOT)
                accesses.append((t_add, t_read, t_del))
                vm.event("rom-access", add_ns=t_add, read_ns=t_read, delete_ns=t_del)

        vm.run_host(rom_sh, name="vmm-rom.sh")
        return self._metrics(vm, accesses, p)

    def _metrics(self, vm: VmApi, accesses, p: WorkloadSpec) -> dict[str, float]:
        """What mmtest reported plus what explains it, from what the backend observed."""
        warm = [r for r in vm.passes if r.index > 0]
        first = [r for r in vm.passes if r.index == 0]
        acc = np.array(accesses, dtype=np.float64).reshape(-1, 3) / 1e6
        st = vm.stats()
        for r in vm.passes:
            vm.event("pass", vcpu=r.vcpu, index=r.index, ms=r.ms, t_ns=r.end_ns)
        out = {
            "pass_time_ms": float(np.mean([r.ms for r in warm])),
            "populate_ms": float(np.mean([r.ms for r in first])),
            "memslot_delete_ms": float(acc[:, 2].mean()) if len(acc) else 0.0,
            "memslot_add_ms": float(acc[:, 0].mean()) if len(acc) else 0.0,
            "rom_access_ms": float(acc.sum(axis=1).mean()) if len(acc) else 0.0,
            "rom_reads": len(acc),
            "refaults": sum(r.faults for r in warm),
        }
        named = {
            "sptes_zapped": ("sptes_zapped", 1),
            "sps_zapped": ("mmu_shadow_zapped", 1),
            "sp_allocs": ("mmu_cache_miss", 1),
            "remote_tlb_flushes": ("remote_tlb_flush", 1),
            "lock_breaks": ("lock_breaks", 1),
            "mmu_recycled": ("mmu_recycled", 1),
            "mmu_lock_max_hold_ms": ("mmu_lock_max_hold_ns", 1e-6),
            "vcpu_stall_ms": ("vcpu_stall_ns", 1e-6),
            "vcpu_stall_max_ms": ("vcpu_stall_max_ns", 1e-6),
        }
        for metric, (stat, scale) in named.items():
            if stat in st:
                out[metric] = st[stat] * scale
        return out


@hookimpl
def mmbench_register_workloads(register):
    register(RomAccess)
