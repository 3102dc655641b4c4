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
    if getattr(args, "metrics", None):
        print(metrics_text(reg.get("workload", args.metrics)))
        return 0
    if getattr(args, "primitives", False):
        print(primitives_text())
        return 0
    if getattr(args, "costs", None):
        print(costs_text(args.costs, args.format))
        return 0
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
            provider = reg.provider[(kind, name)]
            out.append(f"  {name:<18} {obj.description}{extra}  (from {provider})")
            if kind == "policy":
                for p in option_params(obj).values():  # NAME:key=value, one line each
                    out.append(
                        f"{'':<21}option {option_text(p)}" + (f": {p.help}" if p.help else "")
                    )
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


def metrics_text(wl: type) -> str:
    """``mmbench list --metrics WORKLOAD``: each metric with the kernel stat it is, its
    unit, direction, how repetitions are averaged, where its samples are, and what it means."""
    from mmbench.report.compare import mean_name

    rows = [("metric", "kernel stat", "unit", "better", "mean", "samples", "meaning")]
    for name, m in wl.metrics.items():
        samples = f"{m.samples.series}.{m.samples.field}" if m.samples else "-"
        rows.append(
            (
                name,
                m.stat or "-",
                m.unit or m.kind,
                "lower" if m.lower_is_better else "higher",
                mean_name(m.kind),
                samples,
                m.doc,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"{wl.name}: {wl.description}"]
    for r in rows:
        lines.append("  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=False)) + "  " + r[-1])
    lines.append(
        "kernel stat: KVM's binary stats / debugfs name (- : a figure of the model or workload)"
    )
    return "\n".join(lines)


def costs_text(arch: str, fmt: str = "text") -> str:
    """``mmbench list --costs ARCH``: every constant of the arch's table with its value,
    kind, range, one-line source and the workloads whose headline figures move when it
    does (``mmbench.run.costdeps``, computed by the model on the spot)."""
    import json

    from mmbench.run.costdeps import dependencies

    reg = get_host().registry
    table = reg.get("arch", arch).costs
    deps = dependencies(arch)
    if fmt == "json":
        doc = {"arch": arch, "table": table.name, "costs": {}}
        for name, c in table.costs.items():
            entry = c.as_dict() | {"unit": "ns", "per": c.doc, "missing": c.missing()}
            doc["costs"][name] = entry | {"headline_depends": deps.get(name, {})}
        return json.dumps(doc, indent=1)
    rows = [("cost", "value", "unit", "kind", "range", "headline figures that depend on it")]
    for name, c in table.costs.items():
        rng = f"{c.range[0]:g}-{c.range[1]:g}" if c.range is not None else "-"
        on = ", ".join(deps.get(name, {})) or "-"
        rows.append((name, f"{c.ns:g}", "ns", c.kind or "?", rng, on))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [f"{arch}: {table.name}"]
    for i, r in enumerate(rows):
        lines.append("  ".join(f"{v:<{w}}" for v, w in zip(r, widths, strict=False)) + "  " + r[-1])
        if i:
            c = table.costs[r[0]]
            lines.append(f"    {c.doc}: {c.provenance}" if c.doc else f"    {c.provenance}")
            if c.missing():
                lines.append(f"    MISSING: {', '.join(c.missing())}")
    lines.append(
        "kind: measured (host, kernel, preempt, date, spread) / derived (a cited public figure)"
        " / estimate (with its range) / absent (no such mechanism on the arch). A figure"
        " depends on a cost when doubling the cost moves it (workloads at their probe sizes,"
        " default policies, sim backend)."
    )
    return "\n".join(lines)


PRIMITIVE_CLASSES = (
    ("mmbench.model.kvm", "Kvm", "kvm"),
    ("mmbench.model.lock", "MmuLock", "kvm.mmu_lock"),
    ("mmbench.model.shadow.mmu", "ShadowMmu", "kvm.mmu (x86-shadow)"),
    ("mmbench.model.region.mmu", "RegionMmu", "kvm.mmu (x86-tdp, arm64)"),
)


def primitives_text() -> str:
    """``mmbench list --primitives``: what a policy composes, generated from the model's
    own signatures and docstrings (first paragraph), grouped by the object a hook gets
    and the module that defines each (so the reference cannot drift from the code)."""
    import importlib
    import inspect

    out = []
    for module, cls_name, where in PRIMITIVE_CLASSES:
        cls = getattr(importlib.import_module(module), cls_name)
        out.append(f"{where}: {cls.__module__}.{cls_name}")
        for name, member in sorted(vars_with_bases(cls).items()):
            fn = member.fget if isinstance(member, property) else member
            if name.startswith("_") or not callable(fn):
                continue
            owner = next(c for c in cls.__mro__ if name in vars(c))
            try:
                sig = "" if isinstance(member, property) else str(inspect.signature(fn))
            except (TypeError, ValueError):
                sig = "(...)"
            sig = sig.replace("(self, ", "(").replace("(self)", "()")
            doc = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
            out.append(f"  {name}{sig}  [{owner.__module__.rsplit('.', 1)[-1]}]")
            if doc:
                out.append(f"      {doc}")
    return "\n".join(out)


def vars_with_bases(cls: type) -> dict[str, object]:
    """Every attribute defined on ``cls`` or its mmbench bases, the nearest winning."""
    found: dict[str, object] = {}
    for c in reversed(cls.__mro__):
        if c.__module__.startswith("mmbench"):
            found.update(vars(c))
    return found
