"""Workload ``memslot-perf``: the kernel's ``tools/testing/selftests/kvm/memslot_perf_test.c``.

Followed as of Linux 6.12+ (the version with ``-q``, "KVM: selftests: Test memslot move in
memslot_perf_test with quirk disabled", Yan Zhao, 2024; unchanged through 6.18). Each test
builds a VM whose test memory (``MEM_SIZE`` = 512 MiB + 64 KiB at ``MEM_GPA`` = 256 MiB;
32 MiB + 64 KiB for map, 128 MiB + 64 KiB for the unmap tests) is split over ``-s`` - 1
memslots (slot 0 is reserved: guest code and page tables), the last taking the remainder.
Adding those slots is the timed "slot setup". Then one vCPU and the host loop for ``-l``
seconds, and the per-iteration time is the loop time over the iterations done:

- ``map``: the guest writes one half of the 32 MiB area while the host unmaps the other
  (``madvise(MADV_DONTNEED)``, which reaches KVM through the MMU notifier), then swaps;
- ``unmap`` / ``unmap-chunked``: the guest touches one page per half; the host unmaps the
  other half of 128 MiB one 4 KiB page (or 2 MiB chunk) per ``madvise``;
- ``move-active`` / ``move-inactive``: the guest writes a 192 KiB area in a loop while the
  host moves the last memslot to ``MEM_GPA + MEM_SIZE`` and back (``KVM_MR_MOVE``: on x86
  ``kvm_arch_flush_shadow_memslot``); in the active test half the area lies in the moved
  slot (those writes are MMIO exits while it is away), in the inactive test none;
- ``rw``: the guest writes every page of the 512 MiB, the host writes them, the guest reads
  them back, the host reads the guest's.

``-q`` disables ``KVM_X86_QUIRK_SLOT_ZAP_ALL``. In 6.12-6.18 ``kvm_arch_flush_shadow_memslot``
calls ``kvm_mmu_zap_all_fast`` while the quirk is on and ``kvm_mmu_zap_memslot`` (the
slot's rmaps via ``kvm_unmap_gfn_range``, then the shadow pages of gfns in the slot, with
lock-break: "KVM: x86/mmu: Zap only SPs that shadow gPTEs when deleting memslot") when it is
off; so here ``-q`` selects policy ``zap-slot`` and its absence ``fast-invalidate`` (the
kvm backend's knobs for the same two). Where mmbench differs from the selftest: the map,
unmap and rw tests alternate guest and host (the selftest overlaps them on two CPUs, so a
modelled iteration is their sum, not the larger); ``--max-iterations`` (default 100: the
selftest sizes its areas so each test gets "well over 100 iterations") ends a loop early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mmbench.backends.vmapi import SlotSpec, VmApi, VmSpec
from mmbench.errors import ConfigError
from mmbench.host.hookspecs import hookimpl
from mmbench.model.memslots import KVM_USER_MEM_SLOTS, PAGE_SHIFT, PAGE_SIZE
from mmbench.workloads.base import Metric, Param, WorkloadSpec
from mmbench.workloads.sizes import KiB, MiB

MEM_EXTRA_SIZE = 64 * KiB
MEM_GPA = 256 * MiB
MEM_SIZE = 512 * MiB + MEM_EXTRA_SIZE
MEM_TEST_GPA = MEM_GPA + MEM_EXTRA_SIZE
MEM_TEST_SIZE = MEM_SIZE - MEM_EXTRA_SIZE
MEM_SIZE_MAP = 32 * MiB + MEM_EXTRA_SIZE
MEM_TEST_MAP_SIZE = MEM_SIZE_MAP - MEM_EXTRA_SIZE
MEM_TEST_UNMAP_SIZE = 128 * MiB
MEM_TEST_UNMAP_CHUNK_SIZE = 2 * MiB
MEM_TEST_MOVE_SIZE = 3 * 64 * KiB
MEM_TEST_MOVE_GPA_DEST = MEM_GPA + MEM_SIZE
SLOT0_SIZE = 16 * MiB  # slot 0: the guest's code and page tables (below MEM_GPA)
PT_GFN = 16


@dataclass(frozen=True)
class Test:
    """One entry of the selftest's ``tests[]``: its name there and its memory size."""

    key: str  # mmbench's name (metric prefix with - as _)
    name: str  # the selftest's, as it prints it
    mem_size: int  # 0: MEM_SIZE (the only ones whose slot setup is ranked)


