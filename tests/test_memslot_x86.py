"""Memslot delete on the MMUs of x86 with TDP hardware: ``x86-ept`` (the legacy MMU's direct
sps, 4 KiB / 2 MiB / 1 GiB sptes) and ``x86-tdp`` (the TDP MMU, per-region state with
partial regions).

Through the CLI: every memslot policy under every preemption model and backing with
``--check``; the leaf size the backing allows is what refaults cost after an invalidate.
Through the property tests' VM API: memslots of any 4 KiB multiple at any 4 KiB-aligned
base, created, moved and deleted while a vCPU writes, under the oracle.
"""

from __future__ import annotations

from contextlib import suppress

import pytest
from conftest import mmbench, run_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmbench.backends.sim import SlotSpec, VmSpec
from mmbench.errors import ConfigError
from mmbench.model.sched import KernelConfig
from mmbench.run import assemble

EPT = ["zap-all", "zap-all:lock_break=true", "fast-invalidate", "zap-slot"]
TDP = ["zap-all", "zap-all:lock_break=true", "zap-slot", "fast-zap"]
POLICIES = {"x86-ept": EPT, "x86-tdp": TDP}
ARCH_POLICY = [(a, p) for a, ps in POLICIES.items() for p in ps]
ROM = ["rom-access", "-c", "2", "-m", "64", "--passes", "8", "--rom-interval-ms", "2"]
MiB = 1 << 20


@pytest.mark.parametrize("arch", POLICIES)
@pytest.mark.parametrize("preempt", ["none", "voluntary", "full"])
@pytest.mark.parametrize("backing", ["4k", "2m", "1g"])
def test_every_memslot_policy_passes_the_oracle(arch, preempt, backing, runs_dir):
    policies = [a for p in POLICIES[arch] for a in ("--policy", p)]
    doc = run_json(
        *ROM, "--arch", arch, "--backing", backing, "--idle-reads", "3",
        "--preempt", preempt, "--host-cpus", "2", "--check", *policies,
    )  # fmt: skip
    assert doc["params"]["backing"] == backing
    got = {r["policy"]: r for r in doc["results"]}
    assert sorted(got) == sorted(POLICIES[arch])
    for r in got.values():
        assert r["arch"] == arch
        assert r["metrics"]["memslot_delete_idle_p50_ms"] > 0  # idle deletes happened
    assert got["zap-slot"]["metrics"]["refaults"] == 0
    assert got["zap-all"]["metrics"]["refaults"] > 0


@pytest.mark.parametrize(
    "arch, policy, fewer", [("x86-ept", "zap-all", 64), ("x86-tdp", "fast-zap", 512)]
)
def test_2m_sptes_cut_the_refaults_of_a_zap_everything_delete(arch, policy, fewer, runs_dir):
    """After a zap of everything every page is refaulted: on x86-ept with 4 KiB sptes one
    fault per aligned group of 8 (direct_pte_prefetch), on the TDP MMU one per page (no
    prefetch); with 2 MiB sptes one per 2 MiB."""
    refaults, sptes = {}, {}
    for backing in ("4k", "2m"):
        doc = run_json(*ROM, "--arch", arch, "--backing", backing, "--policy", policy)
        m = doc["results"][0]["metrics"]
        refaults[backing], sptes[backing] = m["refaults"], m["sptes_per_delete"]
    # at least that many times fewer (4 KiB passes are slower: more deletes fall in them)
    assert refaults["4k"] / refaults["2m"] > 0.75 * fewer
    # the ROM's 4 KiB sptes: its 2 MiB frame is not all one slot (per delete: the
    # header page and the chunk each read() mapped, 63 in a cat of 32 reads)
    assert sptes["2m"] >= 63 / 32


def test_x86_shadow_maps_4k_whatever_the_backing_but_pays_its_host_faults(runs_dir):
    """Shadow paging maps the guest's 4 KiB pages whatever backs them, so every ROM delete
    zaps the same 32 sptes and a warm pass costs the same; the backing decides only what
    the first touch of guest RAM costs the host (one fault per 4 KiB page, or one per
    1 GiB page and its zeroing), and it is recorded."""
    a = run_json(*ROM, "--policy", "zap-slot", "--backing", "4k")
    b = run_json(*ROM, "--policy", "zap-slot", "--backing", "1g")
    assert (a["params"]["backing"], b["params"]["backing"]) == ("4k", "1g")
    ma, mb = a["results"][0]["metrics"], b["results"][0]["metrics"]
    assert ma["sptes_zapped"] / ma["rom_cats"] == mb["sptes_zapped"] / mb["rom_cats"] == 63
    assert ma["pass_time_ms"] == pytest.approx(mb["pass_time_ms"], rel=0.01)
    assert ma["populate_ms"] > mb["populate_ms"]


