"""mmbench's property test of a memslot policy, for any policy's own test suite.

A third party tests its policy with the oracle mmbench's policies are tested with,
without editing mmbench: hypothesis generates memslot histories (create, delete and move
up to three data slots inside a 24 MiB window, delete the slot holding the guest page
tables, host touches, pauses) while a guest thread writes the window in passes, and the
``invariants`` monitor checks after every delete and move and at teardown that no spte,
sp or root refers to a deleted slot or a stale generation and that every zap was flushed.

    # tests/test_my_policy.py of your distribution (pip install mmbench[test])
    from mmbench.testing import check_policy

    def test_my_policy_leaves_nothing_stale():
        check_policy("my-zap:batch=4")        # installed: by name, with options
        check_policy(MyZap(batch=4))           # or the object itself, not installed

A history that breaks an invariant fails the test with hypothesis's shrunk example and
the invariant's message. The path is memslot delete/move on ``x86-shadow`` (the rmaps,
sps and roots the oracle knows); hypothesis is imported only when a check runs.
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from mmbench.backends.vmapi import SlotSpec, VmSpec
from mmbench.errors import ConfigError
from mmbench.run.assemble import assemble

MiB = 1 << 20
WIN0, WIN1 = (8 * MiB) >> 12, (32 * MiB) >> 12  # the mapped window, in gfns
REG = 512  # gfns per 2 MiB

__all__ = ["check_policy", "memslot_histories", "play"]


def memslot_histories(max_size: int = 25) -> Any:
    """The hypothesis strategy: lists of memslot operations (tuples, see ``play``)."""
    from hypothesis import strategies as st

    return st.lists(
        st.one_of(
            st.tuples(st.just("create"), st.integers(1, 3), st.integers(0, 11), st.integers(1, 4)),
            st.tuples(st.just("delete"), st.integers(1, 3)),
            st.tuples(st.just("move"), st.integers(1, 3), st.integers(0, 11)),
            st.tuples(st.just("touch"), st.integers(0, 47), st.integers(1, 48)),
            st.tuples(st.just("sleep"), st.integers(1, 400)),
            st.just(("delete-pt",)),
        ),
        min_size=1,
        max_size=max_size,
    )


def play(policy: str | object | None, history: list[tuple]) -> int:
    """Play ``history`` under ``policy`` (a spec ``NAME[:opts]``, or a policy object not
    registered anywhere) with ``--check``; returns the invariant checks made. Raises
    ``InvariantViolation`` (a ``ModelError``) when the policy leaves something stale."""
    spec, plugins = (policy, ()) if isinstance(policy, str | None) else (None, (policy,))
    run = assemble(spec, arch="x86-shadow", check=True, plugins=plugins)
    vm, inv = run.vm, run.monitors[0]
    vm.create(
        VmSpec(
            slots=(SlotSpec(0, 0, 4 * MiB, "pt"),),
            areas_per_vcpu=(((WIN0, WIN1),), ((WIN0, WIN1),)),
            pt_gfn=16,
            max_gfn=WIN1 + REG,
        )
    )
    vm.start_passes(0, WIN0, WIN1, passes=3)
    live: dict[int, int] = {0: 0}

    def step(op: tuple) -> None:
        kind, *arg = op
        if kind == "create" and arg[0] not in live:
            base = WIN0 + arg[1] * REG
            vm.add_memslot(arg[0], base << 12, min(arg[2] * REG, WIN1 - base) << 12)
            live[arg[0]] = base
        elif kind == "delete" and arg[0] in live:
            vm.delete_memslot(arg[0])
            del live[arg[0]]
        elif kind == "move" and arg[0] in live:
            vm.move_memslot(arg[0], (WIN0 + arg[1] * REG) << 12)
            live[arg[0]] = WIN0 + arg[1] * REG
        elif kind == "delete-pt" and 0 in live:  # roots in use stay, invalid, until reload
            vm.delete_memslot(0)
            del live[0]
        elif kind == "touch" and 0 in live:  # else the vCPU has shut down (mmu_check_root)
            g0 = WIN0 + arg[0] * 128
            vm.guest_access(1, g0, min(WIN1, g0 + arg[1] * 128))
        elif kind == "sleep":
            vm.sleep_ns(arg[0] * 1000)

    def script() -> None:
        for op in [("create", 1, 0, 6), ("touch", 0, 48), *history]:
            with suppress(ConfigError):  # an overlapping create or move: KVM refuses it too
                step(op)
        for slot_id in sorted(live, reverse=True):  # the page tables' slot last
            vm.delete_memslot(slot_id)

    vm.run_host(script)
    vm.destroy()
    run.close()
    return inv.checks


def check_policy(policy: str | object, *, max_examples: int = 30) -> None:
    """Fail (hypothesis's shrunk history and the invariant broken) unless ``policy``
    leaves nothing stale on every generated memslot history."""
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(history=memslot_histories())
    def leaves_nothing_stale(history: list[tuple]) -> None:
        assert play(policy, history) >= 2, "the final delete and the teardown must be checked"

    leaves_nothing_stale()