TESTS = (
    Test("map", "map", MEM_SIZE_MAP),
    Test("unmap", "unmap", MEM_TEST_UNMAP_SIZE + MEM_EXTRA_SIZE),
    Test("unmap-chunked", "unmap chunked", MEM_TEST_UNMAP_SIZE + MEM_EXTRA_SIZE),
    Test("move-active", "move active area", 0),
    Test("move-inactive", "move inactive area", 0),
    Test("rw", "RW", 0),
)


def _metrics() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for t in TESTS:
        k = t.key.replace("-", "_")
        out[f"{k}_iter_best_ms"] = Metric(
            "ms", f"{t.name}: best runtime per iteration over the runs (-r)"
        )
        out[f"{k}_iter_mean_ms"] = Metric(
            "ms", f"{t.name}: mean over the runs of the per-iteration time"
        )
        out[f"{k}_slot_setup_ms"] = Metric(
            "ms", f"{t.name}: slot setup (adding slots 1..N), best run"
        )
        out[f"{k}_iterations"] = Metric(
            "", f"{t.name}: iterations of the best run", lower_is_better=False, kind="count"
        )
    out["slot_setup_best_ms"] = Metric(
        "ms", "best slot setup time for the whole test area (the MEM_SIZE tests)"
    )
    return out


