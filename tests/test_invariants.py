"""Every policy against the correctness oracle, on hypothesis-generated memslot histories.

A small guest: page tables in slot 0, up to three data slots created, deleted and moved
at random inside a 24 MiB window that both vCPUs' processes map, while a guest thread
writes the window in passes on its own vCPU and the host script touches it from the
other. The ``invariants`` monitor checks after every delete and move, and at teardown.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbench import hookimpl
from mmbench.backends.sim import SlotSpec, VmSpec
from mmbench.errors import ConfigError, InvariantViolation
from mmbench.model.sched import KernelConfig
from mmbench.run import assemble
from mmbench.testing import memslot_histories

MiB = 1 << 20
WIN0, WIN1 = (8 * MiB) >> 12, (32 * MiB) >> 12  # the mapped window, in gfns
REG = 512  # gfns per 2 MiB

POLICIES = ["zap-all", "zap-all:lock_break=true", "fast-invalidate", "zap-slot"]

ops = memslot_histories()  # the public strategy third parties use (mmbench.testing)


def make_vm(policy_spec: str | None, plugins: tuple = (), kernel: KernelConfig | None = None):
    run = assemble(policy_spec, arch="x86-shadow", check=True, plugins=plugins, kernel=kernel)
    return run.vm, run.monitors[0]


def play_with(broken: object, history) -> int:
    """``play`` with a test's own (broken) policy object instead of a registered one."""
    return play(None, history, plugins=(broken,))


def play(
    policy_spec: str | None, history, plugins: tuple = (), kernel: KernelConfig | None = None
) -> int:
    vm, inv = make_vm(policy_spec, plugins, kernel)
    spec = VmSpec(
        slots=(SlotSpec(0, 0, 4 * MiB, "pt"),),
        areas_per_vcpu=(((WIN0, WIN1),), ((WIN0, WIN1),)),
        pt_gfn=16,
        max_gfn=WIN1 + REG,
    )
    vm.create(spec)
    vm.start_passes(0, WIN0, WIN1, passes=3)
    live: dict[int, int] = {0: 0}

    def script() -> None:
        for op in [("create", 1, 0, 6), ("touch", 0, 48), *history]:
            try:
                if op[0] == "create" and op[1] not in live:
                    base = WIN0 + op[2] * REG
                    vm.add_memslot(op[1], base << 12, min(op[3] * REG, WIN1 - base) << 12)
                    live[op[1]] = base
                elif op[0] == "delete" and op[1] in live:
                    vm.delete_memslot(op[1])
                    del live[op[1]]
                elif op[0] == "move" and op[1] in live:
                    vm.move_memslot(op[1], (WIN0 + op[2] * REG) << 12)
                    live[op[1]] = WIN0 + op[2] * REG
                elif op[0] == "delete-pt" and 0 in live:
                    vm.delete_memslot(0)  # roots in use stay, invalid, until vCPUs reload
                    del live[0]
                elif op[0] == "touch" and 0 in live:  # else the vCPU has shut down
                    g0 = WIN0 + op[1] * 128
                    vm.guest_access(1, g0, min(WIN1, g0 + op[2] * 128))
                elif op[0] == "sleep":
                    vm.sleep_ns(op[1] * 1000)
            except ConfigError:
                pass  # an overlapping create or move is refused, as KVM refuses it
        for slot_id in sorted(live, reverse=True):  # the page tables' slot last
            vm.delete_memslot(slot_id)

    vm.run_host(script)
    vm.destroy()
    return inv.checks


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=ops,
    kernel=st.builds(
        KernelConfig,
        preempt=st.sampled_from(["none", "voluntary", "full"]),
        hz=st.just(1000),
        host_cpus=st.sampled_from([1, 16]),
    ),
)
def test_policy_leaves_nothing_stale(policy, history, kernel):
    """Under every host kernel: the three preempt models, CPUs to spare or too few."""
    assert play(policy, history, kernel=kernel) >= 2  # the final delete and the teardown


