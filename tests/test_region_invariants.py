"""Dirty-log policies on x86-tdp against the oracle, on hypothesis-generated histories.

A small guest: 16 regions of 2 MiB, data slots created, deleted and logged at random,
while vCPU 0 writes its window in passes and the host script (on vCPU 1) writes or reads
ranges, collects and clears the dirty log and toggles logging. The ``invariants`` monitor
checks after every flags change, dirty-log clear, delete and the teardown: no writable
spte maps a page the dirty bitmap lacks, nothing stale stays mapped, every zap flushed.
The lazy worker runs within the history (short delay) and must never touch a freed slot.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbench import hookimpl
from mmbench.backends.sim import SlotSpec, VmSpec
from mmbench.errors import ConfigError, InvariantViolation
from mmbench.run import assemble

REG = 512  # gfns per 2 MiB
NREG = 16  # units of the window; a unit is ``scale`` regions
POLICIES = [
    "collapse-sync",
    "collapse-sync:lock_break=true",
    "lazy-collapse:delay_s=0.0003",
    "recover-in-place",
]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("log"), st.integers(1, 2), st.booleans()),
        st.tuples(st.just("touch"), st.integers(0, 15), st.integers(1, 8), st.booleans()),
        st.tuples(st.just("get"), st.integers(1, 2)),
        st.tuples(st.just("clear"), st.integers(1, 2), st.integers(0, 7), st.integers(1, 8)),
        st.tuples(st.just("delete"), st.integers(1, 2)),
        st.tuples(st.just("create"), st.integers(1, 2), st.integers(0, 15), st.integers(1, 8)),
        st.tuples(st.just("sleep"), st.integers(1, 500)),
    ),
    min_size=1,
    max_size=25,
)


def make_vm(policy_spec: str | None, arch_name: str = "x86-tdp", plugins: tuple = ()):
    """A VM on ``arch_name`` with the policies ``policy_spec`` (``+``-separated) and a
    test's own policy objects ``plugins``."""
    run = assemble(policy_spec, arch=arch_name, check=True, plugins=plugins)
    return run.vm, run.monitors[0]


def play(
    policy_spec: str,
    history,
    manual: bool,
    init_set: bool,
    eager: bool,
    scale: int = 1,
    arch: str = "x86-tdp",
    keep_slots: bool = False,
    plugins: tuple = (),
    passes: int = 3,
) -> int:
    """Play ``history`` in units of ``scale`` regions; ``scale`` 128 is a 4 GiB guest
    backed by 1 GiB pages. ``keep_slots``: tear the VM down with its slots still mapped
    (else they are deleted first). ``passes``: how long vCPU 0 writes its window."""
    vm, inv = make_vm(policy_spec, arch_name=arch, plugins=plugins)
    u = scale * REG  # gfns per unit
    window = (0, NREG * u)
    page = (1 << 30) if scale >= 128 else (2 << 20)
    vm.create(VmSpec((), ((window,), (window,)), 0, NREG * u, True, page))
    if manual:
        vm.enable_manual_protect(init_set)
    vm.set_eager_page_split(eager)
    vm.start_passes(0, *window, passes=passes)
    live: dict[int, tuple[int, int]] = {}

    def script() -> None:
        prefix = [("create", 1, 0, 8), ("touch", 0, 8, True), ("log", 1, True)]
        for op in [*prefix, ("touch", 0, 8, True), *history]:
            try:
                kind, sid = op[0], op[1]
                if kind == "create" and sid not in live:
                    n = min(op[3], NREG - op[2])
                    vm.add_memslot(sid, op[2] * u << 12, n * u << 12)
                    live[sid] = (op[2], n)
                elif kind == "delete" and sid in live:
                    vm.delete_memslot(sid)
                    del live[sid]
                elif kind == "log" and sid in live:
                    vm.set_dirty_logging(sid, op[2])
                elif kind == "get" and sid in live:
                    vm.get_dirty_log(sid)
                elif kind == "clear" and sid in live:
                    r0, n = op[2], op[3]
                    vm.clear_dirty_log(sid, r0 * u, n * u)
                elif kind == "touch":
                    r1 = min(NREG, sid + op[2])
                    vm.guest_access(1, sid * u, r1 * u, write=op[3])
                elif kind == "sleep":
                    vm.sleep_ns(sid * 1000)
            except ConfigError:
                pass  # not logged, no manual protect, out of range, overlap: refused
        for sid in [] if keep_slots else list(live):
            vm.delete_memslot(sid)

    vm.run_host(script)
    vm.destroy()
    return inv.checks


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=ops, manual=st.booleans(), init_set=st.booleans(), eager=st.booleans())
def test_dirty_log_policy_leaves_nothing_stale(policy, history, manual, init_set, eager):
    assert play(policy, history, manual, init_set and manual, eager) >= 3


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=ops, manual=st.booleans(), eager=st.booleans())
def test_dirty_log_policy_with_1g_pages(policy, history, manual, eager):
    assert play(policy, history, manual, manual, eager, scale=128) >= 3


