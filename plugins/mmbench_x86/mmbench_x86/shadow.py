"""Arch backend ``x86-shadow``: shadow paging (no EPT/NPT, or ``tdp_mmu=N`` nested).

The MMU is ``mmbench.model.shadow`` (sps, fault path, zaps, reclaim); what is x86's here
is the cost table, the guest model (4-level guest tables, ``PTE_PREFETCH_NUM`` sptes per
fault) and the defaults a policy may override: FIFO reclaim and ``kvm_mmu_zap_all`` at
teardown, as ``trylast`` hookimpls so that a policy's answer wins whatever the order of
registration.
"""

from __future__ import annotations

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.notifier import KvmGfnRange
from mmbench.model.shadow.guest_tables import build_identity_page_tables
from mmbench.model.shadow.mmu import ShadowMmu
from mmbench.model.shadow.reclaim import fifo_reclaim
from mmbench.model.vcpu import Vcpu
from mmbench_x86.costs import X86_SHADOW_BARE_METAL

# FNAME(pte_prefetch) fetches the aligned group of PTE_PREFETCH_NUM gptes around the
# faulting one (arch/x86/kvm/mmu/mmu.c); on the development host's kernel (kvm_pvm,
# tdp_mmu=N) ``mmbench calibrate`` sees 8 sptes per fault on warm guest tables.
PTE_PREFETCH_NUM = 8
GUEST_LEVELS = 4  # x86-64 4-level paging (no LA57) in the guest


class X86Shadow:
    """x86 shadow MMU: sps shadow guest page tables, leaf sptes live in rmaps."""

    name = "x86-shadow"
    description = "x86 shadow paging (no EPT/NPT): sps, rmaps, mmu_valid_gen, 4 KiB sptes"
    costs = X86_SHADOW_BARE_METAL
    max_guest_bytes = 1 << 40  # per-gfn rmap counts: 2 bytes per 4 KiB of guest memory

    # -- building the VM -----------------------------------------------------------------
    def setup(self, kvm: Kvm, areas_per_vcpu: list[list[tuple[int, int]]], pt_gfn: int) -> None:
        """Build the guest's page tables (pages from ``pt_gfn`` on) and the MMU state."""
        gpt = build_identity_page_tables(areas_per_vcpu, pt_gfn, GUEST_LEVELS)
        kvm.mmu = ShadowMmu(
            kvm, gpt, kvm.memslots.max_gfn, len(kvm.vcpus), pte_prefetch_num=PTE_PREFETCH_NUM
        )

    @staticmethod
    def page_table_pages(areas_per_vcpu: list[list[tuple[int, int]]]) -> int:
        """How many guest page-table pages the layout needs (to reserve guest RAM)."""
        return build_identity_page_tables(areas_per_vcpu, 0, GUEST_LEVELS).count

    def touch(self, kvm: Kvm[ShadowMmu], vcpu: Vcpu, gfn0: int, gfn1: int, write: bool) -> None:
        kvm.mmu.access(vcpu, gfn0, gfn1, write)

    # -- defaults (a policy answering the same hook wins) ----------------------------------
    @hookimpl(trylast=True)
    def mmbench_reclaim(self, kvm: Kvm[ShadowMmu], nr_to_zap: int) -> np.ndarray:
        """FIFO (``fifo_reclaim``), as KVM did in 2009 (seed 004); policy ``fifo`` names the
        same choice. Current kernels also skip roots in use (``skip-roots``)."""
        return fifo_reclaim(kvm, nr_to_zap)

    @hookimpl(trylast=True)
    def mmbench_flush_shadow_all(self, kvm: Kvm[ShadowMmu]) -> bool:
        """``kvm_mmu_zap_all`` at destroy: no vCPU runs, so no lock-break is needed (policy
        ``zap-all`` is the same zap, with its ``lock_break`` option)."""
        with kvm.mmu_lock:
            kvm.mmu.kvm_mmu_zap_all()
        return True

    @hookimpl(trylast=True)
    def mmbench_unmap_gfn_range(self, kvm: Kvm[ShadowMmu], range: KvmGfnRange) -> bool:
        """x86 ``kvm_unmap_gfn_range`` (6.18) with rmaps: ``__kvm_rmap_zap_gfn_range``
        (policy ``unmap-range`` names the same zap)."""
        return kvm.mmu.kvm_unmap_gfn_range(range.start, range.end, range.may_block)