def test_bad_backing_is_one_line(runs_dir):
    proc = mmbench("run", *ROM, "--arch", "x86-ept", "--backing", "3m")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()
        == ["mmbench: --backing: expected one of 2m, 1g, 4k (got '3m')"]
        or "--backing: expected one of 2m, 1g, 4k" in proc.stderr
    )


# -- property tests: slots of any 4 KiB multiple, misaligned, under the oracle -----------
WIN0, WIN1 = (8 * MiB) >> 12, (40 * MiB) >> 12  # gfns both vCPUs map

slot_ops = st.lists(
    st.one_of(
        # base and size in 4 KiB pages: from one page to most of the window
        st.tuples(st.just("create"), st.integers(1, 3), st.integers(0, 8191), st.integers(1, 4096)),
        st.tuples(st.just("delete"), st.integers(1, 3)),
        st.tuples(st.just("move"), st.integers(1, 3), st.integers(0, 8191)),
        st.tuples(st.just("touch"), st.integers(0, 63), st.integers(1, 64)),
        st.tuples(st.just("sleep"), st.integers(1, 400)),
    ),
    min_size=1,
    max_size=20,
)


def play(arch: str, policy: str, history, backing: str, kernel: KernelConfig) -> int:
    """Slot 0 holds the guest kernel; data slots come and go in the window while vCPU 0
    writes the window in passes and vCPU 1 touches it from the script. On the region
    model a slot that would share a 2 MiB region with another is refused, as an
    overlapping one is."""
    run = assemble(policy, arch=arch, check=True, kernel=kernel)
    vm, inv = run.vm, run.monitors[0]
    size = {"4k": 4 << 10, "2m": 2 << 20, "1g": 1 << 30}[backing]
    vm.create(
        VmSpec(
            slots=(SlotSpec(0, 0, 4 * MiB, "kernel"),),
            areas_per_vcpu=(((WIN0, WIN1),), ((WIN0, WIN1),)),
            pt_gfn=16,
            max_gfn=WIN1 + 512,
            huge_pages=backing != "4k",
            huge_page_size=size,
        )
    )
    vm.start_passes(0, WIN0, WIN1, passes=3)
    live: set[int] = set()

    def step(op: tuple) -> None:
        kind, *arg = op
        if kind == "create" and arg[0] not in live:
            base = WIN0 + arg[1]
            vm.add_memslot(arg[0], base << 12, min(arg[2], WIN1 - base) << 12)
            live.add(arg[0])
        elif kind == "delete" and arg[0] in live:
            vm.delete_memslot(arg[0])
            live.discard(arg[0])
        elif kind == "move" and arg[0] in live:
            vm.move_memslot(arg[0], (WIN0 + arg[1]) << 12)
        elif kind == "touch":
            g0 = WIN0 + arg[0] * 128
            vm.guest_access(1, g0, min(WIN1, g0 + arg[1] * 128))
        elif kind == "sleep":
            vm.sleep_ns(arg[0] * 1000)

    def script() -> None:
        for op in [("create", 1, 0, 4096), ("touch", 0, 64), *history]:
            with suppress(ConfigError):  # overlapping or out of range: KVM refuses it too
                step(op)
        for slot_id in sorted(live):
            vm.delete_memslot(slot_id)

    vm.run_host(script)
    vm.destroy()
    run.close()
    return inv.checks


@pytest.mark.parametrize("arch, policy", ARCH_POLICY)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=slot_ops,
    backing=st.sampled_from(["4k", "2m"]),
    kernel=st.builds(
        KernelConfig,
        preempt=st.sampled_from(["none", "voluntary", "full"]),
        hz=st.just(1000),
        host_cpus=st.sampled_from([1, 16]),
    ),
)
def test_misaligned_slots_leave_nothing_stale(arch, policy, history, backing, kernel):
    assert play(arch, policy, history, backing, kernel) >= 2


@pytest.mark.parametrize("arch, policy", ARCH_POLICY)
def test_a_1g_slot_on_1g_backing(arch, policy):
    """A 1 GiB-aligned 1 GiB slot gets a 1 GiB spte; deleting it leaves nothing."""
    run = assemble(policy, arch=arch, check=True)
    vm = run.vm
    gib = 1 << 30
    vm.create(
        VmSpec(
            slots=(SlotSpec(0, 0, 4 * MiB, "kernel"), SlotSpec(1, gib, gib, "ram")),
            areas_per_vcpu=(((gib >> 12, (2 * gib) >> 12),),),
            pt_gfn=16,
            max_gfn=(2 * gib) >> 12,
            huge_pages=True,
            huge_page_size=gib,
        )
    )
    stats: dict = {}

    def script() -> None:
        vm.guest_access(0, gib >> 12, (gib + 4 * MiB) >> 12)
        stats.update(vm.stats())
        vm.delete_memslot(1)

    vm.run_host(script)
    vm.destroy()
    run.close()
    assert stats["pages_1g"] == 1 and stats["pages_2m"] == 0 and stats["pages_4k"] == 0
    assert run.monitors[0].checks >= 2
