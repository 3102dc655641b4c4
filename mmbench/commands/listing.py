"""``mmbench list``: what every loaded plugin provides, and which hooks it implements."""

from __future__ import annotations

import argparse
from typing import Any

from mmbench.host.manager import get_host
from mmbench.run.paths import policy_paths


def first_line(obj: Any) -> str:
    doc = (getattr(obj, "description", None) or obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


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
                if getattr(obj, "options", None):
                    opts = ", ".join(f"{k}={v}" for k, v in obj.options.items())
                    extra += f" [options: {opts}]"
            provider = reg.provider[(kind, name)]
            out.append(f"  {name:<18} {first_line(obj)}{extra}  (from {provider})")
    out.append("Plugins loaded:")
    for name, hooks in host.plugins():
        dist = host.dist_of(name)
        where = f" ({dist})" if dist else ""
        out.append(f"  {name}{where}: {', '.join(hooks)}")
    print("\n".join(out))
    return 0
