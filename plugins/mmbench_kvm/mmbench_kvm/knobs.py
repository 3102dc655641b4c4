"""Which kernel knob stands in for which mmbench policy on the real kernel.

On /dev/kvm a policy cannot be plugged in: the kernel has one implementation of each path
and a few per-VM switches. ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` (on by default) makes a memslot
delete or move zap every shadow page with the 2013 fast-invalidate scheme
(``kvm_mmu_zap_all_fast``); disabling it through ``KVM_CAP_DISABLE_QUIRKS2`` makes KVM zap
only what maps the slot (the 2019 series, ``kvm_mmu_zap_memslot``). Policies with no such
switch are refused, naming what this kernel supports. Other paths have one kernel
implementation each, which stands for the policy that models it: VM destruction is
``kvm_mmu_zap_all`` (zap-all), and stopping dirty logging on the shadow MMU zaps the
collapsible sptes synchronously under mmu_lock (collapse-sync), and a host munmap /
madvise / mprotect of guest memory reaches ``kvm_unmap_gfn_range`` through the MMU
notifier (unmap-range). Policies are matched per path: zap-all is the kernel's teardown,
not a memslot-delete knob.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmbench.errors import ConfigError

from . import ioctls as k


@dataclass(frozen=True)
class KernelPolicy:
    name: str
    quirks_off: int  # KVM_CAP_DISABLE_QUIRKS2 mask applied to the VM at creation
    needs_quirk: int  # quirk bit the kernel must list as disableable (0: always works)
    knob: str  # what a KVM developer would call it
    paths: tuple[str, ...] = ("memslot-delete",)
    tdp_mmu: bool | None = None  # only on a kernel with (True) / without (False) the TDP MMU


KERNEL_POLICIES: dict[str, KernelPolicy] = {
    p.name: p
    for p in (
        KernelPolicy(
            "fast-invalidate",
            0,
            0,
            "KVM_X86_QUIRK_SLOT_ZAP_ALL on (the default): kvm_mmu_zap_all_fast, shadow MMU",
            tdp_mmu=False,
        ),
        KernelPolicy(
            "zap-slot",
            k.KVM_X86_QUIRK_SLOT_ZAP_ALL,
            k.KVM_X86_QUIRK_SLOT_ZAP_ALL,
            "KVM_X86_QUIRK_SLOT_ZAP_ALL disabled via KVM_CAP_DISABLE_QUIRKS2",
        ),
        KernelPolicy(
            "fast-zap",
            0,
            0,
            "KVM_X86_QUIRK_SLOT_ZAP_ALL on (the default): kvm_mmu_zap_all_fast, TDP MMU",
            tdp_mmu=True,
        ),
        KernelPolicy(
            "zap-all", 0, 0, "kvm_arch_flush_shadow_all -> kvm_mmu_zap_all", ("teardown",)
        ),
        KernelPolicy(
            "unmap-range",
            0,
            0,
            "kvm_mmu_notifier_invalidate_range_start -> kvm_unmap_gfn_range",
            ("mmu-notifier",),
        ),
        KernelPolicy(
            "collapse-sync",
            0,
            0,
            "kvm_mmu_zap_collapsible_sptes under mmu_lock (shadow MMU)",
            ("dirty-log-stop",),
            tdp_mmu=False,
        ),
    )
}


def supported(
    quirk_mask: int, tdp_mmu: bool | None = None, paths: tuple[str, ...] = ()
) -> list[KernelPolicy]:
    """The policies this kernel can run (given ``KVM_CHECK_EXTENSION(DISABLE_QUIRKS2)`` and
    whether it runs the TDP MMU), on any of ``paths`` (all paths when empty)."""
    return [
        p
        for p in KERNEL_POLICIES.values()
        if (quirk_mask & p.needs_quirk) == p.needs_quirk
        and (p.tdp_mmu is None or tdp_mmu is None or p.tdp_mmu == tdp_mmu)
        and (not paths or set(p.paths) & set(paths))
    ]


def resolve(
    name: str, quirk_mask: int, tdp_mmu: bool | None = None, paths: tuple[str, ...] = ()
) -> KernelPolicy:
    """The knob for policy ``name``, or a ConfigError naming what the kernel supports."""
    ok = {p.name: p for p in supported(quirk_mask, tdp_mmu, paths)}
    if name in ok:
        return ok[name]
    listing = "; ".join(f"{p.name} = {p.knob}" for p in ok.values()) or "none"
    known = KERNEL_POLICIES.get(name)
    if known is None:
        why = "no kernel knob implements it"
    elif paths and not set(known.paths) & set(paths):
        why = f"on the kernel it is the {'/'.join(known.paths)} path, not {'/'.join(paths)}"
    elif known.tdp_mmu is not None and tdp_mmu is not None and known.tdp_mmu != tdp_mmu:
        why = f"it needs tdp_mmu={'Y' if known.tdp_mmu else 'N'}"
    else:
        why = "the kernel cannot disable KVM_X86_QUIRK_SLOT_ZAP_ALL"
    raise ConfigError(
        "--policy", f"{name!r} cannot run on backend kvm: {why} (this kernel supports: {listing})"
    )