TEARDOWN = [
    ("arm64", "s2-unmap"),
    ("arm64", "s2-elide"),
    ("x86-tdp", "zap-all+recover-in-place"),
    ("x86-tdp", "zap-all:lock_break=true+lazy-collapse:delay_s=0.0003"),
]


@pytest.mark.parametrize(("arch", "policy"), TEARDOWN)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=ops, manual=st.booleans(), gib=st.booleans(), keep=st.booleans())
def test_teardown_policy_leaves_nothing(arch, policy, history, manual, gib, keep):
    """Whatever was mapped, logged or split, and whether or not its slots were deleted
    first, teardown leaves nothing and flushes."""
    checks = play(policy, history, manual, manual, False, 128 if gib else 1, arch, keep)
    assert checks >= 2  # the logging change of the prefix and the teardown


class FreesNothing:
    """A broken teardown: answers ``kvm_arch_flush_shadow_all`` and frees nothing."""

    name = "frees-nothing"
    archs = ("arm64", "x86-tdp")

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm):
        return True


class ElidesTheTlbi:
    """A broken s2-elide: drops the CMOs and the per-IPA TLBIs, and the TLBI VMALL too."""

    name = "elides-the-tlbi"
    archs = ("arm64",)

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm):
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_range(0, mmu.nr_regions, lock_break=True, cmo=False, tlbi_per_ipa=False)
            mmu.free_tables()
        return True


@pytest.mark.parametrize(
    ("arch", "broken", "message"),
    [
        ("arm64", FreesNothing, "mappings still live"),
        ("x86-tdp", FreesNothing, "mappings still live"),
        ("arm64", ElidesTheTlbi, "never flushed"),
    ],
)
def test_teardown_with_slots_still_mapped_catches_a_broken_teardown(arch, broken, message):
    history = [("touch", 0, 8, True), ("sleep", 5)]
    with pytest.raises(InvariantViolation, match=message):
        play(None, history, False, False, False, 1, arch, keep_slots=True, plugins=(broken(),))


def test_lazy_worker_drops_a_slot_deleted_before_it_runs():
    vm, inv = make_vm("lazy-collapse:delay_s=0.001")
    vm.create(VmSpec((), (((0, 8 * REG),),), 0, 8 * REG, huge_pages=True))

    def script() -> None:
        vm.add_memslot(1, 0, 8 * REG << 12)
        vm.guest_access(0, 0, 8 * REG, write=True)
        vm.set_dirty_logging(1, True)
        vm.guest_access(0, 0, 8 * REG, write=True)  # 4 KiB now
        vm.set_dirty_logging(1, False)  # queued for the worker, 1 ms away
        vm.delete_memslot(1)
        vm.add_memslot(1, 0, 8 * REG << 12)  # same id, a new slot
        vm.sleep_ns(5e6)

    vm.run_host(script)
    st = vm.kvm.stats.vm
    assert st["collapse_work_dropped"] == 1
    assert vm.kvm.mmu.nr_mapped() == 0  # the worker zapped nothing of the new slot
    vm.destroy()
    assert inv.checks >= 3


