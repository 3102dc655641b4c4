"""The oracle misses nothing: every deliberately broken policy is caught, no correct one.

``tests/mutants`` is a third party's distribution of broken policies (one bug each, on
every path and arch). pip builds and installs it into a ``--target`` directory, as for any
plugin; then each is run with ``--check`` from the CLI, beside a correct policy that must
pass in the same run, and each is searched for by the property tests' own hypothesis
histories, which must find a history that breaks it.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, mmbench
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_invariants import ops as shadow_ops
from test_invariants import play as shadow_play
from test_region_invariants import ops as region_ops
from test_region_invariants import play as region_play

from mmbench.errors import InvariantViolation
from mmbench.host.manager import get_host
from mmbench.model.sched import KernelConfig
from mmbench.run import assemble
from mmbench.workloads.base import resolve_params

ROM = ["rom-access", "-c", "2", "-m", "64", "--passes", "6", "--rom-interval-ms", "1"]
DIRTY = ["dirty-log", "-v", "2", "-b", "1G", "--run-on-s", "1"]
TEARDOWN = ["teardown", "-b", "4G", "-v", "2"]
HOST_UNMAP = ["host-unmap", "-b", "256M", "--unmap-size", "16M", "--unmaps", "4"]
HOST_UNMAP += ["--interval-ms", "5", "--backing", "4k"]

STALE = "still maps gfn"
UNFLUSHED = "not (yet )?flushed"  # at the end of the invalidation, or when mmu_lock drops
UNFLUSHED_BREAK = "mmu_lock dropped with zapped sptes not yet flushed"
OVER_LIMIT = "over n_max_mmu_pages"
UNLOGGED = "a writable spte maps"
HOST_UNMAPPED = "still maps gfn 0x[0-9a-f]+, whose host page the MMU notifier invalidated"
FREES_NOTHING = "mappings still live|page-table pages never freed"  # the latter: slots gone

# (CLI arguments, a correct policy that must pass beside them, {mutant: message})
SCENARIOS = {
    "rom-access": (
        ROM,
        "zap-slot",
        {
            "forgets-zap": STALE,
            "never-flushes": UNFLUSHED,
            "flushes-before-zap": UNFLUSHED,
            "off-by-one": STALE,
            "zaps-unlocked": "without holding mmu_lock",
            "drops-sptes-not-rmaps": "rmap of gfn",
            "zap-all-no-commit": UNFLUSHED,
            "no-reload": "with no reload",
            "gen-bump-only": STALE,
            "lpage-reset": "lpage_info",
        },
    ),
    "rom-access x86-ept": (  # the same bugs on direct sps (lpage_info: none accounted)
        [*ROM, "--arch", "x86-ept", "--backing", "2m"],
        "zap-slot",
        {
            "forgets-zap": STALE,
            "never-flushes": UNFLUSHED,
            "off-by-one": STALE,
            "zaps-unlocked": "without holding mmu_lock",
            "drops-sptes-not-rmaps": "rmap of gfn",
            "zap-all-no-commit": UNFLUSHED,
            "no-reload": "with no reload",
            "gen-bump-only": STALE,
        },
    ),
    "rom-access x86-ept, the RAM slot deleted": (  # 2 MiB sptes map the RAM slot
        [*ROM, "--arch", "x86-ept", "--backing", "2m", "--delete-ram-after-pass", "3"],
        "zap-slot",
        {"zaps-leaf-level-only": "huge spte maps gfn"},
    ),
    "rom-access x86-tdp": (  # the TDP MMU's kvm_mmu_zap_all_fast, broken
        [*ROM, "--arch", "x86-tdp", "--backing", "2m"],
        "fast-zap",
        {
            "fast-zap-no-reload": "invalid root with no reload",
            "fast-zap-keeps-invalid-roots": "never torn down",
        },
    ),
    "rom-access, the RAM slot deleted": (
        [*ROM, "--delete-ram-after-pass", "3"],
        "fast-invalidate",
        {"skips-shadowed-tables": "an sp shadows gfn"},
    ),
    "rom-access, contended": (
        ["rom-access", "-c", "4", "-m", "64", "--passes", "4", "--rom-interval-ms", "0.3"]
        + ["--rom-kib", "16384", "--preempt", "full"],  # lock-breaks for the waiting vCPUs
        "zap-slot",
        {"flushes-at-end": UNFLUSHED_BREAK},
    ),
    "mmu-pressure": (
        ["mmu-pressure", "--rounds", "4"],
        "lru-scan",
        {"never-reclaims": OVER_LIMIT, "zaps-roots-in-use": OVER_LIMIT},
    ),
    "dirty-log, write-protect on enable": (
        [*DIRTY, "--initially-set", "false"],
        "collapse-sync",
        {"no-write-protect": UNLOGGED, "write-protect-off-by-one": UNLOGGED},
    ),
    "dirty-log, slot deleted before the worker": (
        [*DIRTY, "--delete-slot-after-s", "0.5"],
        "lazy-collapse:delay_s=0.8",
        {
            "collapse-no-flush": UNFLUSHED,
            "collapse-unlocks-unflushed": UNFLUSHED_BREAK,
            "lazy-ignores-deleted-slot:delay_s=0.8": "use after free",
        },
    ),
    "teardown arm64": (
        [*TEARDOWN, "--arch", "arm64"],
        "s2-elide",
        {
            "frees-nothing": FREES_NOTHING,
            "elides-the-tlbi": "never flushed",
            "leaks-tables": "page-table pages never freed",
        },
    ),
    "host-unmap x86-shadow": (
        [*HOST_UNMAP, "--arch", "x86-shadow"],
        "unmap-range",
        {
            "notifier-forgets-flush": UNFLUSHED_BREAK,
            "notifier-off-by-one": HOST_UNMAPPED,
            "ignores-mmu-seq": HOST_UNMAPPED,
        },
    ),
    "host-unmap x86-tdp": (
        [*HOST_UNMAP, "--arch", "x86-tdp"],
        "unmap-range",
        {"notifier-forgets-flush": UNFLUSHED_BREAK, "notifier-off-by-one": HOST_UNMAPPED},
    ),
    "host-unmap arm64": (
        [*HOST_UNMAP, "--arch", "arm64"],
        "s2-elide",
        {"ignores-mmu-seq": HOST_UNMAPPED, "s2-elides-tlbi": UNFLUSHED_BREAK},
    ),
    "teardown x86-tdp": (
        [*TEARDOWN, "--arch", "x86-tdp"],
        "zap-all:lock_break=true",
        {"frees-nothing": FREES_NOTHING, "leaks-tables": "page-table pages never freed"},
    ),
}


@pytest.fixture(scope="module")
def mutants(tmp_path_factory) -> Path:
    """The distribution, built and installed by pip as a user would install a plugin."""
    target = tmp_path_factory.mktemp("mutants")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
        + [str(REPO / "tests" / "mutants")],
        check=True,
        capture_output=True,
    )
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))


def all_mutants() -> dict[str, type]:
    out = {}
    for mod in ("memslot", "reclaim", "dirty_log", "teardown", "notifier"):
        for cls in importlib.import_module(f"mmbench_mutants.{mod}").MUTANTS:
            out[cls.name] = cls
    return out


def test_every_mutant_is_listed_and_has_a_scenario(mutants):
    names = all_mutants()
    assert len(names) >= 20
    listed = mmbench("list", env={"PYTHONPATH": str(mutants)}, check=True).stdout
    assert all(name in listed for name in names)
    covered = {m.split(":")[0] for _, _, table in SCENARIOS.values() for m in table}
    assert covered == set(names)
    archs = {a for cls in names.values() for a in cls.archs}
    assert archs == {"x86-shadow", "x86-ept", "x86-tdp", "arm64"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_check_from_the_cli_catches_each_mutant(scenario, mutants, runs_dir):
    args, correct, table = SCENARIOS[scenario]
    policies = [a for m in [correct, *table] for a in ("--policy", m)]
    proc = mmbench(
        "run", *args, "--check", *policies, env={"PYTHONPATH": str(mutants)}, check=False
    )
    assert "Traceback" not in proc.stderr
    failed = {
        line.split()[2]: line
        for line in proc.stderr.splitlines()
        if line.startswith("mmbench: policy ")
    }
    for mutant, message in table.items():
        assert mutant in failed, f"{mutant} was not caught:\n{proc.stderr}"
        assert "InvariantViolation" in failed[mutant] and re.search(message, failed[mutant])
    assert correct not in failed, failed.get(correct)
    assert proc.returncode != 0  # a run in which policies failed says so
    assert "saved:" in proc.stdout  # the correct policy's result is kept


# -- the property tests find each one on their own random histories ---------------------
SEARCH = settings(
    max_examples=300,  # a search stops at the first breaking history: most take a few
    deadline=None,
    derandomize=True,  # the same histories every run: a mutant found is found in CI too
    database=None,
    phases=[Phase.generate],  # the first history that breaks it; no shrinking
    suppress_health_check=list(HealthCheck),
)


def find_breaking(prop, message: str) -> None:
    with pytest.raises(InvariantViolation, match=message):
        SEARCH(prop)()


SHADOW = [m for s in ("rom-access", "rom-access, the RAM slot deleted") for m in SCENARIOS[s][2]]


@pytest.mark.parametrize("name", [*SHADOW, "flushes-at-end"])
def test_memslot_property_test_finds_each_mutant(name, mutants):
    cls = all_mutants()[name]
    message = {**SCENARIOS["rom-access"][2], **SCENARIOS["rom-access, the RAM slot deleted"][2]}
    message["flushes-at-end"] = UNFLUSHED_BREAK

    # one host CPU: the tick makes the rmap walk yield (need_resched), under preempt=none
    full = KernelConfig(preempt="none", host_cpus=1)

    @given(history=shadow_ops)
    def prop(history):
        shadow_play(None, history, plugins=(cls(),), kernel=full)

    find_breaking(prop, message[name])


@pytest.mark.parametrize("name", ["never-reclaims", "zaps-roots-in-use"])
def test_reclaim_property_test_finds_each_mutant(name, mutants):
    cls = all_mutants()[name]
    wl = get_host().registry.get("workload", "mmu-pressure")()

    @given(
        vcpus=st.integers(1, 4),
        cold=st.integers(0, 12),
        hot=st.integers(0, 4),
        mmu_pages=st.sampled_from([64, 80, 0]),
    )
    def prop(vcpus, cold, hot, mmu_pages):
        run = assemble(None, arch="x86-shadow", check=True, plugins=[cls()])
        given_params = {"vcpus": vcpus, "processes": hot + vcpus + cold, "hot": hot}
        wl.run(run.vm, resolve_params(wl.params, {**given_params, "rounds": 4}))

    find_breaking(prop, OVER_LIMIT)


DIRTY_MUTANTS = {
    **SCENARIOS["dirty-log, write-protect on enable"][2],
    **SCENARIOS["dirty-log, slot deleted before the worker"][2],
}


@pytest.mark.parametrize("name", DIRTY_MUTANTS)
def test_dirty_log_property_test_finds_each_mutant(name, mutants):
    base = name.split(":")[0]
    cls = all_mutants()[base]
    make = (lambda: cls(delay_s=0.0003)) if base.startswith("lazy") else cls

    @given(history=region_ops, manual=st.booleans(), init_set=st.booleans())
    def prop(history, manual, init_set):
        # vCPU 0 writes on through the history, so zaps meet its faults (lock-breaks)
        args = (history, manual, init_set and manual, False)
        region_play(None, *args, plugins=(make(),), passes=30)

    find_breaking(prop, DIRTY_MUTANTS[name])


@pytest.mark.parametrize(
    ("arch", "name"),
    [
        (arch, m)
        for s, arch in (("teardown arm64", "arm64"), ("teardown x86-tdp", "x86-tdp"))
        for m in SCENARIOS[s][2]
    ],
)
def test_teardown_property_test_finds_each_mutant(arch, name, mutants):
    cls = all_mutants()[name]
    message = SCENARIOS[f"teardown {arch}"][2][name]

    stop = "recover-in-place" if arch == "x86-tdp" else None  # arm64: the arch's own

    @given(history=region_ops, keep=st.booleans())
    def prop(history, keep):
        region_play(stop, history, False, False, False, 1, arch, keep, plugins=(cls(),))

    find_breaking(prop, message)


NOTIFIER = {
    "notifier-forgets-flush": ("x86-shadow", UNFLUSHED_BREAK),
    "notifier-off-by-one": ("x86-tdp", HOST_UNMAPPED),
    "ignores-mmu-seq": ("x86-shadow", HOST_UNMAPPED),
    "s2-elides-tlbi": ("arm64", UNFLUSHED_BREAK),
}


@pytest.mark.parametrize("name", NOTIFIER)
def test_notifier_property_test_finds_each_mutant(name, mutants):
    from test_host_unmap import kernels as notifier_kernels
    from test_host_unmap import ops as notifier_ops
    from test_host_unmap import play as notifier_play

    cls = all_mutants()[name]
    arch, message = NOTIFIER[name]

    @given(history=notifier_ops, kernel=notifier_kernels)
    def prop(history, kernel):
        notifier_play(None, arch, history, kernel, plugins=(cls(),))

    find_breaking(prop, message)
