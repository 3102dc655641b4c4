"""The ``sim`` backend's VM API: what a workload calls, played on the model's timeline.

A workload builds the VM (memslots, vCPUs and what each vCPU's process maps), starts
guest threads that touch memory in passes, and runs a host script (the VMM's ioctls, a
guest script like rom.sh) concurrently with them. Here every one of those is an actor on
one virtual timeline; the ``kvm`` backend plays the same calls on /dev/kvm.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from mmbench.backends.vmapi import PassRecord, SlotSpec, VmSpec, wake_waits_us
from mmbench.errors import ConfigError
from mmbench.host.contracts import Arch
from mmbench.host.hooks import RunHooks
from mmbench.host.hookspecs import hookimpl
from mmbench.model.costs import HOST_TOUCH_PAGE, CostTable
from mmbench.model.engine import Actor, Engine
from mmbench.model.host_memory import HostMemory
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import KVM_MEM_LOG_DIRTY_PAGES, KVM_USER_MEM_SLOTS, PAGE_SHIFT
from mmbench.model.notifier import HOST_MM_NS_4K, HOST_MM_NS_THP, HOST_UNMAP_EVENT
from mmbench.model.sched import KernelConfig
from mmbench.model.stats import VCPU_STATS, VM_STATS
from mmbench.model.vcpu import GuestShutdown

__all__ = ["PassRecord", "SimBackend", "SimVm", "SlotSpec", "VmSpec"]


class SimVm:
    """``VmApi`` on the model (see ``mmbench.backends.vmapi``)."""

    backend = "sim"

    def __init__(
        self, hook: RunHooks, arch: Arch, costs: CostTable, kernel: KernelConfig | None = None
    ) -> None:
        self.engine = Engine()
        self.kernel = kernel or KernelConfig()
        self.engine.cpus = self.kernel.host_cpus  # the vCPU threads share them (time sharing)
        self.hook = hook
        self.arch = arch
        self.costs = costs
        self.kvm: Kvm | None = None
        self.passes: list[PassRecord] = []
        self._guest_actors: list[Actor] = []
        self.on_progress: Callable[[float, float], None] | None = None  # (done, planned)
        self._planned = 0  # passes and slices the guest threads were given
        self._stopped: set[int] = set()  # start_loop guests told to exit

    # -- building ------------------------------------------------------------------------
    def create(self, spec: VmSpec) -> Kvm:
        """Build the VM; after ``destroy()`` a new one (memslot-perf: one VM per run)."""
        self._guest_actors = []
        self._stopped.clear()
        nr_vcpus = spec.nr_vcpus or len(spec.areas_per_vcpu)
        kvm = Kvm(
            self.engine, self.hook, self.arch, self.costs, nr_vcpus, spec.max_gfn, self.kernel
        )
        for s in spec.slots:
            kvm.memslots.check_new(s.id, s.gpa >> PAGE_SHIFT, s.size >> PAGE_SHIFT, f"slot {s.id}")
        self.kvm = kvm
        kvm.huge_pages = spec.huge_pages  # the backing allows huge leaves (TDP, stage-2)
        kvm.huge_page_size = spec.huge_page_size
        kvm.host_memory = HostMemory(spec.max_gfn, spec.host_page_size)
        # slots that exist before the guest starts are not timed
        self.engine.spawn("vmm-create", self._create_slots, spec)
        self.engine.run()
        self.arch.setup(kvm, [list(a) for a in spec.areas_per_vcpu], spec.pt_gfn)
        pages = sum(s.npages for s in kvm.memslots.slots.values())
        kvm.mmu.set_mmu_pages_limit(spec.nr_mmu_pages, pages)
        kvm.mmu.trace = spec.trace_mmu_pages
        self.hook.mmbench_vm_created(kvm=kvm)
        self.engine.now = 0
        return kvm

    def _create_slots(self, spec: VmSpec) -> None:
        for s in spec.slots:
            self.kvm.create_memslot(s.id, s.gpa, s.size, s.flags, s.name)

    # -- guest threads -------------------------------------------------------------------
    def start_passes(
        self, vcpu_id: int, gfn0: int, gfn1: int, passes: int, write: bool = True
    ) -> None:
        """A guest thread on ``vcpu_id`` touching one qword per page of its area, in passes."""
        vcpu = self.kvm.vcpus[vcpu_id]
        self._planned += passes

        def guest() -> None:
            for i in range(passes):
                self._timed_pass(vcpu_id, i, lambda: vcpu.access(gfn0, gfn1, write=write))

        self._spawn_guest(vcpu_id, guest)

    def _timed_pass(self, vcpu_id: int, index: int, body: Callable[[], None]) -> None:
        """Run one pass (or slice) of a guest thread and record its time and faults."""
        stats = self.kvm.vcpus[vcpu_id].stats
        t0, f0 = self.engine.now, stats["pf_fixed"]
        body()
        self.passes.append(PassRecord(vcpu_id, index, t0, self.engine.now, stats["pf_fixed"] - f0))
        if self.on_progress is not None:  # the terminal's bar: one store per pass
            self.on_progress(float(len(self.passes)), float(max(self._planned, len(self.passes))))

    def _spawn_guest(self, vcpu_id: int, guest: Callable[[], None]) -> None:
        """Run ``guest`` as the guest thread of ``vcpu_id`` on the timeline."""

        def thread() -> None:
            with contextlib.suppress(GuestShutdown):  # KVM_EXIT_SHUTDOWN: the thread ends
                guest()

        actor = self.engine.spawn(f"vcpu{vcpu_id}", thread)
        self.kvm.vcpus[vcpu_id].actor = actor
        self._guest_actors.append(actor)

    def start_schedule(
        self, vcpu_id: int, slices: list[tuple[int, int, int]], write: bool = True
    ) -> None:
        """A guest scheduler on ``vcpu_id`` running ``(process, gfn0, gfn1)`` slices."""
        kvm = self.kvm
        vcpu = kvm.vcpus[vcpu_id]
        self._planned += len(slices)

        def guest() -> None:
            for i, (process, gfn0, gfn1) in enumerate(slices):

                def slice_(process: int = process, gfn0: int = gfn0, gfn1: int = gfn1) -> None:
                    if process != int(kvm.mmu.vcpu_process[vcpu_id]):
                        # a CR3 load exits under shadow paging and flushes the vCPU's TLB
                        vcpu.stats["exits"] += 1
                        kvm.charge(kvm.costs.vcpu_flush_exit)
                        with kvm.mmu_lock:
                            freed = kvm.mmu.kvm_mmu_new_cr3(vcpu_id, process)
                            kvm.charge(kvm.costs.root_reload + freed * kvm.costs.zap_sp)
                    vcpu.access(gfn0, gfn1, write=write)

                self._timed_pass(vcpu_id, i, slice_)

        self._spawn_guest(vcpu_id, guest)

    def start_loop(
        self, vcpu_id: int, gfn0: int, gfn1: int, until_ns: int, write: bool = False
    ) -> None:
        """A guest thread on ``vcpu_id`` touching its area in passes until ``until_ns``."""
        vcpu = self.kvm.vcpus[vcpu_id]

        def guest() -> None:
            i = 0
            while self.engine.now < until_ns and vcpu_id not in self._stopped:
                self._timed_pass(vcpu_id, i, lambda: vcpu.access(gfn0, gfn1, write=write))
                i += 1

        self._spawn_guest(vcpu_id, guest)

    def stop_loop(self, vcpu_id: int) -> None:
        self._stopped.add(vcpu_id)

    def max_memslots(self) -> int:
        return KVM_USER_MEM_SLOTS

    def host_touch(self, gfn0: int, gfn1: int, write: bool = True) -> int:
        """Host user space touches guest pages: its own page tables, no KVM, no mmu_lock."""
        per = self.costs.costs.get("host_touch_page", HOST_TOUCH_PAGE).ns
        return self._timed(lambda: self.kvm.charge((gfn1 - gfn0) * per))

    def guests_done(self) -> bool:
        return all(a.done for a in self._guest_actors)

    def passes_done(self, vcpu_id: int) -> int:
        return sum(1 for r in self.passes if r.vcpu == vcpu_id)

    # -- the host script's calls (run inside ``run_host``) --------------------------------
    def now_ns(self) -> int:
        return self.engine.now

    def sleep_ns(self, ns: float) -> None:
        """The host script sleeps (rom.sh's ``sleep``, the VMM waiting): off the CPU; it
        takes one back at once when it wakes (``mmbench.model.sched`` says why)."""
        self.engine.idle(ns)

    def _timed(self, fn: Callable[[], Any]) -> int:
        t0 = self.engine.now
        fn()
        return self.engine.now - t0

    def add_memslot(self, slot_id: int, gpa: int, size: int, name: str = "") -> int:
        """A slot the VMM maps while the guest runs (4 KiB host pages, as on kvm)."""
        self.kvm.host_memory.add_small(gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT)
        return self._timed(lambda: self.kvm.create_memslot(slot_id, gpa, size, 0, name))

    def delete_memslot(self, slot_id: int) -> int:
        """Timed delete; series ``trace:memslot-delete`` has what it zapped under the
        kernel's tracepoint names, beside which ``--backend kvm --trace`` puts the kernel's."""
        st = self.kvm.stats.vm
        sps, sptes = st["mmu_shadow_zapped"], st["sptes_zapped"]
        gps = len(self.kvm.gp_wake_waits)
        ns = self._timed(lambda: self.kvm.delete_memslot(slot_id))
        zapped = st["mmu_shadow_zapped"] - sps
        data = {"kvm_mmu_prepare_zap_page": zapped, "mmu_shadow_zapped": zapped}
        data.update(wake_waits_us([w / 1e3 for w in self.kvm.gp_wake_waits[gps:]]))
        data["sptes_zapped"] = st["sptes_zapped"] - sptes
        self.kvm.stats.series["trace:memslot-delete"].append((self.engine.now, data))
        return ns

    def move_memslot(self, slot_id: int, new_gpa: int) -> int:
        return self._timed(lambda: self.kvm.move_memslot(slot_id, new_gpa))

    def guest_access(self, vcpu_id: int, gfn0: int, gfn1: int, write: bool = False) -> int:
        """A guest access made synchronously by the host script's own vCPU (e.g. rom.sh)."""
        return self._timed(lambda: self.kvm.vcpus[vcpu_id].access(gfn0, gfn1, write=write))

    def host_unmap(self, gpa: int, size: int, how: str) -> int:
        """The host mm changes ``[gpa, gpa + size)`` (``VmApi.host_unmap``): the MMU
        notifier's ``invalidate_range_start``, the mm's own work on its ptes (measured per
        page, ``mmbench.model.notifier.HOST_MM_NS_*``), ``invalidate_range_end``. Series
        ``host-unmap`` has each call's time and KVM's share of it; ``trace:mmu-notifier``
        what it did under the kernel's tracepoint names (one ``kvm_unmap_hva_range``)."""
        if how not in HOST_UNMAP_EVENT:
            raise ConfigError("how", f"{how!r}; allowed: {', '.join(HOST_UNMAP_EVENT)}")
        if gpa % (1 << PAGE_SHIFT) or size <= 0 or size % (1 << PAGE_SHIFT):
            raise ConfigError("host_unmap", f"gpa {gpa:#x} size {size:#x}: 4 KiB aligned, > 0")
        kvm = self.kvm
        mn = kvm.notifier
        gfn0, gfn1 = gpa >> PAGE_SHIFT, (gpa + size) >> PAGE_SHIFT
        event = HOST_UNMAP_EVENT[how]
        thp = kvm.host_memory.page_size > 4096
        per_page = (HOST_MM_NS_THP if thp else HOST_MM_NS_4K)[how]
        st = kvm.stats.vm
        sps = st["mmu_shadow_zapped"]
        t0 = self.engine.now
        slots = mn.invalidate_range_start(gfn0, gfn1, event)
        t_start = self.engine.now
        kvm.charge((gfn1 - gfn0) * per_page)  # zap_pte_range / change_pte_range
        if how in ("munmap", "dontneed"):  # the pages are freed: the next touch faults in
            kvm.host_memory.drop(gfn0, gfn1)
        t_mm = self.engine.now
        mn.invalidate_range_end(gfn0, gfn1, event, slots)
        ns = self.engine.now - t0
        data = {"how": how, "gpa": gpa, "size": size, "ns": ns}
        data["kvm_ns"] = (t_start - t0) + (self.engine.now - t_mm)
        kvm.stats.series["host-unmap"].append((self.engine.now, data))
        zapped = st["mmu_shadow_zapped"] - sps  # beside --backend kvm --trace's counts
        trace = {"kvm_unmap_hva_range": 1, "kvm_mmu_prepare_zap_page": zapped}
        kvm.stats.series["trace:mmu-notifier"].append((self.engine.now, trace))
        return ns

    def event(self, name: str, **data: Any) -> None:
        self.hook.mmbench_workload_event(kvm=self.kvm, name=name, data=data)
        self.kvm.stats.series[name].append((self.engine.now, data))

    # -- dirty logging -----------------------------------------------------------------------
    def enable_manual_protect(self, initially_set: bool) -> None:
        """``KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2)``, before logging starts."""
        self.kvm.manual_protect = True
        self.kvm.initially_set = initially_set

    def set_eager_page_split(self, on: bool) -> None:
        """The ``kvm.eager_page_split`` module parameter (x86) / ``KVM_CAP_ARM_EAGER_SPLIT_
        CHUNK_SIZE`` (arm64): split huge pages when dirty logging starts."""
        self.kvm.eager_split = on

    def set_dirty_logging(self, slot_id: int, on: bool) -> int:
        flags = self.kvm.memslots.get(slot_id).flags
        flags = flags | KVM_MEM_LOG_DIRTY_PAGES if on else flags & ~KVM_MEM_LOG_DIRTY_PAGES
        return self._timed(lambda: self.kvm.set_memslot_flags(slot_id, flags))

    def get_dirty_log(self, slot_id: int) -> tuple[int, int]:
        out: list[int] = []
        ns = self._timed(lambda: out.append(self.kvm.get_dirty_log(slot_id)))
        return ns, out[0]

    def clear_dirty_log(self, slot_id: int, first_page: int, npages: int) -> int:
        return self._timed(lambda: self.kvm.clear_dirty_log(slot_id, first_page, npages))

    def run_host(self, script: Callable[[], None], name: str = "vmm") -> None:
        """Run ``script`` alongside the guest threads until all of them finish."""
        self.engine.spawn(name, script)
        self.engine.run()

    def destroy(self) -> int:
        """Destroy the VM; returns the teardown time in ns."""
        out: list[int] = []
        self.engine.spawn("vmm-destroy", lambda: out.append(self._timed(self.kvm.destroy)))
        self.engine.run()
        return out[0]

    # -- figures -------------------------------------------------------------------------
    def stats(self) -> dict[str, float]:
        kvm = self.kvm
        guests = sorted({int(a.name[4:]) for a in self._guest_actors})
        names = sorted({a.name for a in self._guest_actors})  # a vCPU may run several threads
        lock = kvm.mmu_lock
        out: dict[str, float] = {key: kvm.stats.vm[key] for key in VM_STATS}
        for key in VCPU_STATS:
            out[key] = kvm.stats.vcpu_total(key, guests)
        out["mmu_lock_max_hold_ns"] = lock.max_hold_ns()
        out["vcpu_stall_ns"] = sum(lock.wait_ns.get(n, 0) for n in names)
        out["vcpu_stall_max_ns"] = max((lock.max_wait_ns.get(n, 0) for n in names), default=0)
        out["lock_breaks"] = lock.lock_breaks
        out["vcpu_shutdowns"] = kvm.stats.vcpu_total("shutdowns", guests)
        out["lock_breaks_contention"] = lock.lock_breaks_contention
        out["lock_breaks_resched"] = lock.lock_breaks_resched
        out["mmu_lock_max_hold_host_ns"] = lock.max_hold_ns(vcpu=False)
        out["faults_retried"] = kvm.stats.vcpu_total("faults_retried", guests)
        out["mmu_notifier_retry_wait_ns"] = sum(kvm.notifier.retry_wait_ns.values())
        out["mmu_notifier_invalidations"] = kvm.stats.vm["mmu_notifier_invalidations"]
        out.update(kvm.mmu.extra_stats())
        return out

    def series(self) -> dict[str, list]:
        out = dict(self.kvm.stats.series)
        out["mmu_lock_hold_hist"] = self._hold_histogram()
        return out

    def _hold_histogram(self) -> list[tuple[int, dict[str, Any]]]:
        """mmu_lock hold times in log2 bins, as ``[0, {"holder", "lo_ns", "hi_ns",
        "count"}]`` events: holds are too many to keep one by one, and their spread covers
        six decades."""
        holds = self.kvm.mmu_lock.holds
        if not holds:
            return []
        ns = np.array([h for _, h, _ in holds], dtype=np.float64)
        by_vcpu = np.array([v for _, _, v in holds], dtype=bool)
        edges = 2.0 ** np.arange(0, max(1, int(np.ceil(np.log2(ns.max() + 1)))) + 1)
        rows = []
        for who, mask in (("vcpu", by_vcpu), ("host", ~by_vcpu)):
            counts, _ = np.histogram(ns[mask], bins=edges)
            rows += [
                (0, {"holder": who, "lo_ns": float(lo), "hi_ns": float(hi), "count": int(c)})
                for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
                if c
            ]
        return rows


class SimBackend:
    """The model: any guest size, any arch backend, policies as plugins."""

    name = "sim"
    description = "the model of the KVM MMU on a virtual clock"

    def available(self) -> tuple[bool, str]:
        return True, "always"

    def create_vm(
        self, hook: RunHooks, arch: Arch, costs: CostTable, kernel: KernelConfig | None = None
    ) -> SimVm:
        return SimVm(hook, arch, costs, kernel)


@hookimpl
def mmbench_register_backends(register):
    register(SimBackend)