@dataclass(frozen=True)
class SlotLayout:
    """``prepare_vm``: ``nslots`` test slots of ``pages_per_slot`` from ``MEM_GPA``, the
    last with the remainder as well."""

    nslots: int
    npages: int

    @property
    def pages_per_slot(self) -> int:
        return self.npages // self.nslots

    def slot_pages(self, i: int) -> int:
        """Pages of test slot ``i`` (0-based; memslot id ``i + 1``)."""
        extra = self.npages % self.nslots if i == self.nslots - 1 else 0
        return self.pages_per_slot + extra

    def slot2gpa(self, i: int) -> int:
        return MEM_GPA + i * self.pages_per_slot * PAGE_SIZE

    def pieces(self, gpa: int, size: int) -> list[tuple[int, int]]:
        """``test_memslot_do_unmap``: ``[gpa, gpa+size)`` cut at memslot boundaries."""
        out = []
        end = gpa + size
        while gpa < end:
            i = min((gpa - MEM_GPA) // PAGE_SIZE // self.pages_per_slot, self.nslots - 1)
            slot_end = self.slot2gpa(i) + self.slot_pages(i) * PAGE_SIZE
            n = min(end, slot_end) - gpa
            out.append((gpa, n))
            gpa += n
        return out


class MemslotPerf:
    name = "memslot-perf"
    headline = ("move_active_iter_best_ms", "move_inactive_iter_best_ms")
    # small enough for ``mmbench list --costs`` to run once per cost
    probe = {"slots": 64, "first": 3, "last": 4, "loop_s": 0.2, "max_iterations": 5}
    description = "the kernel's memslot_perf_test: map, unmap, move and rw over many memslots"
    paths = ("memslot-delete",)
    default_plots = ()
    params = (
        Param(
            "slots",
            int,
            KVM_USER_MEM_SLOTS,
            "memslot count cap, slot 0 included (the selftest's -s; KVM_CAP_NR_MEMSLOTS caps it)",
            ("-s", "--slots"),
            min=2,
            max=32768,
        ),
        Param("first", int, 0, "first test to run: 0 map .. 5 rw", ("-f", "--first"), 0, max=5),
        Param("last", int, 5, "last test to run: 0 map .. 5 rw", ("-e", "--last"), 0, max=5),
        Param(
            "loop_s", float, 5.0, "test length in seconds", ("-l", "--loop-s"), above=0, max=3600
        ),
        Param("runs", int, 1, "runs per test", ("-r", "--runs"), 1, max=1000),
        Param(
            "no_quirk",
            bool,
            False,
            "disable KVM_X86_QUIRK_SLOT_ZAP_ALL (memslot moves zap only the slot)",
            ("-q", "--no-slot-zap-quirk"),
            switch=True,
        ),
        Param("verbose", bool, False, "print the slot layout", ("-v", "--verbose"), switch=True),
        Param(
            "max_iterations",
            int,
            100,
            "end a test's loop after this many iterations (0: only -l ends it)",
            min=0,
        ),
    )
    metrics = _metrics()

    def report_lines(self, params: dict[str, Any], series: dict[str, list]) -> list[str]:
        """The selftest's own output for one repetition's series (``mmbench run`` prints it
        under the table)."""
        return selftest_lines(params, [ev for _, ev in series.get("memslot-perf", ())])

    @staticmethod
    def policies_for(p: WorkloadSpec, arch: str, given: list[str]) -> list[str]:
        """The memslot policy is the quirk's (``-q``), as ``kvm_arch_flush_shadow_memslot``."""
        if given:
            if p.no_quirk:
                raise ConfigError(
                    "-q", "selects the memslot policy (zap-slot); do not combine it with --policy"
                )
            return given
        if arch != "x86-shadow":
            return []
        return ["zap-slot" if p.no_quirk else "fast-invalidate"]

    def tests(self, p: WorkloadSpec) -> tuple[Test, ...]:
        if p.first > p.last:
            raise ConfigError(
                "-f/--first", f"must not be greater than -e/--last ({p.first} > {p.last})"
            )
        return TESTS[p.first : p.last + 1]

    def spec(self, test: Test, nslots: int) -> VmSpec:
        """Slot 0 for code and page tables; the guest maps all test memory 1:1."""
        mem = test.mem_size or MEM_SIZE
        g0, g1 = MEM_GPA >> PAGE_SHIFT, (MEM_GPA + mem) >> PAGE_SHIFT
        top = MEM_TEST_MOVE_GPA_DEST + mem
        return VmSpec(
            slots=(SlotSpec(0, 0, SLOT0_SIZE, "code and page tables"),),
            areas_per_vcpu=(((g0, g1),),),
            pt_gfn=PT_GFN,
            max_gfn=top >> PAGE_SHIFT,
        )

    def layout(self, p: WorkloadSpec, arch: Any) -> VmSpec:
        tests = self.tests(p)
        return self.spec(tests[0], p.slots - 1)

    # -- one run of one test ---------------------------------------------------------------
    def run(self, vm: VmApi, p: WorkloadSpec) -> dict[str, float]:
        tests = self.tests(p)
        self._events: list[dict[str, Any]] = []
        nslots = min(p.slots, vm.max_memslots()) - 1  # parse_args: slot 0 is reserved
        out: dict[str, float] = {}
        best_setup = 0
        self._built = False
        for test in tests:
            results = []
            for run in range(p.runs):
                res = self._execute(vm, p, test, nslots, run)
                if res is None:
                    break
                results.append(res)
                if not test.mem_size and (not best_setup or res[0] < best_setup):
                    best_setup = res[0]
            done = [r for r in results if r[2]]
            if not done:
                continue
            k = test.key.replace("-", "_")
            best = min(done, key=lambda r: r[1] / r[2])
            out[f"{k}_iter_best_ms"] = best[1] / best[2] / 1e6
            out[f"{k}_iter_mean_ms"] = sum(r[1] / r[2] for r in done) / len(done) / 1e6
            out[f"{k}_slot_setup_ms"] = min(r[0] for r in results) / 1e6
            out[f"{k}_iterations"] = best[2]
        if best_setup:
            out["slot_setup_best_ms"] = best_setup / 1e6
        if not self._built:
            why = "; ".join(ev["skipped"] for ev in self._events)
            raise ConfigError("-s", f"no test can run with {nslots + 1} slots: {why}")
        for ev in self._events:  # every VM's runs, in the last VM's series
            vm.event("memslot-perf", **ev)
        return out

    def _execute(
        self, vm: VmApi, p: WorkloadSpec, test: Test, nslots: int, run: int
    ) -> tuple[int, int, int] | None:
        """``test_execute``: (slot setup ns, loop ns, iterations), or None if the slot
        count does not fit the test (the selftest's message is in the series)."""
        mem = test.mem_size or MEM_SIZE
        slots = SlotLayout(nslots, mem // PAGE_SIZE)
        why = self._refusal(test, slots)
        if why:
            self._events.append({"test": test.key, "run": run, "skipped": why})
            return None
        vm.create(self.spec(test, nslots))
        self._built = True
        state: dict[str, int] = {}

        def prepare() -> None:
            setup = 0
            gpa = MEM_GPA
            for i in range(nslots):
                size = slots.slot_pages(i) * PAGE_SIZE
                setup += vm.add_memslot(i + 1, gpa, size, f"test slot {i + 1}")
                gpa += size
            state["setup"] = setup
            # prepare_vm's memset of every slot: host pages exist before the guest runs
            vm.host_touch(MEM_GPA >> PAGE_SHIFT, (MEM_GPA + mem) >> PAGE_SHIFT, write=True)

        vm.run_host(prepare, name="prepare_vm")  # before launch_vm: no guest runs yet
        if test.key.startswith("move"):
            src = slots.slot2gpa(nslots - 1)
            area = src - MEM_TEST_MOVE_SIZE // (2 if test.key == "move-active" else 1)
            vm.start_loop(
                0, area >> PAGE_SHIFT, (area + MEM_TEST_MOVE_SIZE) >> PAGE_SHIFT, 1 << 62, True
            )
        vm.run_host(lambda: self._loop(vm, p, test, slots, state), name="memslot-perf")
        vm.destroy()
        self._events.append(
            {
                "test": test.key,
                "run": run,
                "slot_setup_ns": state["setup"],
                "guest_runtime_ns": state["runtime"],
                "nloops": state["nloops"],
                "nslots": nslots,
                "pages_per_slot": slots.pages_per_slot,
                "rempages": slots.npages % nslots,
            }
        )
        return state["setup"], state["runtime"], state["nloops"]

    @staticmethod
    def _refusal(test: Test, slots: SlotLayout) -> str:
        """``prepare_vm`` and ``test_memslot_move_prepare``'s checks, in their words."""
        if not slots.pages_per_slot:
            return (
                "Memslot count too high for this test, decrease the cap"
                f" (max is {slots.npages + 1})"
            )
        if test.key.startswith("move") and slots.nslots < 2:
            return "Memslot count may be too high for this test, try adjusting the cap"
        last = slots.slot_pages(slots.nslots - 1) * PAGE_SIZE
        if test.key == "move-active" and last < MEM_TEST_MOVE_SIZE // 2:
            return "Memslot count may be too high for this test, try adjusting the cap"
        return ""

    def _loop(
        self, vm: VmApi, p: WorkloadSpec, test: Test, slots: SlotLayout, state: dict[str, int]
    ) -> None:
        """``while (elapsed < maxtime) { loop(); nloops++; }``, then the guest exits. The
        loop time is the sum of the operations' own times (each ioctl, guest pass or host
        pass as the backend times it: on the kernel without the Python between them)."""
        t0 = vm.now_ns()
        limit = int(p.loop_s * 1e9)
        n = busy = 0
        body = {
            "map": lambda: self._map(vm, slots),
            "unmap": lambda: self._unmap(vm, slots, 1),
            "unmap-chunked": lambda: self._unmap(vm, slots, MEM_TEST_UNMAP_CHUNK_SIZE // PAGE_SIZE),
            "move-active": lambda: self._move(vm, slots),
            "move-inactive": lambda: self._move(vm, slots),
            "rw": lambda: self._rw(vm),
        }[test.key]
        while True:
            if vm.now_ns() - t0 >= limit or (p.max_iterations and n >= p.max_iterations):
                break
            busy += body()
            n += 1
        if test.key.startswith("move"):
            vm.stop_loop(0)  # make_guest_exit
        state["runtime"], state["nloops"] = busy, n

    @staticmethod
    def _unmap_range(vm: VmApi, slots: SlotLayout, gpa: int, size: int) -> int:
        """``test_memslot_do_unmap``: one ``madvise`` per memslot piece; ns."""
        unmap = vm.host_unmap
        return sum(unmap(g, n, "dontneed") for g, n in slots.pieces(gpa, size))

    def _map(self, vm: VmApi, slots: SlotLayout) -> int:
        """``test_memslot_map_loop`` with ``guest_code_test_memslot_map``'s two halves."""
        half = MEM_TEST_MAP_SIZE // 2
        g = MEM_TEST_GPA >> PAGE_SHIFT
        hp = half >> PAGE_SHIFT
        ns = self._unmap_range(vm, slots, MEM_TEST_GPA + half, half)
        ns += vm.guest_access(0, g, g + hp, write=True)
        ns += self._unmap_range(vm, slots, MEM_TEST_GPA, half)
        return ns + vm.guest_access(0, g + hp, g + 2 * hp, write=True)

    def _unmap(self, vm: VmApi, slots: SlotLayout, chunk_pages: int) -> int:
        """``test_memslot_unmap_loop_common``: the guest touches one page of a half, then
        the host unmaps that half ``chunk_pages`` at a time; then the other half."""
        half = MEM_TEST_UNMAP_SIZE // 2
        chunk = chunk_pages * PAGE_SIZE
        ns = 0
        for base in (MEM_TEST_GPA, MEM_TEST_GPA + half):
            g = base >> PAGE_SHIFT
            ns += vm.guest_access(0, g, g + 1, write=True)
            for off in range(0, half, chunk):
                ns += self._unmap_range(vm, slots, base + off, chunk)
        return ns

    @staticmethod
    def _move(vm: VmApi, slots: SlotLayout) -> int:
        """``test_memslot_move_loop``: the last slot away and back."""
        last = slots.nslots
        ns = vm.move_memslot(last, MEM_TEST_MOVE_GPA_DEST)
        return ns + vm.move_memslot(last, slots.slot2gpa(slots.nslots - 1))

    @staticmethod
    def _rw(vm: VmApi) -> int:
        """``test_memslot_rw_loop`` with ``guest_code_test_memslot_rw``: guest writes, host
        writes, guest reads back and clears, host reads back and clears."""
        g0, g1 = MEM_TEST_GPA >> PAGE_SHIFT, (MEM_TEST_GPA + MEM_TEST_SIZE) >> PAGE_SHIFT
        ns = vm.guest_access(0, g0, g1, write=True)
        ns += vm.host_touch(g0, g1, write=True)
        ns += vm.guest_access(0, g0, g1, write=True)
        return ns + vm.host_touch(g0, g1, write=True)


def selftest_lines(params: dict[str, Any], events: list[dict[str, Any]]) -> list[str]:
    """What memslot_perf_test prints for these runs (``main`` and ``test_loop``), from the
    ``memslot-perf`` series: one event per run of each test."""

    def sec(ns: float) -> str:
        return f"{int(ns // 1_000_000_000)}.{int(ns % 1_000_000_000):09d}s"

    lines: list[str] = []
    by_test: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_test.setdefault(ev["test"], []).append(ev)
    best_setup = None
    for n, t in enumerate(t for t in TESTS if t.key in by_test):
        if n:
            lines.append("")
        lines.append(
            f"Testing {t.name} performance with {params['runs']} runs,"
            f" {params['loop_s']:g} seconds each"
        )
        best = None
        for ev in by_test[t.key]:
            if "skipped" in ev:
                lines.append(ev["skipped"])
                break
            if params.get("verbose"):
                lines.append(
                    f"Adding slots 1..{ev['nslots']}, each slot with {ev['pages_per_slot']}"
                    f" pages + {ev['rempages']} extra pages last"
                )
            lines.append(
                f"Test took {sec(ev['slot_setup_ns'])} for slot setup +"
                f" {sec(ev['guest_runtime_ns'])} all iterations"
            )
            if not ev["nloops"]:
                lines.append("No full loops done - too short test time or system too loaded?")
                continue
            it = ev["guest_runtime_ns"] // ev["nloops"]
            lines.append(f"Done {ev['nloops']} iterations, avg {sec(it)} each")
            if best is None or it < best[0]:
                best = (it, ev["nloops"])
            if not t.mem_size and (best_setup is None or ev["slot_setup_ns"] < best_setup):
                best_setup = ev["slot_setup_ns"]
        if best:
            lines.append(
                f"Best runtime result was {sec(best[0])} per iteration (with {best[1]} iterations)"
            )
    if best_setup:
        lines.append(f"Best slot setup time for the whole test area was {sec(best_setup)}")
    return lines


@hookimpl
def mmbench_register_workloads(register):
    register(MemslotPerf)
