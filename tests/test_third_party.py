"""A policy shipped in a separate distribution is discovered and runs.

The distribution is real metadata on sys.path (a dist-info directory with an
entry_points.txt), found by importlib.metadata exactly as after a ``pip install``.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import SMALL, mmbench

POLICY = '''
"""Zap only the slot, but flush the whole TLB twice (a third party's idea)."""
from mmbench import hookimpl


class ZapSlotDoubleFlush:
    """Third-party test policy: zap-slot then an extra remote TLB flush."""

    name = "zap-slot-double-flush"
    archs = ("x86-shadow",)
    options = {}

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot):
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn, lock_break=True)
            mmu.commit_zap_page()
            kvm.flush_remote_tlbs()
        return True


@hookimpl
def mmbench_register_policies(register):
    register(ZapSlotDoubleFlush)
'''


def make_dist(root, source: str = POLICY):
    (root / "mmbench_thirdparty.py").write_text(source)
    info = root / "mmbench_thirdparty-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mmbench-thirdparty\nVersion: 1.2.3\n"
    )
    (info / "entry_points.txt").write_text(
        textwrap.dedent("""\
        [mmbench]
        thirdparty = mmbench_thirdparty
        """)
    )
    return {"PYTHONPATH": str(root)}


def test_third_party_policy_is_listed_and_runs(tmp_path, runs_dir):
    env = make_dist(tmp_path)
    listed = mmbench("list", env=env, check=True).stdout
    assert "zap-slot-double-flush" in listed
    assert "mmbench-thirdparty 1.2.3" in listed
    out = mmbench(
        "run",
        "rom-access",
        *SMALL,
        "--check",
        "--json",
        "--policy",
        "zap-slot",
        "--policy",
        "zap-slot-double-flush",
        env=env,
        check=True,
    ).stdout
    res = {r["policy"]: r["metrics"] for r in json.loads(out)["results"]}
    base, mine = res["zap-slot"], res["zap-slot-double-flush"]
    assert mine["remote_tlb_flushes"] == 2 * mine["rom_reads"]
    assert base["remote_tlb_flushes"] == base["rom_reads"]


def test_blocked_plugin_is_not_loaded(tmp_path, runs_dir):
    env = make_dist(tmp_path)
    env["MMBENCH_BLOCK_PLUGINS"] = "thirdparty"
    proc = mmbench("run", "rom-access", *SMALL, "--policy", "zap-slot-double-flush", env=env)
    assert proc.returncode == 2 and "unknown policy" in proc.stderr


# the classic mistake: the method is named after the hook, the decorator is missing, so
# pluggy would ignore it and the arch default would run under this policy's name
UNMARKED = POLICY.replace(
    "    @hookimpl\n    def mmbench_flush_shadow_memslot", "    def mmbench_flush_shadow_memslot"
)


@pytest.mark.parametrize("args", [("list",), ("run", "rom-access", *SMALL, "--policy", "zap-slot")])
def test_a_hook_without_hookimpl_is_refused_at_start(tmp_path, runs_dir, args):
    assert UNMARKED != POLICY
    proc = mmbench(*args, env=make_dist(tmp_path, UNMARKED))
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "mmbench-thirdparty 1.2.3" in line and "entry point thirdparty" in line
    assert "mmbench_flush_shadow_memslot lacks @hookimpl" in line
    assert not runs_dir.exists()


def test_an_entry_point_that_fails_to_import_is_named(tmp_path, runs_dir):
    env = make_dist(tmp_path, "import mmbench_no_such_module\n")
    proc = mmbench("list", env=env)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert "mmbench-thirdparty 1.2.3 (entry point thirdparty = mmbench_thirdparty)" in line
    assert "failed to import: ModuleNotFoundError" in line
