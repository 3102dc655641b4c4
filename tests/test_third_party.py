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
    # every kvm_flush_remote_tlbs call counts a request (remote_tlb_flushes counts only
    # those that found a vCPU in the guest to IPI, as the kernel's remote_tlb_flush does)
    assert mine["remote_tlb_flush_requests"] == 2 * mine["rom_reads"]
    assert base["remote_tlb_flush_requests"] == base["rom_reads"]
    assert mine["remote_tlb_flushes"] <= mine["remote_tlb_flush_requests"]


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


RAISES_ON_REGISTER = POLICY.replace(
    "    register(ZapSlotDoubleFlush)",
    "    register(ZapSlotDoubleFlush)\n    raise RuntimeError('no luck')",
)


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("import mmbench_no_such_module\n", "failed to import: ModuleNotFoundError"),
        (RAISES_ON_REGISTER, "mmbench_register_policies raised: RuntimeError: no luck"),
    ],
    ids=["import-fails", "registration-raises"],
)
def test_a_plugin_that_crashes_is_skipped_with_one_warning(tmp_path, runs_dir, source, why):
    env = make_dist(tmp_path, source)
    listed = mmbench("list", env=env)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stderr.splitlines()
    assert line.startswith("mmbench: warning: plugin mmbench-thirdparty 1.2.3")
    assert "(entry point thirdparty = mmbench_thirdparty) skipped" in line and why in line
    assert "MMBENCH_BLOCK_PLUGINS=thirdparty" in line
    assert "zap-slot-double-flush" not in listed.stdout  # nothing it half-registered
    assert "zap-slot " in listed.stdout  # everything else is there
    run = mmbench("run", "rom-access", *SMALL, "--policy", "zap-slot", "--json", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [line]
    assert json.loads(run.stdout)["results"][0]["policy"] == "zap-slot"


@pytest.mark.parametrize("block", ["thirdparty", "mmbench-thirdparty"])
def test_block_plugins_takes_entry_point_or_distribution_names(tmp_path, runs_dir, block):
    env = {**make_dist(tmp_path, "import mmbench_no_such_module\n"), "MMBENCH_BLOCK_PLUGINS": block}
    listed = mmbench("list", env=env, check=True)
    assert listed.stderr == ""  # blocked: not even imported
    assert "mmbench_thirdparty" not in listed.stdout


def test_block_plugins_warns_about_unknown_names(runs_dir):
    proc = mmbench("list", env={"MMBENCH_BLOCK_PLUGINS": "zap_slot,no-such-plugin"}, check=True)
    assert proc.stderr.strip() == (
        "mmbench: warning: MMBENCH_BLOCK_PLUGINS: no plugin or distribution is named"
        " 'no-such-plugin'"
    )
    assert "zap-slot " not in proc.stdout and "zap-all" in proc.stdout


BOOM = POLICY.replace(
    "        mmu = kvm.mmu\n",
    "        raise ValueError('gfn out of my depth')\n        mmu = kvm.mmu\n",
)


def test_a_hook_that_raises_fails_its_policy_alone(tmp_path, runs_dir):
    env = make_dist(tmp_path, BOOM)
    args = ["rom-access", *SMALL, "--name", "mixed", "--policy", "zap-slot"]
    proc = mmbench("run", *args, "--policy", "zap-slot-double-flush", "--json", env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line == (
        "mmbench: policy zap-slot-double-flush failed: raised in mmbench_flush_shadow_memslot"
        " of zap-slot-double-flush: ValueError: gfn out of my depth"
    )
    doc = json.loads(proc.stdout)
    ok, bad = doc["results"]
    assert ok["policy"] == "zap-slot" and ok["metrics"]["pass_time_ms"] > 0
    assert bad["failed"].endswith("ValueError: gfn out of my depth") and "metrics" not in bad
    stored = json.loads((runs_dir / "mixed" / "result.json").read_text())
    assert [("failed" in r) for r in stored["results"]] == [False, True]
    listed = mmbench("runs", env=env, check=True).stdout
    assert "zap-slot, zap-slot-double-flush (failed)" in listed
    shown = mmbench("show", "mixed", env=env, check=True).stdout
    assert "pass_time_ms" in shown
    alone = mmbench("run", "rom-access", *SMALL, "--policy", "zap-slot-double-flush", env=env)
    assert alone.returncode == 1
    assert alone.stderr.splitlines()[-1] == "mmbench: every policy failed; nothing was saved"


def test_a_policy_never_invoked_is_warned_about(runs_dir):
    # one ROM read every 10 s: the guest's passes end long before rom.sh's first read
    args = ["rom-access", "-c", "2", "-m", "64", "--passes", "3", "--rom-interval-ms", "10000"]
    proc = mmbench("run", *args, "--policy", "zap-slot", "--json")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "warning: policy zap-slot was never invoked" in line
    assert "mmbench_flush_shadow_memslot" in line
    ran = mmbench("run", *args[:-1], "5", "--policy", "zap-slot", "--json")
    assert ran.returncode == 0 and ran.stderr == ""
