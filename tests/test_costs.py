"""Every constant has its provenance, and ``mmbench list --costs`` says where each comes
from and which headline figures move with it (issue 13, item 5)."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import mmbench
from test_third_party import make_dist

from mmbench.host.manager import get_host
from mmbench.model.costs import KINDS, Cost

REG = get_host().registry
ARCHS = REG.names("arch")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_cost_of_every_registered_arch_has_provenance(arch):
    """Through the registry, so an installed third-party arch is checked too."""
    table = REG.get("arch", arch).costs
    assert table.costs
    lacking = {name: c.missing() for name, c in table.costs.items() if c.missing()}
    assert not lacking, f"{arch}: costs without provenance: {lacking}"
    for name, c in table.costs.items():
        assert c.kind in KINDS, name
        if c.kind in ("measured", "estimate"):
            assert c.range is not None and c.range[0] <= c.ns <= c.range[1], name


def test_missing_names_what_each_kind_lacks():
    assert Cost(10, "a guess").missing() == ["kind (one of measured, derived, estimate, absent)"]
    assert Cost(10, "estimate: a guess", kind="estimate").missing() == ["range"]
    d = Cost(10, "x", kind="derived", ref="commit abc")
    assert d.missing() == ["figure", "derivation"]
    m = Cost(10, "x", kind="measured", host="h", kernel="6.18", date="2026-12-02")
    assert m.missing() == ["preempt", "range"]
    assert Cost(5, "absent: no IPIs", kind="absent").missing() == [
        "ns == 0 (an absent mechanism costs nothing)"
    ]


def test_a_calibrated_table_loads_as_measurements(tmp_path):
    """``--costs FILE`` from ``mmbench calibrate``: host, kernel, preempt and date from its
    calibration block, the CI as spread."""
    doc = {
        "name": "cal",
        "costs": {"zap_spte": {"ns": 28.0, "provenance": "calibrate", "ci95": [27.5, 29.0]}},
        "calibration": {"host": "h1", "date": "2026-12-02", "kernel": "6.18", "preempt": "none"},
    }
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(doc))
    c = REG.get("arch", "x86-shadow").costs.with_overrides(path)["zap_spte"]
    assert (c.kind, c.host, c.kernel, c.preempt, c.range) == (
        "measured", "h1", "6.18", "none", (27.5, 29.0)
    )  # fmt: skip
    assert c.missing() == []


def listing(arch: str, env: dict | None = None) -> dict:
    out = mmbench("list", "--costs", arch, "--format", "json", env=env, check=True).stdout
    return json.loads(out)


@pytest.fixture(scope="module")
def tdp() -> dict:
    return listing("x86-tdp")


@pytest.fixture(scope="module")
def arm64() -> dict:
    return listing("arm64")


def test_list_costs_json_has_every_cost_with_its_source(tdp):
    table = REG.get("arch", "x86-tdp").costs
    assert tdp["arch"] == "x86-tdp" and sorted(tdp["costs"]) == sorted(table.costs)
    for name, c in tdp["costs"].items():
        assert c["ns"] == table.costs[name].ns and c["unit"] == "ns", name
        assert c["kind"] in KINDS and c["missing"] == [] and c["provenance"], name
    leaf = tdp["costs"]["zap_leaf"]
    assert leaf["kind"] == "derived" and leaf["ns"] == 70.8
    assert "Batch TLB flushes when zapping collapsible TDP MMU SPTEs" in leaf["ref"]
    assert "4.794969689" in leaf["figure"]
    assert leaf["headline_depends"] == {
        "dirty-log": ["disable_dirty_log_ms"],
        "host-unmap": ["invalidate_p50_us"],  # the notifier's range zap
        "rom-access": ["memslot_delete_ms", "pass_time_ms"],  # memslot delete on x86-tdp
        "teardown": ["teardown_ms"],
    }
    # a fault cost moves no headline figure of dirty-log (the disable ioctl) or teardown;
    # on rom-access (x86-tdp) the vCPUs refault after every delete, so it moves those
    assert tdp["costs"]["fault_locked"]["headline_depends"] == {
        "rom-access": ["memslot_delete_ms", "pass_time_ms"]
    }


def test_list_costs_text_rows_and_sources():
    out = mmbench("list", "--costs", "arm64", check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "arm64: arm64 stage-2, non-VHE, 2 sockets"
    (row,) = [ln for ln in lines if ln.startswith("cmo_line ")]
    assert row.split()[:5] == ["cmo_line", "11.06", "ns", "derived", "2.77-11.06"]
    assert row.split()[-1] == "teardown"
    src = lines[lines.index(row) + 1]
    assert "Help VMs dying quicker" in src and "0.99 x 12 s" in src
    (absent,) = [ln for ln in lines if ln.startswith("kick_vcpu ")]
    assert absent.split()[1:5] == ["0", "ns", "absent", "-"] and absent.split()[-1] == "-"
    assert "MISSING" not in out


@pytest.mark.parametrize(
    ("cost", "moves"), [("cmo_line", True), ("tlbi_vmall", True), ("fault_exit", False)]
)
def test_the_listed_dependencies_are_the_model_s(arm64, tmp_path, runs_dir, cost, moves):
    """What list --costs says a headline figure depends on is what a run shows: the arm64
    teardown under a table with that constant doubled moves or does not."""
    assert ("teardown" in arm64["costs"][cost]["headline_depends"]) is moves
    ns = arm64["costs"][cost]["ns"]
    path = tmp_path / "doubled.yaml"
    path.write_text(yaml.safe_dump({"costs": {cost: 2 * ns}}))
    args = ("run", "teardown", "-b", "1G", "-v", "2", "--json", "--runs-dir", str(runs_dir))
    base = json.loads(mmbench(*args, check=True).stdout)["results"]
    got = json.loads(mmbench(*args, "--costs", str(path), check=True).stdout)["results"]
    changed = [
        a["policy"]
        for a, b in zip(base, got, strict=True)
        if a["metrics"]["teardown_ms"] != b["metrics"]["teardown_ms"]
    ]
    assert bool(changed) is moves, changed


def test_list_costs_bad_arch_is_one_line_with_the_choices():
    proc = mmbench("list", "--costs", "sparc")
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert "--costs" in line and "'sparc'" in line
    for arch in ARCHS:
        assert arch in line


THIRD_PARTY_ARCH = '''
"""An arch from a third party whose table has a constant without provenance."""
from mmbench import hookimpl
from mmbench.model.costs import Cost, CostTable
from mmbench_arm64 import Arm64


class Arm64Mine(Arm64):
    """arm64 with a guessed CMO cost."""

    name = "arm64-mine"
    costs = CostTable(
        "mine", {**Arm64.costs.costs, "cmo_line": Cost(7, "a guess", "per line")}
    )


@hookimpl
def mmbench_register_archs(register):
    register(Arm64Mine)
'''


def test_a_third_party_cost_without_provenance_is_shown_missing(tmp_path):
    env = make_dist(tmp_path, THIRD_PARTY_ARCH)
    doc = listing("arm64-mine", env=env)
    assert doc["costs"]["cmo_line"]["missing"] == [
        "kind (one of measured, derived, estimate, absent)"
    ]
    assert all(not c["missing"] for n, c in doc["costs"].items() if n != "cmo_line")
    text = mmbench("list", "--costs", "arm64-mine", env=env, check=True).stdout
    assert "MISSING: kind" in text
