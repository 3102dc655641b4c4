"""``mmbench doctor``: what this host's KVM supports for mmbench, and why not if not."""

from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Any

from mmbench.report.environment import kvm_modules_loaded

from . import ioctls as k
from . import knobs
from .backend import KvmBackend
from .errors import KvmError
from .guest import GuestLayout
from .kvm_vm import mem_available
from .system import KvmSystem

MiB = 1 << 20


def native_probe(system: KvmSystem, size: int = 2 * MiB) -> dict[str, int]:
    """Run the CPL3 touch guest over ``size`` bytes once; the stats that prove it ran."""
    base = GuestLayout.DATA_BASE
    layout = GuestLayout()
    layout.map(base, size)
    with system.create_vm() as vm:
        vm.load_system_image(layout.build())
        vm.add_memslot(1, base, size)
        vcpu = vm.create_vcpu()
        vcpu.setup_cpl3()
        vcpu.set_touch(base, base + size)
        vcpu.run()
        out = {n: vcpu.stats()[n] for n in ("pf_fixed", "insn_emulation", "exits")}
        out["pages_4k"] = vm.stats()["pages_4k"]
        out["pages"] = size // 4096
        return out


def diagnose() -> dict[str, Any]:
    """Every fact doctor prints, as data (also what tests check)."""
    facts: dict[str, Any] = {
        "kernel": platform.release(),
        "dev_kvm": os.path.exists("/dev/kvm"),
        "modules": kvm_modules_loaded(),
        "mem_available_mib": mem_available() // MiB,
    }
    ok, why = KvmBackend().available()
    facts["backend_kvm"] = {"available": ok, "reason": why}
    if not facts["dev_kvm"]:
        return facts
    try:
        system = KvmSystem()
    except (OSError, KvmError) as exc:
        facts["open_error"] = str(exc)
        return facts
    with system:
        mask = system.supported_quirks
        facts["api_version"] = system.api_version
        facts["tdp_mmu"] = system.param("tdp_mmu")
        facts["mmu"] = dict(zip(("arch", "reason"), system.mmu, strict=True))
        facts["eager_page_split"] = system.param("eager_page_split")
        facts["disableable_quirks"] = system.quirk_names(mask)
        facts["manual_dirty_log_protect2"] = system.check_extension(
            k.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2
        )
        tdp = system.mmu[0] == "x86-tdp"
        runnable = {p.name for p in knobs.supported(mask, tdp)}

        def why_not(p: knobs.KernelPolicy) -> str:
            if p.tdp_mmu is not None and p.tdp_mmu != tdp:
                return "TDP MMU only" if p.tdp_mmu else "shadow/legacy MMU only"
            return "quirk not disableable"

        facts["policies"] = {
            p.name: {"runs": p.name in runnable, "knob": p.knob, "why_not": why_not(p)}
            for p in knobs.KERNEL_POLICIES.values()
        }
        try:
            probe = native_probe(system)
            probe["native"] = probe["pf_fixed"] > 0 and probe["pages_4k"] > 0
            facts["guest"] = probe
        except (OSError, KvmError) as exc:
            facts["guest"] = {"native": False, "error": str(exc)}
    return facts


def _lines(f: dict[str, Any]) -> list[str]:
    out = [
        f"kernel            {f['kernel']}",
        f"/dev/kvm          {'present' if f['dev_kvm'] else 'absent'}",
        f"modules           {', '.join(f['modules']) or 'none'}",
        f"MemAvailable      {f['mem_available_mib']} MiB (kvm runs use at most 80%)",
        f"backend kvm       {'available' if f['backend_kvm']['available'] else 'UNAVAILABLE'}:"
        f" {f['backend_kvm']['reason']}",
    ]
    if "open_error" in f:
        out.append(f"open /dev/kvm     failed: {f['open_error']}")
    if "api_version" not in f:
        return out
    mdl = f["manual_dirty_log_protect2"]
    out += [
        f"KVM API           {f['api_version']}",
        f"tdp_mmu           {f['tdp_mmu']}  (N: the shadow MMU handles guest faults)",
        f"MMU (--arch)      {f['mmu']['arch']}: {f['mmu']['reason']}",
        f"eager_page_split  {f['eager_page_split']}",
        f"DISABLE_QUIRKS2   {', '.join(f['disableable_quirks']) or 'none'}",
        f"MANUAL_DIRTY_LOG_PROTECT2  {mdl} ({'supported' if mdl else 'unsupported'})",
        "policies on this kernel:",
    ]
    for name, p in f["policies"].items():
        state = "yes" if p["runs"] else f"no ({p['why_not']})"
        out.append(f"  {name:<16} {state:<4} {p['knob']}")
    out.append("  (others, e.g. zap-all: no kernel knob; model only)")
    g = f["guest"]
    if "error" in g:
        out.append(f"CPL3 guest        FAILED: {g['error']}")
    else:
        verdict = "runs natively" if g["native"] else "did NOT build sptes (emulated?)"
        out.append(
            f"CPL3 guest        {verdict}: {g['pages']} pages touched, pf_fixed={g['pf_fixed']},"
            f" pages_4k={g['pages_4k']}, insn_emulation={g['insn_emulation']}"
        )
    return out


def doctor(args: argparse.Namespace) -> int:
    """`mmbench doctor` (the flags are in commands.py)."""
    facts = diagnose()
    print(json.dumps(facts, indent=1) if args.json else "\n".join(_lines(facts)))
    return 0
