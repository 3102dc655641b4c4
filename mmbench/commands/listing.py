"""``mmbench list``: what every loaded plugin provides, and which hooks it implements."""

from __future__ import annotations

import argparse

from mmbench.host.manager import get_host
from mmbench.run.paths import policy_paths
from mmbench.run.policy_spec import option_params
from mmbench.workloads.base import Param


# -- list --------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    host = get_host()
    reg = host.registry
    out = []
    for kind, title in (
        ("workload", "Workloads"),
        ("arch", "Arch backends"),
        ("policy", "Policies"),
        ("monitor", "Monitors"),
        ("backend", "Backends"),
        ("command", "Commands from plugins"),
    ):
        out.append(f"{title}:")
        for name in reg.names(kind):
            obj = reg.get(kind, name)
            extra = ""
            if kind == "policy":
                extra = f" [archs: {', '.join(obj.archs)}] [paths: {', '.join(policy_paths(obj))}]"
                if obj.kernel:
                    extra += f" [kernel: {obj.kernel}]"
                if obj.options:
                    opts = ", ".join(option_text(p) for p in option_params(obj).values())
                    extra += f" [options: {opts}]"
            provider = reg.provider[(kind, name)]
            out.append(f"  {name:<18} {obj.description}{extra}  (from {provider})")
    out.append("Plugins loaded:")
    for origin, hooks in host.plugins():
        where = f", entry point {origin.entry_point}" if origin.entry_point else ""
        out.append(f"  {origin.plugin} ({origin.source}{where}): {', '.join(hooks)}")
    print("\n".join(out))
    return 0


def option_text(p: Param) -> str:
    """``batch=10 (int >= 1)``: the default as typed, then the type and its bounds."""
    bounds = ((">=", p.min), (">", p.above), ("<=", p.max))
    rule = " ".join([p.type.__name__, *(f"{op} {p.show(v)}" for op, v in bounds if v is not None)])
    return f"{p.name}={p.show(p.default)} ({rule})"
