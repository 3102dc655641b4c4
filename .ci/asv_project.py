"""asv's build, install and uninstall commands for mmbench: the core and every plugin.

mmbench is one distribution per directory (the root and each ``plugins/*/`` with a
``pyproject.toml``), so asv's default (one wheel of the repository root) would leave the
plugins out of its environments. asv runs this file from the working tree (``{conf_dir}``)
for every commit it benchmarks, so it also copes with commits from before the split,
where the root wheel carried every plugin and ``plugins/*/`` had no ``pyproject.toml``.

    python .ci/asv_project.py build BUILD_DIR WHEEL_DIR   # a wheel per distribution
    python .ci/asv_project.py install WHEEL_DIR           # all of them, with their deps
    python .ci/asv_project.py uninstall                   # every mmbench* distribution
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def distributions(build_dir: Path) -> list[Path]:
    """The root, then each plugin directory that is a distribution at this commit."""
    plugins = sorted(p.parent for p in build_dir.glob("plugins/*/pyproject.toml"))
    return [build_dir, *plugins]


def build(build_dir: Path, wheel_dir: Path) -> None:
    # A subdirectory of asv's build cache: asv refuses a cache dir holding several wheels.
    pip("wheel", "--no-deps", "-w", str(wheel_dir), *map(str, distributions(build_dir)))


def install(wheel_dir: Path) -> None:
    wheels = sorted(wheel_dir.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"{wheel_dir}: no wheels; the build step did not run")
    # Listed together so each plugin's dependency on mmbench (and on other plugins) is
    # met by this commit's wheels, not by an index.
    pip("install", *map(str, wheels))


def uninstall() -> None:
    """Every mmbench distribution, so the next commit's wheels install even at the same
    version, and a commit from before the split leaves no plugin distribution behind."""
    names = sorted(
        {
            d.metadata["Name"]
            for d in metadata.distributions()
            if d.metadata["Name"]
            and d.metadata["Name"].lower().replace("_", "-").split("-")[0] == "mmbench"
        }
    )
    if names:
        pip("uninstall", "-y", *names)


def main(argv: list[str]) -> None:
    match argv:
        case ["build", build_dir, wheel_dir]:
            build(Path(build_dir), Path(wheel_dir))
        case ["install", wheel_dir]:
            install(Path(wheel_dir))
        case ["uninstall"]:
            uninstall()
        case _:
            raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