@pytest.mark.parametrize("policy", POLICIES)
def test_fixed_history_runs_every_check(policy):
    history = [
        ("move", 1, 6),
        ("touch", 0, 48),
        ("delete", 1),
        ("create", 2, 2, 2),
        ("sleep", 50),
        ("delete", 2),
    ]
    assert play(policy, history) == 5  # move, delete, delete, the tables' slot, teardown


@pytest.mark.parametrize("policy", POLICIES)
def test_deleting_the_slot_of_the_guest_page_tables_while_the_guest_runs(policy):
    """Roots in use become invalid with a reload pending (legitimate, not stale); the
    vCPUs then find their CR3 outside every memslot and shut down (mmu_check_root)."""
    history = [("touch", 0, 48), ("sleep", 20), ("delete-pt",), ("sleep", 50)]
    assert play(policy, history) == 3  # the tables' slot, slot 1 at the end, teardown


class ForgetfulPolicy:
    """A broken policy: flushes TLBs but zaps nothing. The oracle must catch it."""

    name = "forgetful"
    archs = ("x86-shadow",)
    options: dict = {}

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        with kvm.mmu_lock:
            kvm.flush_remote_tlbs()
        return True


class NoFlushPolicy:
    """A broken policy: zaps the slot but never flushes remote TLBs."""

    name = "no-flush"
    archs = ("x86-shadow",)
    options: dict = {}

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        with kvm.mmu_lock:
            kvm.mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn)
        return True


class LpageLeakPolicy:
    """A broken fast invalidate: it resets lpage_info's counts by hand instead of
    ``kvm_clear_all_lpage_info``, so the obsolete sps stay accounted and unaccount again
    when they are zapped."""

    name = "lpage-leak"
    archs = ("x86-shadow",)
    options: dict = {}

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.mmu_valid_gen += 1
            mmu.lpage_disallow[:] = 0
            kvm.reload_remote_mmus()
            mmu.zap_pages(mmu.active_mmu_pages()[::-1], where=mmu.is_obsolete)
            mmu.commit_zap_page()
        return True


class SkipsShadowedTables:
    """A broken zap-slot: zaps the slot's rmaps but not the sps shadowing guest page
    tables inside the slot (``kvm_mmu_zap_memslot`` without the ``sp->gfn`` pass)."""

    name = "skips-tables"
    archs = ("x86-shadow",)

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        with kvm.mmu_lock:
            kvm.mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn, lock_break=True)
            kvm.mmu.commit_zap_page()
        return True


def test_oracle_catches_a_zap_that_skips_shadowed_tables():
    with pytest.raises(InvariantViolation, match="shadows gfn 0x10 outside every memslot"):
        play_with(SkipsShadowedTables(), [("touch", 0, 48), ("delete-pt",)])


class FastInvalidateWithoutReload:
    """A broken fast invalidate: obsolete roots are zapped, but no vCPU is asked to
    reload (``kvm_mmu_zap_all_fast`` without ``kvm_reload_remote_mmus``); zapping an
    obsolete root in use requests nothing by itself, as in the kernel."""

    name = "no-reload"
    archs = ("x86-shadow",)

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.mmu_valid_gen += 1
            mmu.kvm_clear_all_lpage_info()
            mmu.zap_pages(mmu.active_mmu_pages()[::-1], where=mmu.is_obsolete, lock_break=True)
            mmu.commit_zap_page()
        return True


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (FastInvalidateWithoutReload, "obsolete or invalid root sp 0 with no reload"),
        (ForgetfulPolicy, "still maps gfn"),
        (NoFlushPolicy, "not flushed"),
        (LpageLeakPolicy, "lpage_info"),
    ],
)
def test_oracle_catches_a_broken_policy(broken, message):
    run = assemble(arch="x86-shadow", check=True, plugins=[broken()])
    vm = run.vm
    vm.create(
        VmSpec(
            (SlotSpec(0, 0, 4 * MiB), SlotSpec(1, WIN0 << 12, 4 * MiB)),
            (((WIN0, WIN1),),),
            16,
            WIN1 + REG,
        )
    )

    def script():
        vm.guest_access(0, WIN0, WIN0 + 1024)
        vm.delete_memslot(1)

    with pytest.raises(InvariantViolation, match=message):
        vm.run_host(script)
