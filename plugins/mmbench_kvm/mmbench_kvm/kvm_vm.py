"""Backend ``kvm``'s VM: the VM API (``mmbench.backends.vmapi``) on /dev/kvm, in real time.

``backend.py`` registers the backend and imports this module (ctypes, ioctls, the VM and
vCPU code) only when it needs the kernel, so plugin discovery and ``--help`` do not pay
for it.

A workload's VmSpec maps onto the driver like this: every slot of the spec becomes a memslot
of private anonymous host memory (THP advised); one set of identity page tables (4 KiB
leaves, or 2 MiB where the spec asks and areas are aligned) maps every vCPU's areas, and
the code page plus those tables are written into the RAM slot that holds the spec's page
table area (or gpa 0). Guest threads are ``VcpuThread``s running the CPL3 touch loop; the
host script runs in the calling thread; ``guest_access`` is a one-shot pass on its vCPU.

The policy is a kernel knob (``knobs.py``), read from the run's plugin manager. Counters
are the kernel's binary stats under the model's names; the model-only ones (mmu_lock
hold, vCPU stall, lock breaks) are absent because the kernel does not show them.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pluggy

from mmbench.backends.vmapi import PassRecord, VmSpec, wake_waits_us
from mmbench.errors import BackendError, ConfigError

from . import ioctls as k
from . import knobs
from .errors import GuestExitError, KvmError, VcpuTimeout
from .guest import PAGE_SIZE_2M, PAGE_SIZE_4K, GuestLayout
from .hostkernel import host_kernel
from .memslot import Memslot
from .system import KvmSystem
from .tracing import TraceInstance
from .vcpu import Vcpu, VcpuThread, install_kick_handler
from .vm import Vm, bitmap_popcount
from .watchdog import Watchdog

PAGE_SHIFT = 12
# generous bound on one guest pass: 20 us per page (populate from fresh host memory with
# 1 spte per fault takes ~5 us/page here) plus a fixed margin
PASS_NS_PER_PAGE = 20_000
JOIN_MARGIN_S = 30.0
LOOP_PASSES = 1 << 31  # an open-ended guest loop (start_loop); kicked out at its deadline
# a guest that runs natively emulates next to nothing: only the `out` of each pass exit
MAX_EMULATED_PER_PAGE = 0.01
HOST_MEM_HEADROOM = 0.8  # use at most this share of MemAvailable for guest memory

# kernel binary stats reported under the same names as the model's
VM_STATS = (
    "mmu_shadow_zapped",
    "mmu_cache_miss",
    "mmu_recycled",
    "mmu_pte_write",
    "mmu_flooded",
    "remote_tlb_flush",
    "remote_tlb_flush_requests",
    "pages_4k",
    "pages_2m",
    "pages_1g",
)
VCPU_STATS = (
    "pf_taken",
    "pf_fixed",
    "pf_emulate",
    "pf_spurious",
    "mmio_exits",
    "exits",
    "insn_emulation",
)
HOST_UNMAP_CALLS = ("munmap", "dontneed", "mprotect")


def mem_available() -> int:
    """MemAvailable from /proc/meminfo, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def check_host_memory(nbytes: int, field: str) -> None:
    """ConfigError if the guest would not fit in the host's free memory."""
    avail = mem_available()
    if nbytes > avail * HOST_MEM_HEADROOM:
        raise ConfigError(
            field,
            f"the guest needs {nbytes / 2**30:.1f} GiB of host memory; at most"
            f" {avail * HOST_MEM_HEADROOM / 2**30:.1f} GiB ({HOST_MEM_HEADROOM:.0%} of"
            " MemAvailable) is free on this host",
        )


def _run_plugins(hook: pluggy.HookRelay) -> list[Any]:
    """Every plugin object registered on the run's plugin manager."""
    seen: dict[int, Any] = {}
    for caller in vars(hook).values():
        get = getattr(caller, "get_hookimpls", None)
        for impl in get() if get else ():
            seen.setdefault(id(impl.plugin), impl.plugin)
    return list(seen.values())


def run_policy_name(hook: pluggy.HookRelay) -> str | None:
    """The policy registered on the run's plugin manager (the object with ``archs``)."""
    for plugin in _run_plugins(hook):
        if hasattr(plugin, "archs") and isinstance(getattr(plugin, "name", 0), str):
            return plugin.name
    return None


