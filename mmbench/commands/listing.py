"""``mmbench list``: what every loaded plugin provides, and which hooks it implements."""

from __future__ import annotations

import argparse

from mmbench.host.manager import get_host
from mmbench.run.paths import policy_paths


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
                if obj.options:
                    opts = ", ".join(f"{k}={v}" for k, v in obj.options.items())
                    extra += f" [options: {opts}]"
            provider = reg.provider[(kind, name)]
            out.append(f"  {name:<18} {obj.description}{extra}  (from {provider})")
    out.append("Plugins loaded:")
    for origin, hooks in host.plugins():
        where = f", entry point {origin.entry_point}" if origin.entry_point else ""
        out.append(f"  {origin.plugin} ({origin.source}{where}): {', '.join(hooks)}")
    print("\n".join(out))
    return 0