class NoWriteProtect:
    """A broken arch default: starts logging without write-protecting anything."""

    @hookimpl
    def mmbench_dirty_log_enable(self, kvm, slot):
        return True


class ZapWithoutFlush:
    """A broken policy: zaps the slot's tables on disable but never flushes TLBs."""

    name = "zap-no-flush"
    archs = ("x86-tdp",)
    options: dict = {}

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm, slot):
        r0, r1 = kvm.mmu.slot_regions(slot)
        with kvm.mmu_lock:
            kvm.mmu.zap_range(r0, r1, lock_break=False)
        return True


@pytest.mark.parametrize(
    ("history", "extra", "message"),
    [
        ([("touch", 0, 8, True)], (NoWriteProtect(),), "writable spte maps"),
        ([("log", 1, False)], (), "not flushed"),
    ],
)
def test_oracle_catches_broken_dirty_logging(history, extra, message):
    run = assemble(arch="x86-tdp", check=True, plugins=[*extra, ZapWithoutFlush()])
    vm = run.vm
    vm.create(VmSpec((SlotSpec(1, 0, 8 * REG << 12),), (((0, 8 * REG),),), 0, 8 * REG, True))

    def script() -> None:
        vm.guest_access(0, 0, 8 * REG, write=True)
        vm.set_dirty_logging(1, True)
        for op in history:
            if op[0] == "touch":
                vm.guest_access(0, 0, 8 * REG, write=True)
            else:
                vm.set_dirty_logging(1, op[2])

    with pytest.raises(InvariantViolation, match=message):
        vm.run_host(script)


@pytest.mark.parametrize(
    ("arch", "policy", "ipis"), [("x86-tdp", "collapse-sync", True), ("arm64", "s2-elide", False)]
)
def test_one_remote_flush_ipis_on_x86_and_broadcasts_on_arm64(arch, policy, ipis):
    """``Kvm.flush_remote_tlbs`` serves both families: a batch of three flushes counts
    three, IPIs each vCPU once on x86 and kicks nobody on arm64 (``TLBI VMALLS12E1IS``)."""
    vm, _ = make_vm(policy, arch_name=arch)
    area = ((0, 8 * REG),)
    vm.create(VmSpec((SlotSpec(1, 0, 8 * REG << 12),), (area, area), 0, 8 * REG, True))
    kvm = vm.kvm
    took: list[int] = []

    def script() -> None:
        t0 = kvm.now
        kvm.flush_remote_tlbs(3)
        took.append(kvm.now - t0)

    vm.run_host(script)
    st = kvm.stats.vm
    assert st["remote_tlb_flush"] == st["remote_tlb_flush_requests"] == 3
    assert st["tlbi"] == (0 if ipis else 3)
    assert [v.pending_flushes for v in kvm.vcpus] == ([1, 1] if ipis else [0, 0])
    c = kvm.costs
    per = c.remote_tlb_flush + (2 * c.kick_vcpu if ipis else 0)
    assert took[0] == pytest.approx(3 * per, abs=1)


def test_a_walk_in_progress_is_not_a_missing_flush():
    """Found by hypothesis: the lazy worker, mid-walk on 1 GiB pages, holds mmu_lock with
    zapped tables not yet flushed when the host re-flags the slot; its walk flushes before
    it yields, so the oracle must not call that state stale."""
    history = [("log", 1, False), ("touch", 0, 2, False), ("log", 1, False)]
    policy = "zap-all:lock_break=true+lazy-collapse:delay_s=0.0003"
    assert play(policy, history, False, False, False, 128, "x86-tdp") >= 3