def run_monitors(hook: pluggy.HookRelay) -> list[str]:
    """Monitors on the run (they count ``checks``): they observe model state only."""
    return [getattr(p, "name", "?") for p in _run_plugins(hook) if hasattr(p, "checks")]


def _merge(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(runs):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


class _PassThread(VcpuThread):
    """A guest thread that also samples pf_fixed at every pass boundary."""

    def __init__(self, vcpu: Vcpu, name: str) -> None:
        super().__init__(vcpu, name)
        self.pf0 = vcpu.stats_reader.read_one("pf_fixed")
        self.pf: list[int] = []

    def _on_io(self, port: int, value: int, now: int) -> None:
        super()._on_io(port, value, now)
        if len(self.pf) < len(self.pass_ns):
            self.pf.append(self.vcpu.stats_reader.read_one("pf_fixed"))


class KvmVm:
    """``VmApi`` on /dev/kvm (see ``mmbench.backends.vmapi``); ``close()`` frees everything."""

    backend = "kvm"
    costs_name = "none (real kernel)"

    def __init__(self, arch: Any, policy: knobs.KernelPolicy, system: KvmSystem) -> None:
        self.arch = arch
        self.policy = policy
        self.system = system
        self.vm: Vm | None = None
        self.passes: list[PassRecord] = []
        self._pending: dict[int, tuple[int, int, int, bool]] = {}
        self._until: dict[int, int] = {}  # loop guests: stop at this run-clock time (ns)
        self._threads: dict[int, _PassThread] = {}
        self._t0 = time.perf_counter_ns()
        self._series: defaultdict[str, list] = defaultdict(list)
        self._sptes_zapped = 0
        self._kept: dict[int, Memslot] = {}  # host memory of slots the script deleted
        self._final: dict[str, float] | None = None
        self.teardown_ns: int | None = None
        self.npages_touched = 0
        self._manual_protect: bool | None = None
        self._trace: TraceInstance | None = None
        # --trace: (op, trace-clock start and end s, series time ns, sps zapped per stats)
        self._trace_spans: list[tuple[str, float, float, int, float]] = []
        self._watchdog = Watchdog()
        self._accessed = False  # guest_access ran a vCPU since the last native check
        self._loops: dict[int, int] = {}  # run_host's loop guests: vCPU -> stop time (ns)
        self._views: dict[int, tuple[int, int, Any]] = {}  # slot -> (gpa, size, u64 view)
        self.kernel = host_kernel()  # the result records the kernel it ran on

    # -- building ------------------------------------------------------------------------
    def create(self, spec: VmSpec) -> Vm:
        """Build the VM; after ``destroy()``, a new one (memslot-perf: one VM per run)."""
        if self.vm is not None:
            if not self.vm.closed:
                self._stop_threads()
                self.vm.close()
            self._threads.clear()
            self._pending.clear()
            self._until.clear()
            self._views.clear()
            self._kept.clear()  # the old VM's close freed that memory
            self.teardown_ns = None
            self._final = None
        check_host_memory(sum(s.size for s in spec.slots), "guest memory")
        install_kick_handler()  # SIGUSR1 kicks stuck vCPUs; must be set from this thread
        vm = self.system.create_vm()
        self.vm = vm
        try:
            if self.policy.quirks_off:
                vm.disable_quirks(self.policy.quirks_off)
            if self._manual_protect is not None:
                vm.enable_manual_dirty_log(self._manual_protect)
            image = self._build_image(spec)
            for s in spec.slots:
                vm.add_memslot(s.id, s.gpa, s.size, thp=spec.host_page_size > 4096)
            home = [ms for ms in vm.memslots.values() if ms.gpa <= image.gpa < ms.gpa + ms.size]
            if not home or image.gpa + image.size > home[0].gpa + home[0].size:
                raise ConfigError(
                    "slots", f"no RAM slot holds the guest page tables at gpa {image.gpa:#x}"
                )
            home[0].write(image.gpa - home[0].gpa, image.data)
            vm.image = image
            for v in range(len(spec.areas_per_vcpu)):
                vcpu = vm.create_vcpu(v)
                vcpu.setup_cpl3()
                # a write to a gpa no slot backs is an MMIO exit the VMM drops, as on the
                # model (memslot-perf's move-active guest writes to the slot moved away)
                vcpu.drop_mmio_writes = True
        except BaseException:
            self.close()
            raise
        return vm

    def _build_image(self, spec: VmSpec):
        """Page tables for every vCPU's areas, at gpa 0 or else at the spec's pt_gfn.

        Linear address 0 must be mapped too: TR and GDT bases are 0 and kvm_pvm's
        emulation of the guest's ``out`` reads the TSS there (it triple-faults if not).
        """
        runs = _merge([a for areas in spec.areas_per_vcpu for a in areas])
        candidates = [0, (spec.pt_gfn << PAGE_SHIFT) // PAGE_SIZE_2M * PAGE_SIZE_2M]
        last: Exception | None = None
        for base in dict.fromkeys(candidates):
            layout = GuestLayout(base)
            for g0, g1 in runs:
                self._map(layout, g0 << PAGE_SHIFT, g1 << PAGE_SHIFT, spec.huge_pages)
            if base and runs[0][0] << PAGE_SHIFT >= PAGE_SIZE_2M:
                layout.map(0, PAGE_SIZE_2M, PAGE_SIZE_2M)
            try:
                return layout.build()
            except ValueError as exc:  # overlaps a mapped area: try the next place
                last = exc
        raise ConfigError("layout", f"no room for the guest page tables below the areas: {last}")

    @staticmethod
    def _map(layout: GuestLayout, a: int, b: int, huge: bool) -> None:
        h0 = (a + PAGE_SIZE_2M - 1) // PAGE_SIZE_2M * PAGE_SIZE_2M
        h1 = b // PAGE_SIZE_2M * PAGE_SIZE_2M
        if not huge or h1 <= h0:
            layout.map(a, b - a)
            return
        for x, y, size in ((a, h0, PAGE_SIZE_4K), (h0, h1, PAGE_SIZE_2M), (h1, b, PAGE_SIZE_4K)):
            if y > x:
                layout.map(x, y - x, size)

    # -- guest threads -------------------------------------------------------------------
    def start_passes(
        self, vcpu_id: int, gfn0: int, gfn1: int, passes: int, write: bool = True
    ) -> None:
        """Arm a guest thread; it starts with the host script in ``run_host``."""
        self._pending[vcpu_id] = (gfn0, gfn1, passes, write)

    def start_loop(
        self, vcpu_id: int, gfn0: int, gfn1: int, until_ns: int, write: bool = False
    ) -> None:
        """Arm a guest thread that makes passes until the run's clock reaches ``until_ns``:
        the guest runs an open-ended loop and is kicked out of KVM_RUN then."""
        self._pending[vcpu_id] = (gfn0, gfn1, LOOP_PASSES, write)
        self._until[vcpu_id] = until_ns

    def set_eager_page_split(self, on: bool) -> None:
        """``kvm.eager_page_split`` is a module parameter of the TDP MMU: check, never set
        (it is host-wide); refuse what this kernel would not do."""
        if not on:
            return
        if not self.system.tdp_mmu:
            raise ConfigError(
                "--enable",
                "eager-split is a TDP MMU feature; this kernel runs the shadow MMU"
                " (kvm.tdp_mmu=N): use --enable wrprot",
            )
        if self.system.param("eager_page_split") not in ("Y", "1"):
            raise ConfigError(
                "--enable",
                "kvm.eager_page_split is N on this host; set it with"
                " 'echo Y > /sys/module/kvm/parameters/eager_page_split' or use --enable wrprot",
            )

    def stop_loop(self, vcpu_id: int) -> None:
        """``make_guest_exit``: the loop guest is stopped as soon as the script returns."""
        if vcpu_id in self._loops:
            self._loops[vcpu_id] = min(self._loops[vcpu_id], self.now_ns())
        elif vcpu_id in self._until:
            self._until[vcpu_id] = self.now_ns()

    def max_memslots(self) -> int:
        """``KVM_CHECK_EXTENSION(KVM_CAP_NR_MEMSLOTS)``."""
        return self.system.check_extension("NR_MEMSLOTS")

    def host_touch(self, gfn0: int, gfn1: int, write: bool = True) -> int:
        """One qword per page through the host mapping (as ``vm_gpa2hva``), slot by slot:
        a strided numpy store or load per memslot the range crosses; ns taken."""
        vm = self._vm()
        if len(self._views) != len(vm.memslots) or any(
            self._views[s][:2] != (ms.gpa, ms.size) for s, ms in vm.memslots.items()
            if s in self._views
        ):  # fmt: skip
            self._views = {
                s: (ms.gpa, ms.size, ms.view(np.uint64)) for s, ms in vm.memslots.items()
            }
        a, b = gfn0 << PAGE_SHIFT, gfn1 << PAGE_SHIFT
        hit = [(g, size, v) for g, size, v in self._views.values() if g < b and a < g + size]
        q = PAGE_SIZE_4K // 8  # qwords per page
        t0 = time.perf_counter_ns()
        total = 0
        for g, size, v in hit:
            lo, hi = (max(a, g) - g) // 8, (min(b, g + size) - g) // 8
            if write:
                v[lo + q // 2 : hi : q] = 0x99AABBCCDDEEFF00
            else:
                total += int(v[lo:hi:q].sum())
        return time.perf_counter_ns() - t0

    def guests_done(self) -> bool:
        return all(not t.is_alive() for t in self._threads.values())

    def passes_done(self, vcpu_id: int) -> int:
        """Recorded passes, plus those the running thread has finished (live pass_ns)."""
        done = sum(1 for r in self.passes if r.vcpu == vcpu_id)
        t = self._threads.get(vcpu_id)
        if t is not None and t.is_alive():
            done += len(t.pass_ns)
        return done

    def run_host(self, script: Callable[[], None], name: str = "vmm") -> None:
        """Start the guest threads, run ``script`` here, then wait for the guests."""
        vm = self._vm()
        budget_s = JOIN_MARGIN_S
        new: dict[int, _PassThread] = {}
        loops = self._loops = dict(self._until)  # stop_loop() may bring a stop forward
        self._until.clear()
        loop_pages = {vid: g1 - g0 for vid, (g0, g1, _, _) in self._pending.items()}
        for vid, (g0, g1, passes, write) in self._pending.items():
            vcpu = vm.vcpus[vid]
            vcpu.set_touch(g0 << PAGE_SHIFT, g1 << PAGE_SHIFT, passes=passes, write=write)
            new[vid] = self._threads[vid] = _PassThread(vcpu, f"vcpu{vid}")
            if vid not in loops:
                budget_s += passes * (g1 - g0) * PASS_NS_PER_PAGE / 1e9
            self.npages_touched += g1 - g0
        self._pending.clear()
        for v in vm.vcpus:  # the script's own vCPUs pay the KVM_RUN pid switch now
            if v.id not in new:
                v.claim_thread()
        if not self.passes:
            self._t0 = time.perf_counter_ns()
        for t in new.values():
            t.start()
        started = list(new)
        try:
            script()
            for vid, until in sorted(loops.items(), key=lambda kv: kv[1]):
                time.sleep(max(0.0, (until - self.now_ns()) / 1e9))
                new.pop(vid).stop()  # its complete passes are in pass_ns
            deadline = time.monotonic() + budget_s
            for t in new.values():
                t.join(max(0.1, deadline - time.monotonic()))
        except (GuestExitError, VcpuTimeout, KvmError, OSError) as exc:
            self._stop_threads()
            raise BackendError(f"the kvm guest failed: {exc}") from exc
        except BaseException:
            self._stop_threads()
            raise
        for vid in started:
            t = self._threads[vid]
            if vid in loops:  # an open-ended loop touched its pages on every pass
                self.npages_touched += max(0, len(t.pass_ns) - 1) * loop_pages[vid]
            edges = [t.start_ns, *t.pass_ns]
            pfs = [t.pf0, *t.pf]
            for i in range(len(t.pass_ns)):
                self.passes.append(
                    PassRecord(
                        vid,
                        i,
                        edges[i] - self._t0,
                        edges[i + 1] - self._t0,
                        pfs[i + 1] - pfs[i],
                    )
                )
        if started or self._accessed:  # a host-only script (memslot setup) ran no guest
            self._check_native()
            self._accessed = False

    def _stop_threads(self) -> None:
        for t in self._threads.values():
            if t.is_alive():
                with contextlib.suppress(KvmError):
                    t.stop()

    def _check_native(self) -> None:
        """The guest must have run through the shadow MMU, not the emulator: some fault
        was fixed by installing an spte (``pf_fixed``: ``kvm_mmu_do_page_fault`` counts
        RET_PF_FIXED only). Live sptes at the end prove nothing more: the host's MMU
        notifier (khugepaged collapsing THP-backed guest memory, reclaim) may zap them
        unseen, and zaps counted as the drop across a delete or move miss what running
        vCPUs refaulted meanwhile; both made this check fail on a loaded host with
        ``pf_fixed`` 49 and ``pages_4k`` 0."""
        st = self.stats()
        if st.get("pf_fixed", 0) == 0:
            raise BackendError(
                "the guest did not run natively: no fault was fixed by an spte"
                f" (pf_fixed=0, pages_4k={st.get('pages_4k', 0)});"
                " the numbers would not be the shadow MMU's"
            )
        # an MMIO write is emulated by design (a gpa no memslot backs): not a CPL0 guest
        emulated = st.get("insn_emulation", 0) - sum(v.mmio_writes for v in self._vm().vcpus)
        if emulated > MAX_EMULATED_PER_PAGE * max(1, self.npages_touched):
            print(
                f"mmbench: warning: kvm guest emulated {emulated} instructions for"
                f" {self.npages_touched} pages touched; part of it did not run natively",
                file=sys.stderr,
            )
        self._series["native"].append((self.now_ns(), {"pf_fixed": st["pf_fixed"]}))

    # -- the host script's calls ---------------------------------------------------------
    def now_ns(self) -> int:
        return time.perf_counter_ns() - self._t0

    def sleep_ns(self, ns: float) -> None:
        time.sleep(ns / 1e9)

    def add_memslot(self, slot_id: int, gpa: int, size: int, name: str = "") -> int:
        """A slot the host script deleted before, at the same gpa and size, gets its host
        memory back (``_kept``), as a VMM keeps a ROM BAR's RAMBlock while the guest
        disables and enables the BAR; a fresh mapping per add made the vCPUs wait for
        mmap_lock in GUP while the script munmapped and mmapped. The memory is not written
        here: the ROM's, which nobody writes, stays mapped to the zero page after the
        guest's first read, so every later read faults page by page through
        ``get_user_pages`` (GUP-fast with ``FOLL_WRITE`` and the shadow MMU's prefetch both
        skip a read-only pte), 1.16 ms per 128 KiB read here against 0.17 ms in the model,
        which has the pages present after the first touch. Written first
        (``MADV_POPULATE_WRITE``) the read took 0.47 ms, and the share of deletes whose
        wake-up loses the pick fell from 0.56 to 0.29 (``mmbench.model.sched``):
        validate's rom-running, and the share the model uses, are measured with the
        memory as it is here."""
        vm = self._vm()
        kept = self._kept.get(slot_id)
        if kept is not None and not kept.freed and (kept.gpa, kept.size) == (gpa, size):
            return vm.readd_memslot(kept)
        if kept is not None:
            del self._kept[slot_id]
            kept.free()  # another layout at that slot id: this memory is no use
        return vm.add_memslot(slot_id, gpa, size, thp=False).register_ns

    def _live_sptes(self) -> int:
        st = self._vm().stats()
        return st.get("pages_4k", 0) + 512 * st.get("pages_2m", 0)

    def enable_trace(self, paths: tuple[str, ...]) -> None:
        """``--trace``: the kvmmmu tracepoints of ``paths`` in a private tracefs instance,
        and the wake-ups of this thread, which runs the host script (the VMM's)."""
        self._trace = TraceInstance(paths, track_thread=threading.get_native_id())

    def delete_memslot(self, slot_id: int) -> int:
        """Timed delete; sptes zapped = the drop in pages_4k/2m across it (a lower bound
        when vCPUs fault concurrently). With ``--trace``, what the delete emitted."""
        vm = self._vm()
        before = vm.stats()
        t0 = TraceInstance.now()
        ms = vm.memslots[slot_id]
        ns = vm.delete_memslot(slot_id, free=False)
        t1 = TraceInstance.now()  # the span lies between the two stats reads
        after = vm.stats()
        self._kept[slot_id] = ms  # for its re-add (add_memslot); freed with the VM
        self._traced("memslot-delete", (t0, t1), before, after)
        live = [st.get("pages_4k", 0) + 512 * st.get("pages_2m", 0) for st in (before, after)]
        self._sptes_zapped += max(0, live[0] - live[1])
        return ns

    def _traced(
        self,
        op: str,
        span: tuple[float, float],
        before: dict[str, float],
        after: dict[str, float],
    ) -> None:
        """With ``--trace``, note the operation's span; ``_collect_trace`` reads what it
        emitted once the run is over, into series ``trace:OP``."""
        if self._trace is None:
            return
        zapped = after.get("mmu_shadow_zapped", 0) - before.get("mmu_shadow_zapped", 0)
        self._trace_spans.append((op, *span, self.now_ns(), zapped))

    def _collect_trace(self) -> None:
        """Series ``trace:OP``, per traced operation: per tracepoint the events it emitted,
        beside the kernel's stat for the same count (``mmu_shadow_zapped``), the events'
        span, the events lost, and the VMM thread's wake-ups in it (``wake_waits_us``)."""
        if self._trace is None or not self._trace_spans:
            return
        spans, self._trace_spans = self._trace_spans, []
        windows, lost = self._trace.windows([(t0, t1) for _, t0, t1, _, _ in spans])
        for (op, _, _, at, zapped), w in zip(spans, windows, strict=True):
            data: dict[str, float] = {e: w.counts.get(e, 0) for e in self._trace.events}
            data["mmu_shadow_zapped"] = zapped
            data["span_us"] = round((w.last - w.first) * 1e6, 1)
            data["lost"] = lost
            data.update(wake_waits_us([(b - a) * 1e6 for a, b in w.wakeups]))
            self._series[f"trace:{op}"].append((at, data))

    def move_memslot(self, slot_id: int, new_gpa: int) -> int:
        before = self._live_sptes()
        ns = self._vm().move_memslot(slot_id, new_gpa)
        self._sptes_zapped += max(0, before - self._live_sptes())
        return ns

    def guest_access(self, vcpu_id: int, gfn0: int, gfn1: int, write: bool = False) -> int:
        """One pass on ``vcpu_id`` in this thread; a watchdog kicks it out if it hangs."""
        vcpu = self._vm().vcpus[vcpu_id]
        vcpu.set_touch(gfn0 << PAGE_SHIFT, gfn1 << PAGE_SHIFT, passes=1, write=write)
        budget_s = JOIN_MARGIN_S + (gfn1 - gfn0) * PASS_NS_PER_PAGE / 1e9
        self._watchdog.arm(vcpu, budget_s)  # no thread per access (watchdog.py says why)
        self._accessed = True
        t0 = time.perf_counter_ns()
        try:
            done = vcpu.run()
        finally:
            ns = time.perf_counter_ns() - t0
            self._watchdog.disarm()
        if done is None:
            raise VcpuTimeout(
                f"vCPU {vcpu_id} did not finish its access to gfns [{gfn0:#x}, {gfn1:#x})"
                f" within {budget_s:.1f}s; it was kicked out of KVM_RUN"
            )
        return ns

    def host_unmap(self, gpa: int, size: int, how: str) -> int:
        """``VmApi.host_unmap`` on the guest memory's real host mapping, vCPUs running:
        ``munmap`` is ``mmap(MAP_FIXED)`` of fresh anonymous memory over the range (the
        unmap and the new mapping in one call, THP advice re-applied), ``dontneed`` is
        ``madvise(MADV_DONTNEED)``, ``mprotect`` is ``mprotect(PROT_READ)`` (timed) then
        back to read-write. With ``--trace``, series ``trace:mmu-notifier``."""
        if how not in HOST_UNMAP_CALLS:
            raise ConfigError("how", f"{how!r}; allowed: {', '.join(HOST_UNMAP_CALLS)}")
        vm = self._vm()
        home = [m for m in vm.memslots.values() if m.gpa <= gpa and gpa + size <= m.gpa + m.size]
        if not home or gpa % PAGE_SIZE_4K or size <= 0 or size % PAGE_SIZE_4K:
            raise ConfigError(
                "host_unmap", f"gpa {gpa:#x} size {size:#x}: not page-aligned inside one memslot"
            )
        ms = home[0]
        hva = ms.gpa_to_hva(gpa)
        before = vm.stats()
        t_trace = TraceInstance.now()
        t0 = time.perf_counter_ns()
        if how == "munmap":
            k.mmap_anon_fixed(hva, size)
        elif how == "dontneed":
            k.madvise(hva, size, k.MADV_DONTNEED)
        else:
            k.mprotect(hva, size, k.PROT_READ)
        ns = time.perf_counter_ns() - t0
        span = (t_trace, TraceInstance.now())
        if how == "munmap":
            k.madvise(hva, size, k.MADV_HUGEPAGE if ms.thp else k.MADV_NOHUGEPAGE)
        elif how == "mprotect":
            k.mprotect(hva, size, k.PROT_READ | k.PROT_WRITE)
        after = vm.stats()
        self._traced("mmu-notifier", span, before, after)
        live = [st.get("pages_4k", 0) + 512 * st.get("pages_2m", 0) for st in (before, after)]
        self._sptes_zapped += max(0, live[0] - live[1])  # a lower bound: vCPUs refault
        data = {"how": how, "gpa": gpa, "size": size, "ns": ns}
        self._series["host-unmap"].append((self.now_ns(), data))
        return ns

    def event(self, name: str, **data: Any) -> None:
        self._series[name].append((self.now_ns(), data))

    # -- dirty logging -------------------------------------------------------------------
    def enable_manual_protect(self, initially_set: bool) -> None:
        """KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, now or (before ``create``) at creation."""
        if self.vm is None:
            self._manual_protect = initially_set
        else:
            self._vm().enable_manual_dirty_log(initially_set)

    def set_dirty_logging(self, slot_id: int, on: bool) -> int:
        return self._vm().set_dirty_logging(slot_id, on)

    def get_dirty_log(self, slot_id: int) -> tuple[int, int]:
        t0 = time.perf_counter_ns()
        bitmap = self._vm().get_dirty_log(slot_id)
        ns = time.perf_counter_ns() - t0
        return ns, bitmap_popcount(bitmap)

    def clear_dirty_log(self, slot_id: int, first_page: int, npages: int) -> int:
        return self._vm().clear_dirty_log(slot_id, first_page, npages)

    # -- teardown and figures ------------------------------------------------------------
    def destroy(self) -> int:
        """Teardown time: the close() of the VM fd that drops the last reference."""
        if self.teardown_ns is None:
            self._stop_threads()
            final = self.stats()
            t0 = TraceInstance.now()
            self.teardown_ns = self._vm().close()
            span = (t0, TraceInstance.now())
            # the stats died with the VM: what it had is what it freed
            held = {"mmu_shadow_zapped": final.get("mmu_cache_miss", 0)}
            self._traced("teardown", span, {"mmu_shadow_zapped": final.get("mmu_shadow_zapped", 0)},
                         held)  # fmt: skip
            # The stats die with the VM, but destroy frees every live spte and sp: the
            # kernel's own counts just before the close() say how many.
            live = sum(final.get(k, 0) for k in ("pages_4k", "pages_2m", "pages_1g"))
            final["sptes_zapped"] = final.get("sptes_zapped", 0) + live
            sps = final.get("mmu_cache_miss", 0) - final.get("mmu_shadow_zapped", 0)
            final["mmu_shadow_zapped"] = final.get("mmu_shadow_zapped", 0) + max(0, sps)
            self._final = final
        return self.teardown_ns

    def close(self) -> None:
        """Stop guests, free every fd and mapping (idempotent; after errors too)."""
        try:
            if self.vm is not None and not self.vm.closed:
                self._stop_threads()
                with contextlib.suppress(Exception):
                    self._final = self._final or self.stats()
                self.teardown_ns = self.vm.close()
        finally:
            self._watchdog.close()
            if self._trace:
                with contextlib.suppress(OSError):
                    self._collect_trace()
                self._trace.close()
            self.system.close()

    def _vm(self) -> Vm:
        if self.vm is None or self.vm.closed:
            raise BackendError("the kvm VM is not running (create() first, or already closed)")
        return self.vm

    def stats(self) -> dict[str, float]:
        if self.vm is None or self.vm.closed:
            return dict(self._final or {})
        vmst = self.vm.stats()
        out: dict[str, float] = {n: vmst[n] for n in VM_STATS if n in vmst}
        vcpus = [self.vm.vcpus[v] for v in self._threads] or self.vm.vcpus
        for v in vcpus:
            for n, val in v.stats().items():
                if n in VCPU_STATS:
                    out[n] = out.get(n, 0) + val
        out["sptes_zapped"] = self._sptes_zapped
        if "pf_taken" in out and "pf_spurious" in out:
            # RET_PF_RETRY is the one outcome kvm_mmu_do_page_fault counts in no stat but
            # pf_taken: a lower bound (MMIO and other exits count apart, not here)
            out["faults_retried"] = (
                out["pf_taken"] - out["pf_fixed"] - out.get("pf_emulate", 0) - out["pf_spurious"]
            )
        return out

    def series(self) -> dict[str, list]:
        self._collect_trace()
        return dict(self._series)
