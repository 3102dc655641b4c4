"""Which kernel knob stands in for which mmbench policy on the real kernel.

On /dev/kvm a policy cannot be plugged in: the kernel has one implementation of each path
and a few per-VM switches. ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` (on by default) makes a memslot
delete or move zap every shadow page with the 2013 fast-invalidate scheme
(``kvm_mmu_zap_all_fast``); disabling it through ``KVM_CAP_DISABLE_QUIRKS2`` makes KVM zap
only what maps the slot (the 2019 series, ``kvm_mmu_zap_memslot``). Policies with no such
switch (legacy zap-all, ...) are refused, naming what this kernel supports.
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


KERNEL_POLICIES: dict[str, KernelPolicy] = {
    p.name: p
    for p in (
        KernelPolicy("fast-invalidate", 0, 0, "KVM_X86_QUIRK_SLOT_ZAP_ALL on (the default)"),
        KernelPolicy(
            "zap-slot",
            k.KVM_X86_QUIRK_SLOT_ZAP_ALL,
            k.KVM_X86_QUIRK_SLOT_ZAP_ALL,
            "KVM_X86_QUIRK_SLOT_ZAP_ALL disabled via KVM_CAP_DISABLE_QUIRKS2",
        ),
    )
}


def supported(quirk_mask: int) -> list[KernelPolicy]:
    """The policies this kernel can run, given ``KVM_CHECK_EXTENSION(DISABLE_QUIRKS2)``."""
    return [p for p in KERNEL_POLICIES.values() if (quirk_mask & p.needs_quirk) == p.needs_quirk]


def resolve(name: str, quirk_mask: int) -> KernelPolicy:
    """The knob for policy ``name``, or a ConfigError naming what the kernel supports."""
    ok = {p.name: p for p in supported(quirk_mask)}
    if name in ok:
        return ok[name]
    listing = "; ".join(f"{p.name} = {p.knob}" for p in ok.values()) or "none"
    why = (
        "the kernel cannot disable KVM_X86_QUIRK_SLOT_ZAP_ALL"
        if name in KERNEL_POLICIES
        else "no kernel knob implements it"
    )
    raise ConfigError(
        "--policy", f"{name!r} cannot run on backend kvm: {why} (this kernel supports: {listing})"
    )
