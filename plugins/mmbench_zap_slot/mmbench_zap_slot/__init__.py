"""Policy ``zap-slot``: zap only what maps the deleted memslot (2019)."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu
from mmbench.model.shadow.mmu import ShadowMmu


class ZapSlot:
    """Zap only the slot: "KVM: x86/mmu: Zap only the relevant pages when removing a memslot"
    (Sean Christopherson, 2019, patch 11 of "Remove fast invalidate mechanism").

    ``kvm_mmu_invalidate_zap_pages_in_memslot()``: zap the rmaps of the slot's gfns at every
    level, then the sps that shadow a guest table inside the slot, flushing and lock-breaking
    as needed. Upstream later made this opt-in: ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` disabled.

    The same composition is the legacy MMU with EPT (``x86-ept``: direct sps, rmaps at
    every level) and, on ``x86-tdp``, v6.12's ``kvm_mmu_zap_memslot`` with the quirk off
    ("KVM: x86: Introduce KVM_X86_QUIRK_SLOT_ZAP_ALL", Yan Zhao, 6.12):
    ``kvm_unmap_gfn_range`` -> ``kvm_tdp_mmu_unmap_gfn_range`` over the slot under the write
    lock, then the flush; the TDP MMU has no shadow pages to zap.
    """

    name = "zap-slot"
    year = 2019  # seed 001
    archs = ("x86-shadow", "x86-ept", "x86-tdp")
    options: dict[str, object] = {}

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu | RegionMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn, lock_break=True)
            mmu.zap_pages(mmu.pages_with_gfn_in(slot), lock_break=True, flush_on_break=True)
            mmu.commit_zap_page()
        return True


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(ZapSlot)
