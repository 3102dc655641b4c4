"""The running host kernel's configuration as the model names it: preempt model, HZ, CPUs.

Read from what a host offers, best source first, so that a kvm result records the kernel it
ran on and ``calibrate`` / ``validate`` run the model under the same configuration:

- preempt model: ``/sys/kernel/debug/sched/preempt`` (PREEMPT_DYNAMIC, debugfs mounted;
  the current model in parentheses, "(none) voluntary full"), else the boot log's
  "Dynamic Preempt: none" (``sched_dynamic_update``, printed once at boot), else the
  static choice in the kernel's config (``CONFIG_PREEMPT_NONE`` / ``_VOLUNTARY`` /
  ``CONFIG_PREEMPT``), else ``uname -v`` ("PREEMPT" or "PREEMPT_RT": full; neither: none;
  "PREEMPT_DYNAMIC" alone says nothing about the live model);
- HZ: ``CONFIG_HZ`` of ``/proc/config.gz`` or ``/boot/config-$(uname -r)``;
- CPUs: the CPUs this process may run on (``sched_getaffinity``), which the vCPU threads,
  the VMM and kernel workers share.

On this project's development host: "Dynamic Preempt: none", CONFIG_HZ=250, 2 CPUs.
"""

from __future__ import annotations

import gzip
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from mmbench.model.sched import HZ_CHOICES, PREEMPT_MODELS, KernelConfig

DEBUGFS_PREEMPT = Path("/sys/kernel/debug/sched/preempt")


def _kernel_config_text() -> str:
    for path in (Path("/proc/config.gz"), Path(f"/boot/config-{platform.release()}")):
        try:
            if path.suffix == ".gz":
                return gzip.decompress(path.read_bytes()).decode(errors="replace")
            return path.read_text(errors="replace")
        except OSError:
            continue
    return ""


def _preempt() -> tuple[str | None, str]:
    try:
        m = re.search(r"\((\w+)\)", DEBUGFS_PREEMPT.read_text())
        if m and m.group(1) in PREEMPT_MODELS:
            return m.group(1), str(DEBUGFS_PREEMPT)
    except OSError:
        pass
    try:
        log = subprocess.run(
            ["dmesg"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        log = ""
    m = re.search(r"Dynamic Preempt: (\w+)", log)
    if m and m.group(1) in PREEMPT_MODELS:
        return m.group(1), "dmesg 'Dynamic Preempt:'"
    config = _kernel_config_text()
    if config and "CONFIG_PREEMPT_DYNAMIC=y" not in config:
        for key, model in (
            ("CONFIG_PREEMPT_RT=y", "full"),
            ("CONFIG_PREEMPT=y", "full"),
            ("CONFIG_PREEMPT_VOLUNTARY=y", "voluntary"),
            ("CONFIG_PREEMPT_NONE=y", "none"),
        ):
            if key in config:
                return model, f"kernel config {key}"
    version = platform.version()
    if "PREEMPT_DYNAMIC" not in version:
        model = "full" if re.search(r"\bPREEMPT(_RT)?\b", version) else "none"
        return model, "uname -v"
    return None, "unknown (PREEMPT_DYNAMIC, no debugfs, no boot log)"


def _hz() -> tuple[int | None, str]:
    m = re.search(r"^CONFIG_HZ=(\d+)$", _kernel_config_text(), re.MULTILINE)
    if m and int(m.group(1)) in HZ_CHOICES:
        return int(m.group(1)), "kernel config CONFIG_HZ"
    return None, "unknown (no kernel config)"


def _sched(release: str | None = None) -> tuple[str | None, str]:
    """The fair scheduler: EEVDF replaced CFS in v6.6 (commit 147f3efaa241, "sched/fair:
    Implement an EEVDF-like scheduling policy")."""
    m = re.match(r"(\d+)\.(\d+)", release or platform.release())
    if not m:
        return None, "unknown (kernel release unparsed)"
    return ("eevdf" if (int(m[1]), int(m[2])) >= (6, 6) else "cfs"), "kernel release (6.6+)"


def host_kernel() -> dict[str, Any]:
    """``{"preempt", "hz", "host_cpus", "sched", "sources"}`` of the running kernel (None
    where the host does not say)."""
    preempt, p_src = _preempt()
    hz, hz_src = _hz()
    sched, s_src = _sched()
    cpus = len(os.sched_getaffinity(0))
    return {
        "preempt": preempt,
        "hz": hz,
        "host_cpus": cpus,
        "sched": sched,
        "sources": {
            "preempt": p_src,
            "hz": hz_src,
            "host_cpus": "sched_getaffinity",
            "sched": s_src,
        },
    }


def model_config(host: dict[str, Any] | None = None) -> KernelConfig:
    """The ``KernelConfig`` that runs the model as this host runs the kernel (the model's
    defaults where the host does not say)."""
    host = host or host_kernel()
    keys = ("preempt", "hz", "host_cpus", "sched")
    return KernelConfig.from_options({k: host.get(k) for k in keys})
