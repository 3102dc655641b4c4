"""``RegionMmu``: the x86 TDP MMU and arm64 stage-2 as one radix tree aggregated per
2 MiB region, assembled from one module per concept.

- ``state``: the per-region arrays and lookups (why per region: see its docstring);
- ``fault``: guest accesses and page faults (``kvm_tdp_mmu_map``, ``fast_page_fault``,
  ``user_mem_abort``);
- ``walk``: the chunked host walk with lock-break that charges cost through mmu_lock and
  applies state as it goes;
- ``leaves``: zap a range's tables, install huge leaves, free empty level-2 tables;
- ``unmap``: range zaps, zap-all, freeing the tables (``kvm_tdp_mmu_zap_leafs``,
  ``unmap_stage2_range``);
- ``roots``: root generations and invalid roots (``kvm_tdp_mmu_invalidate_all_roots``,
  ``kvm_tdp_mmu_zap_invalidated_roots``), and the legacy MMU's zap names;
- ``dirty_log``: enable, write-protect, GET/CLEAR_DIRTY_LOG, eager split;
- ``invariants``: the oracle.

Policies compose the primitives (``walk``, ``zap_tables``, ``make_huge_sptes``, ...);
the remote TLB flush is ``Kvm.flush_remote_tlbs``, the one of both MMU families.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

from mmbench.model.region.dirty_log import RegionDirtyLog
from mmbench.model.region.fault import RegionFaults
from mmbench.model.region.invariants import RegionInvariants


class RegionMmu(RegionFaults, RegionInvariants, RegionDirtyLog):
    """``kvm->arch.tdp_mmu`` / ``kvm->arch.mmu.pgt``: one radix tree, aggregated."""

    supports_dirty_log = True
    trace = False  # no series over time of its own

    def set_mmu_pages_limit(self, nr_mmu_pages: int, nr_memslot_pages: int) -> None:
        """``KVM_SET_NR_MMU_PAGES`` bounds shadow pages (``n_max_mmu_pages``); TDP MMU
        and stage-2 tables are not counted against it, so nothing to do."""

    def root_lock(self) -> AbstractContextManager[object]:
        """mmu_lock as a vCPU's root reload takes it: for read on the TDP MMU
        (``kvm_mmu_free_roots``: ``is_tdp_mmu_active``), else exclusively."""
        return self._fault_lock()

    def check_after_fault(self, when: str) -> None:
        """No per-fault invariant: the tables have no page limit (see above)."""
