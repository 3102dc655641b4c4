"""The README's plugin guide, followed word for word by a third party: its policy with
options is installed (real dist-info metadata on sys.path, as after ``pip install``),
listed, run, refused with one line when given an unknown option, and tested with
``mmbench.testing`` from its own test file; and the property test catches a broken one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, SMALL, mmbench

from mmbench import hookimpl
from mmbench.errors import InvariantViolation
from mmbench.testing import check_policy


def readme_block(first_line: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(rf"```python\n{re.escape(first_line)}\n(.*?)```", text, re.S)
    assert m, f"README has no python block starting {first_line!r}"
    return m.group(1)


@pytest.fixture
def installed(tmp_path) -> dict[str, str]:
    (tmp_path / "my_zap.py").write_text(readme_block("# my_zap.py"))
    (tmp_path / "test_my_zap.py").write_text(readme_block("# test_my_zap.py"))
    info = tmp_path / "my_zap-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-zap\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[mmbench]\nmy_zap = my_zap\n")
    return {"PYTHONPATH": str(tmp_path)}


def test_the_guides_policy_lists_runs_and_refuses_unknown_options(installed, runs_dir):
    listed = mmbench("list", env=installed, check=True).stdout
    assert re.search(r"^  my-zap\s+zap-slot \(2019\) with its lock-break flush", listed, re.M)
    assert re.search(r"^\s+option min_batch=1 \(int >= 1\): sps zapped between", listed, re.M)
    run = [*SMALL, "--policy", "zap-slot", "--policy", "my-zap:min_batch=4", "--json"]
    proc = mmbench("run", "rom-access", *run, env=installed)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    bad = mmbench("run", "rom-access", *SMALL, "--policy", "my-zap:batch=4", env=installed)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "mmbench: error: --policy my-zap: unknown option 'batch'"
        " (options: flush_on_break, min_batch)"
    )
    none = mmbench("run", "rom-access", *SMALL, "--policy", "zap-slot:batch=4")
    assert none.returncode == 2 and "(options: none)" in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1


def test_the_guides_test_file_passes_with_mmbench_testing(installed, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_zap.py"],
        cwd=tmp_path,
        env={**os.environ, **installed},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


class ForgetsTheRmaps:
    """A broken zap-slot: drops the slot's sps but leaves its leaf sptes mapped."""

    name = "forgets-the-rmaps"
    archs = ("x86-shadow",)
    options: dict = {}

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm, slot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_pages(mmu.pages_with_gfn_in(slot))
            mmu.commit_zap_page()
        return True


def test_check_policy_catches_a_broken_policy():
    with pytest.raises(InvariantViolation):
        check_policy(ForgetsTheRmaps(), max_examples=20)
