"""Every plugin is a distribution of its own, and copying one is all it takes to add a policy.

The copy is built by pip in an isolated build environment, as a third party's would be, and
installed into a --target directory put on PYTHONPATH, so the test environment is left alone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import REPO, mmbench

PLUGINS = sorted(p for p in (REPO / "plugins").iterdir() if p.is_dir())


def requirement_paths(name: str) -> set[str]:
    """The ``-e PATH`` entries of a requirements file, following ``-r``."""
    out: set[str] = set()
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out |= requirement_paths(line[3:].strip())
        elif line.startswith("-e "):
            out.add(line[3:].strip().split("[", 1)[0].removeprefix("./") or ".")
    return out


def test_each_plugin_directory_is_its_own_distribution() -> None:
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "entry-points" not in root["project"], "plugins register in their own pyproject"
    assert root["tool"]["setuptools"]["packages"]["find"] == {"include": ["mmbench*"]}
    for d in PLUGINS:
        meta = tomllib.loads((d / "pyproject.toml").read_text())["project"]
        assert meta["name"] == "mmbench-" + d.name.removeprefix("mmbench_").replace("_", "-")
        assert meta["version"] and meta["requires-python"] == ">=3.11"
        assert any(re.match(r"mmbench\b(?!-)", dep) for dep in meta["dependencies"]), d.name
        assert meta["entry-points"]["mmbench"], d.name
    # The README's set-up commands install the core and every plugin.
    want = {".", *(f"plugins/{d.name}" for d in PLUGINS)}
    assert requirement_paths("requirements.txt") == want
    assert requirement_paths("requirements-test.txt") == want


def copy_plugin(src: Path, dest: Path, old: str, new: str, version: str) -> Path:
    """The README's recipe: copy a plugin, rename distribution, module and policy."""
    old_mod, new_mod = f"mmbench_{old.replace('-', '_')}", f"mmbench_{new.replace('-', '_')}"
    out = dest / new_mod
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (out / old_mod).rename(out / new_mod)
    pyproject = out / "pyproject.toml"
    text = pyproject.read_text()
    renamed = (
        text.replace(f'name = "mmbench-{old}"', f'name = "mmbench-{new}"')
        .replace('version = "0.1.0"', f'version = "{version}"')
        .replace(old_mod, new_mod)
        .replace(f'\n{old.replace("-", "_")} = "', f'\n{new.replace("-", "_")} = "')
    )
    assert renamed.count(new_mod) >= 2 and f"mmbench-{new}" in renamed and version in renamed
    pyproject.write_text(renamed)
    policy_names = 0
    for py in (out / new_mod).rglob("*.py"):
        code = py.read_text()
        policy_names += code.count(f'"{old}"')
        py.write_text(code.replace(f'"{old}"', f'"{new}"'))
    assert policy_names == 1, "the template names its policy once"
    return out


def test_copying_a_plugin_adds_a_policy(tmp_path: Path, runs_dir: Path) -> None:
    src = copy_plugin(
        REPO / "plugins" / "mmbench_zap_slot",
        tmp_path / "src",
        "zap-slot",
        "zap-slot-copy",
        "0.2.0",
    )
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    env = {"PYTHONPATH": str(target)}

    listed = mmbench("list", env=env, check=True).stdout
    assert re.search(r"^\s+zap-slot-copy\b", listed, re.M), listed
    assert re.search(r"^\s+zap_slot_copy \(mmbench-zap-slot-copy 0\.2\.0\b", listed, re.M)
    assert re.search(r"^\s+zap_slot \(mmbench-zap-slot 0\.1\.0\b", listed, re.M)  # the original

    small = ["-c", "2", "-m", "64", "--passes", "4", "--rom-interval-ms", "5"]
    out = mmbench(
        "run",
        "rom-access",
        *small,
        "--policy",
        "zap-slot",
        "--policy",
        "zap-slot-copy",
        "--json",
        env=env,
        check=True,
    ).stdout
    res = {r["policy"]: r["metrics"] for r in json.loads(out)["results"]}
    # The same code under another name models the same run.
    for metric in ("pass_time_ms", "memslot_delete_ms", "refaults", "sptes_zapped"):
        assert res["zap-slot-copy"][metric] == res["zap-slot"][metric], metric
    assert res["zap-slot-copy"]["rom_reads"] > 0
