"""Workload ``rom-access``: ``./mmtest -c 8 -m 2000 -e ./rom.sh`` (seeds 000 and 001).

``-c`` guest threads, each in its own process on its own vCPU, write one qword per 4 KiB
page of ``-m`` MB in passes (mmtest's time per pass). Meanwhile rom.sh, on a vCPU of its
own, reads a PCI option ROM every ``--rom-interval-ms``: QEMU maps the ROM BAR (memslot
add), the guest kernel reads it, QEMU unmaps it (memslot delete) -- and the delete is where
the invalidation policy runs.

One ``cat`` of the sysfs ``rom`` file is one remap per ``read()``, not one per cat: sysfs
hands a bin attribute at most PAGE_SIZE per call (``kernfs_file_read_iter()``,
fs/kernfs/file.c, since v3.14; ``read()`` in fs/sysfs/bin.c before), and each call of
``pci_read_rom()`` (drivers/pci/pci-sysfs.c) maps the ROM with ``pci_map_rom()``, which
sets the BAR's enable bit (``pci_enable_rom()``), sizes the image through the mapping
(``pci_get_rom_size()`` reads its headers at offset 0), copies its chunk, and
``pci_unmap_rom()`` clears the bit again (``pci_disable_rom()``: ``echo 1 > rom`` sets only
``rom_attr_enabled``, not ``IORESOURCE_ROM_ENABLE``). QEMU maps and unmaps the BAR's memory
region on each toggle, so a 128 KiB ROM is 32 memslot adds and deletes per cat. kernfs
returns 0 at EOF before calling the attribute (``sysfs_kf_bin_read()``: ``pos >= size``);
the v3.x ``read()`` tested ``offs > size`` and called it once more with count 0, a 33rd
remap that is not modelled (the guest is taken to run v3.14 or later). ``--rom-read-kib``
sets the chunk; ``--rom-read-kib`` equal to ``--rom-kib`` is one remap per cat.

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
from mmbench.workloads.guest_layout import (
    HUGE_PAGE_SIZE,
    KERNEL_RESERVE,
    REGION_PAGES,
    align_up,
    backing_param,
)
from mmbench.workloads.quantiles import median, percentile  # as numpy's, no numpy.ma
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
            "rom_read_kib",
            int,
            4,
            "bytes per read() of the guest's cat (KiB, multiple of 4): sysfs passes a bin"
            " attribute at most PAGE_SIZE per call, and each pci_read_rom() maps and unmaps"
            " the ROM BAR (a memslot add and delete); --rom-kib: one remap per cat",
            min=4,
            max=16384,
        ),
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
        Param(
            "delete_ram_after_pass",
            int,
            0,
            "once every thread has done this many passes, delete RAM slot 0 (the guest"
            " kernel and its page tables) while they run, as set_memory_region_test's"
            " test_delete_memory_region does; the vCPUs then shut down. 0: never",
            min=0,
        ),
        Param(
            "idle_reads",
            int,
            0,
            "ROM reads rom.sh goes on making after the guest threads finish: deletes with"
            " every vCPU idle, as in the 2013 delete/add testcase and memslot_perf_test",
            min=0,
            max=100000,
        ),
        # 4k by default: what the runs before --backing did (on --backend kvm, 2m also
        # maps the guest's own memory with 2 MiB pages)
        backing_param("4k"),
    )
    default_plots = ("pass.ms", "rom-access.delete_ns", "mmu_lock_hold_hist")
    headline = ("pass_time_ms", "memslot_delete_ms")
    probe = {"threads": 2, "mb": 64, "passes": 4, "rom_interval_ms": 2.0}
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
        "memslot_delete_p50_ms": Metric("ms", "median ROM delete once every thread populated"),
        "memslot_delete_p99_ms": Metric("ms", "99th percentile of those steady-state deletes"),
        "memslot_delete_max_ms": Metric("ms", "slowest of those steady-state deletes"),
        "memslot_delete_populating_ms": Metric(
            "ms", "median ROM delete while threads still populate (-1: none)"
        ),
        "memslot_delete_idle_p50_ms": Metric(
            "ms", "median ROM delete after the threads finished, every vCPU idle (-1: none)"
        ),
        "memslot_delete_idle_max_ms": Metric(
            "ms", "slowest of those (the first, which still finds all memory mapped)"
        ),
        "memslot_delete_first_p50_ms": Metric(
            "ms",
            "median of the steady-state deletes that open a cat: the first remap finds what"
            " the vCPUs refaulted since the last cat",
        ),
        "sps_per_delete": Metric("", "sps zapped per steady-state delete", kind="count"),
        "sptes_per_delete": Metric("", "sptes zapped per steady-state delete", kind="count"),
        "sptes_per_cat": Metric(
            "", "sptes zapped per steady-state cat of the ROM (all its remaps)", kind="count"
        ),
        "memslot_add_ms": Metric(
            "ms", "ROM memslot add latency", samples=Samples("rom-access", "add_ns", 1e-6)
        ),
        "rom_access_ms": Metric(
            "ms", "one rom.sh cat of the ROM: each read()'s memslot add, guest read, delete"
        ),
        "rom_reads": Metric(
            "", "read()s of the ROM during the run, each a memslot add and delete", kind="count"
        ),
        "rom_cats": Metric("", "rom.sh's cats of the ROM during the run", kind="count"),
        "sptes_zapped": Metric("", "leaf sptes zapped", kind="count"),
        "sps_zapped": Metric("", "shadow pages zapped", kind="count", stat="mmu_shadow_zapped"),
        "sp_allocs": Metric("", "shadow pages allocated", kind="count", stat="mmu_cache_miss"),
        "refaults": Metric("", "page faults in warm passes", kind="count", stat="pf_fixed"),
        "remote_tlb_flushes": Metric(
            "", "remote TLB flushes that IPI'd a vCPU", kind="count", stat="remote_tlb_flush"
        ),
        "remote_tlb_flush_requests": Metric(
            "", "kvm_flush_remote_tlbs calls", kind="count", stat="remote_tlb_flush_requests"
        ),
        "lock_breaks": Metric("", "mmu_lock breaks taken by zaps", kind="count"),
        "lock_breaks_contention": Metric(
            "", "of those, for a waiter (spin_needbreak: preempt=full only)", kind="count"
        ),
        "lock_breaks_resched": Metric(
            "", "of those, for the scheduler tick (need_resched)", kind="count"
        ),
        "mmu_recycled": Metric(
            "", "sps zapped by reclaim at n_max_mmu_pages", kind="count", stat="mmu_recycled"
        ),
        "mmu_lock_max_hold_ms": Metric("ms", "longest mmu_lock hold"),
        "vcpu_stall_ms": Metric("ms", "mmu_lock wait of the guest threads' vCPUs, summed"),
        "vcpu_stall_max_ms": Metric("ms", "longest single mmu_lock wait of a vCPU"),
        "vcpu_shutdowns": Metric(
            "", "guest threads ended by KVM_EXIT_SHUTDOWN (--delete-ram-after-pass)", kind="count"
        ),
    }

    # -- layout --------------------------------------------------------------------------
    def layout(self, p: WorkloadSpec, arch: Any) -> VmSpec:
        thread_pages = p.mb * MiB >> PAGE_SHIFT
        rom_bytes = p.rom_kib * 1024
        if rom_bytes % 4096:
            raise ConfigError("--rom-kib", f"must be a multiple of 4 (got {p.rom_kib})")
        if p.rom_read_kib % 4:
            raise ConfigError("--rom-read-kib", f"must be a multiple of 4 (got {p.rom_read_kib})")
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
        if p.delete_ram_after_pass >= p.passes:
            raise ConfigError(
                "--delete-ram-after-pass",
                f"must be 0 (never) or below --passes ({p.passes}), got {p.delete_ram_after_pass}",
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
            # guest RAM's host backing; the ROM BAR is a 128 KiB region of its own, and
            # only frames wholly inside one memslot may be huge (lpage_info)
            huge_pages=p.backing != "4k",
            huge_page_size=HUGE_PAGE_SIZE[p.backing],
            host_page_size=HUGE_PAGE_SIZE[p.backing],  # what the host allocates
        )

    # -- the run -------------------------------------------------------------------------
    def run(self, vm: VmApi, p: WorkloadSpec) -> dict[str, float]:
        spec = self.layout(p, vm.arch)
        if p.delete_ram_after_pass and getattr(vm, "backend", "sim") != "sim":
            raise ConfigError(
                "--delete-ram-after-pass", "runs on backend sim only (the model's guest shuts down)"
            )
        vm.create(spec)
        rom_vcpu = p.threads
        rom0, rom1 = spec.areas_per_vcpu[rom_vcpu][0]
        for v in range(p.threads):
            ((g0, g1),) = spec.areas_per_vcpu[v]
            vm.start_passes(v, g0, g1, p.passes)
        # (add ns, read ns, delete ns, sps zapped, sptes zapped, state, cat, read() of it)
        accesses: list[tuple[int, int, int, int, int, str, int, int]] = []
        step = p.rom_read_kib * 1024 >> PAGE_SHIFT
        chunks = [(g, min(g + step, rom1)) for g in range(rom0, rom1, step)]
        rng = np.random.default_rng(p.seed)
        idle_left = p.idle_reads

        def rom_sh() -> None:
            nonlocal idle_left
            while True:
                pause = p.rom_interval_ms * rng.uniform(1 - p.rom_jitter, 1 + p.rom_jitter)
                vm.sleep_ns(pause * 1e6)
                idle = vm.guests_done()
                if idle and not idle_left:
                    return
                idle_left -= idle
                if p.delete_ram_after_pass and self._passes_done(vm, p) >= p.delete_ram_after_pass:
                    # QEMU removes the RAM under a running guest: the slot of its page
                    # tables goes, so every vCPU's reload finds CR3 outside every memslot
                    vm.event("ram-delete", delete_ns=vm.delete_memslot(0))
                    return
                state = "idle" if idle else "running"
                if not idle and self._passes_done(vm, p) < 1:
                    state = "populating"
                cat = len(accesses) // len(chunks)  # every cat makes all its reads
                for r, (c0, c1) in enumerate(chunks):
                    remap = self._remap(vm, p, rom_vcpu, rom0, c0, c1)
                    accesses.append((*remap, state, cat, r))
                    add, read, delete, sps, sptes = remap
                    vm.event(
                        "rom-access",
                        add_ns=add,
                        read_ns=read,
                        delete_ns=delete,
                        state=state,
                        read=r,
                        sps_zapped=sps,
                        sptes_zapped=sptes,
                    )

        vm.run_host(rom_sh, name="vmm-rom.sh")
        return self._metrics(vm, accesses, p)

    @staticmethod
    def _remap(
        vm: VmApi, p: WorkloadSpec, vcpu: int, rom0: int, c0: int, c1: int
    ) -> tuple[int, int, int, int, int]:
        """One ``read()`` of the cat, one ``pci_read_rom()``: the BAR enable maps the ROM
        (memslot add), ``pci_get_rom_size()`` reads its header page, the chunk is copied,
        and the BAR disable unmaps it (memslot delete, where the policy runs)."""
        t_add = vm.add_memslot(ROM_SLOT, p.rom_gpa, p.rom_kib * 1024, "pc.rom")
        t_read = vm.guest_access(vcpu, rom0, rom0 + 1)
        rest = max(c0, rom0 + 1)  # the chunk, but the header page it has read already
        if c1 > rest:
            t_read += vm.guest_access(vcpu, rest, c1)
        before = vm.stats()
        t_del = vm.delete_memslot(ROM_SLOT)
        after = vm.stats()
        sps, sptes = (after[k] - before[k] for k in ("mmu_shadow_zapped", "sptes_zapped"))
        return t_add, t_read, t_del, sps, sptes

    @staticmethod
    def _passes_done(vm: VmApi, p: WorkloadSpec) -> int:
        """Passes every guest thread has finished so far."""
        return min(vm.passes_done(v) for v in range(p.threads))

    def _metrics(self, vm: VmApi, accesses, p: WorkloadSpec) -> dict[str, float]:
        """What mmtest reported plus what explains it, from what the backend observed."""
        warm = [r for r in vm.passes if r.index > 0]
        first = [r for r in vm.passes if r.index == 0]
        state = np.array([a[5] for a in accesses], dtype=object)
        cat = np.array([a[6] for a in accesses], dtype=np.int64)
        nth = np.array([a[7] for a in accesses], dtype=np.int64)
        idle = state == "idle"
        populating = state == "populating"
        running = state == "running"
        every = np.array([a[:3] for a in accesses], dtype=np.float64).reshape(-1, 3) / 1e6
        zapped = np.array([a[3:5] for a in accesses], dtype=np.float64).reshape(-1, 2)
        acc = every[~idle]  # while the guest threads run (mmtest's run)
        steady = every[running, 2]
        first_steady = every[running & (nth == 0), 2]
        st = vm.stats()
        for r in vm.passes:
            vm.event("pass", vcpu=r.vcpu, index=r.index, ms=r.ms, t_ns=r.end_ns)
        out = {
            "pass_time_ms": float(np.mean([r.ms for r in warm])),
            "populate_ms": float(np.mean([r.ms for r in first])),
            "memslot_delete_ms": float(acc[:, 2].mean()) if len(acc) else 0.0,
            "memslot_delete_p50_ms": float(median(steady)) if len(steady) else -1.0,
            "memslot_delete_p99_ms": float(percentile(steady, 99)) if len(steady) else -1.0,
            "memslot_delete_max_ms": float(steady.max()) if len(steady) else -1.0,
            "memslot_delete_first_p50_ms": (median(first_steady) if len(first_steady) else -1.0),
            "memslot_delete_populating_ms": (
                float(median(every[populating, 2])) if populating.any() else -1.0
            ),
            "memslot_delete_idle_p50_ms": (float(median(every[idle, 2])) if idle.any() else -1.0),
            "memslot_delete_idle_max_ms": float(every[idle, 2].max()) if idle.any() else -1.0,
            "sps_per_delete": float(zapped[running, 0].mean()) if len(steady) else 0.0,
            "sptes_per_delete": float(zapped[running, 1].mean()) if len(steady) else 0.0,
            "sptes_per_cat": _mean_per_cat(cat[running], zapped[running, 1]),
            "memslot_add_ms": float(acc[:, 0].mean()) if len(acc) else 0.0,
            "rom_access_ms": _mean_per_cat(cat[~idle], acc.sum(axis=1)),
            "rom_reads": len(every),
            "rom_cats": int(np.count_nonzero(np.bincount(cat))),
            "refaults": sum(r.faults for r in warm),
        }
        named = {
            "sptes_zapped": ("sptes_zapped", 1),
            "sps_zapped": ("mmu_shadow_zapped", 1),
            "sp_allocs": ("mmu_cache_miss", 1),
            "remote_tlb_flushes": ("remote_tlb_flush", 1),
            "remote_tlb_flush_requests": ("remote_tlb_flush_requests", 1),
            "lock_breaks": ("lock_breaks", 1),
            "lock_breaks_contention": ("lock_breaks_contention", 1),
            "lock_breaks_resched": ("lock_breaks_resched", 1),
            "mmu_recycled": ("mmu_recycled", 1),
            "mmu_lock_max_hold_ms": ("mmu_lock_max_hold_ns", 1e-6),
            "vcpu_stall_ms": ("vcpu_stall_ns", 1e-6),
            "vcpu_stall_max_ms": ("vcpu_stall_max_ns", 1e-6),
        }
        for metric, (stat, scale) in named.items():
            if stat in st:
                out[metric] = st[stat] * scale
        if p.delete_ram_after_pass:
            out["vcpu_shutdowns"] = st["vcpu_shutdowns"]
        return out


def _mean_per_cat(cat: np.ndarray, values: np.ndarray) -> float:
    """``values`` summed per cat (``cat``: each value's cat index), averaged over the cats
    present; 0.0 if none. bincount, not np.unique, which would import numpy.ma."""
    if not len(cat):
        return 0.0
    sums = np.bincount(cat, weights=values)
    return float(sums[np.bincount(cat) > 0].mean())


@hookimpl
def mmbench_register_workloads(register):
    register(RomAccess)
