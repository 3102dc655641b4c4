"""What a result was measured on: host, kernel, KVM parameters, mmbench version and commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np

import mmbench


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_kib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def git_commit() -> str | None:
    """The commit of the mmbench checkout this code runs from, if it is one."""
    root = Path(mmbench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def kvm_module_params() -> dict[str, str]:
    params = {}
    for mod in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm"):
        d = Path("/sys/module") / mod / "parameters"
        if not d.is_dir():
            continue
        for p in sorted(d.iterdir()):
            try:
                params[f"{mod}.{p.name}"] = p.read_text().strip()
            except OSError:
                continue
    return params


def kvm_modules_loaded() -> list[str]:
    """Which KVM modules are loaded (kvm_pvm means a nested host running shadow paging)."""
    return [
        m for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm") if Path("/sys/module", m).exists()
    ]


def collect() -> dict:
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "mem_total_kib": _mem_total_kib(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mmbench": mmbench.__version__,
        "git_commit": git_commit(),
        "dev_kvm": os.path.exists("/dev/kvm"),
        "kvm_params": kvm_module_params(),
        "kvm_modules": kvm_modules_loaded(),
    }
