"""Arch backend ``x86-ept``: the legacy MMU on TDP hardware (EPT/NPT with ``tdp_mmu=N``).

The MMU is ``mmbench.model.shadow.direct`` (v5.10's ``__direct_map``: direct sps over the
GPA space, rmaps at 4 KiB, 2 MiB and 1 GiB, ``kvm_mmu_hugepage_adjust``,
``direct_pte_prefetch``); zaps, ``mmu_valid_gen`` and reclaim are the shadow MMU's, so the
memslot policies of x86-shadow run on it unchanged. ``--backing`` bounds the leaf size
(``host_pfn_mapping_level``): 4k, 2m (THP, as QEMU madvises guest RAM) or 1g (hugetlbfs).
The defaults (FIFO reclaim, ``kvm_mmu_zap_all`` at teardown) are x86-shadow's.
"""

from __future__ import annotations

from mmbench.model.kvm import Kvm
from mmbench_x86.ept_costs import X86_EPT_BARE_METAL
from mmbench_x86.shadow import PTE_PREFETCH_NUM, X86Shadow

EPT_LEVELS = 4  # 4-level EPT (no 5-level EPT for a guest below 256 TiB)
GiB = 1 << 30


class X86Ept(X86Shadow):
    """Legacy MMU with EPT: direct sps, rmaps, 4 KiB / 2 MiB / 1 GiB sptes."""

    name = "x86-ept"
    description = (
        "x86 legacy MMU with EPT/NPT (tdp_mmu=N, v5.10 __direct_map): direct sps, rmaps,"
        " mmu_valid_gen, 4K / 2M / 1G sptes"
    )
    costs = X86_EPT_BARE_METAL
    max_guest_bytes = 1 << 40  # per-gfn rmap counts, as x86-shadow

    def setup(self, kvm: Kvm, areas_per_vcpu: list[list[tuple[int, int]]], pt_gfn: int) -> None:
        """Build the direct tables over every area a vCPU touches and the MMU state;
        the guest's own page tables (from ``pt_gfn``) are not KVM's concern with EPT."""
        # the direct MMU is imported by the runs that use it, not by plugin discovery
        from mmbench.model.shadow.direct import DirectMmu, build_direct_tables

        tables = build_direct_tables(areas_per_vcpu, EPT_LEVELS)
        host_level = 1
        if kvm.huge_pages:
            host_level = 3 if kvm.huge_page_size >= GiB else 2
        kvm.mmu = DirectMmu(
            kvm,
            tables,
            kvm.memslots.max_gfn,
            len(kvm.vcpus),
            pte_prefetch_num=PTE_PREFETCH_NUM,
            host_level=host_level,
        )
