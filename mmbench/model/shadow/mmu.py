"""``ShadowMmu``: the x86 shadow MMU (and the legacy MMU of ``tdp_mmu=N``), in layers.

One object per VM, ``kvm.mmu``, whose state is NumPy arrays (no Python object per sp or
spte). Its methods come from one module per concept, each layer using only those below:

* ``sps``: the sp table and its lookups (``SpTable``);
* ``zap``: prepare/commit zap, the walks with lock-break and restart, ``kvm_zap_rmapp``
  (``ShadowZap``);
* ``reclaim``: ``n_used_mmu_pages`` / ``n_max_mmu_pages`` accounting, the reclaim loop and
  the views a reclaim policy chooses from (``ShadowReclaim``);
* ``fault``: roots, ``FNAME(page_fault)``, ``kvm_mmu_get_page``, ``link_shadow_page``,
  ``FNAME(pte_prefetch)`` (``ShadowFault``);
* ``invariants``: the correctness oracle; ``guest_tables``: what the sps shadow.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from mmbench.errors import InvariantViolation
from mmbench.model.shadow.fault import ShadowFault
from mmbench.model.shadow.invariants import check_host_unmapped, check_shadow_mmu
from mmbench.model.shadow.reclaim import ShadowReclaim
from mmbench.model.shadow.sps import SpTable
from mmbench.model.shadow.zap import ShadowZap


class ShadowMmu(ShadowFault, ShadowReclaim, ShadowZap, SpTable):
    """``kvm->arch`` for the shadow MMU: sps, sptes, rmaps, lpage_info, mmu_valid_gen, and
    the primitives policies compose."""

    supports_dirty_log = False  # not modelled here; the kvm backend runs it on tdp_mmu=N

    def set_mmu_pages_limit(self, nr_mmu_pages: int, nr_memslot_pages: int) -> None:
        """``KVM_SET_NR_MMU_PAGES``, or KVM's default for the memslots' pages when 0."""
        self.kvm_mmu_change_mmu_pages(nr_mmu_pages or self.default_mmu_pages(nr_memslot_pages))

    def root_lock(self) -> AbstractContextManager[object]:
        """mmu_lock as a vCPU's root reload takes it: exclusively (``kvm_mmu_unload``)."""
        return self.kvm.mmu_lock

    def check_new_slot(self, slot_id: int, base_gfn: int, npages: int) -> None:
        """Per-gfn rmaps hold any layout of 4 KiB-aligned slots: nothing to refuse."""

    def nr_mapped(self) -> int:
        return self.nr_live_sps()

    def nr_page_tables(self) -> int:
        return self.nr_live_sps()

    def extra_stats(self) -> dict[str, float]:
        return {}  # everything it counts is in kvm->stat

    def check_after_fault(self, when: str) -> None:
        """``make_mmu_pages_available`` frees room before a fault allocates (or the fault
        fails with -ENOSPC), so no fault batch may leave more sps than the limit: a reclaim
        policy that frees nothing is caught here, not only after a later reclaim."""
        if self.n_max_mmu_pages and self.n_used_mmu_pages > self.n_max_mmu_pages:
            raise InvariantViolation(
                f"after {when}: {self.n_used_mmu_pages} sps live, over n_max_mmu_pages"
                f" {self.n_max_mmu_pages}"
            )

    def check_invariants(
        self, when: str, gfn0: int = 0, gfn1: int | None = None, *, memslots: bool = True
    ) -> None:
        """The oracle for this MMU (``check_shadow_mmu``). It always checks every gfn:
        the rmap counts are per gfn, so ``[gfn0, gfn1)`` would not make it cheaper."""
        check_shadow_mmu(self, when, memslots)

    def check_host_unmapped(self, when: str, gfn0: int, gfn1: int) -> None:
        """After an MMU-notifier invalidation: nothing maps ``[gfn0, gfn1)``."""
        check_host_unmapped(self, when, gfn0, gfn1)
