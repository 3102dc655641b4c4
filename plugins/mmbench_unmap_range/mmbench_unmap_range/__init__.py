"""Policy ``unmap-range``: x86's MMU-notifier range zap, ``kvm_unmap_gfn_range`` (6.18)."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.notifier import KvmGfnRange


class UnmapRange:
    """``kvm_unmap_gfn_range`` (arch/x86/kvm/mmu/mmu.c, 6.18), called by
    ``kvm_mmu_notifier_invalidate_range_start`` with mmu_lock held for write:

    * with rmaps (the shadow MMU, and the legacy MMU's direct sps under EPT with
      ``tdp_mmu=N``): ``__kvm_rmap_zap_gfn_range``, ``kvm_zap_rmap`` on every level's
      rmaps, yielding when the range may block ("KVM: x86/mmu: Honor NEED_RESCHED when
      zapping rmaps and blocking is allowed", 6.13);
    * with the TDP MMU: ``kvm_tdp_mmu_unmap_gfn_range`` -> ``tdp_mmu_zap_leafs`` per
      root, under the write lock (the notifier takes ``KVM_MMU_LOCK``, the write side of
      the rwlock since "KVM: x86/mmu: Use an rwlock for the x86 MMU", 5.12), yielding via
      ``tdp_mmu_iter_cond_resched`` when ``may_block``.

    Both return whether a flush is owed; ``kvm_handle_hva_range`` flushes once before
    the unlock. The event is not looked at: x86 zaps alike for unmap, clear, protect,
    migrate. Also the arch backends' default, named so it can be compared.
    """

    name = "unmap-range"
    year = 2021  # kvm_unmap_gfn_range replaced kvm_unmap_hva_range (5.13)
    description = "x86 MMU-notifier range zap: rmap walk or TDP MMU walk (6.18)"
    archs = ("x86-shadow", "x86-tdp", "x86-ept")
    options = {}
    kernel = "6.18, mmu_lock for write"

    @hookimpl
    def mmbench_unmap_gfn_range(self, kvm: Kvm, range: KvmGfnRange) -> bool:
        # kvm_memslots_have_rmaps() ? __kvm_rmap_zap_gfn_range : kvm_tdp_mmu_unmap_gfn_range
        return kvm.mmu.kvm_unmap_gfn_range(range.start, range.end, range.may_block)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(UnmapRange)
