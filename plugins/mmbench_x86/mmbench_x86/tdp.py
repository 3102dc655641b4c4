"""Arch backend ``x86-tdp``: the TDP MMU (EPT/NPT), one paging structure per root.

No rmaps and no shadow pages of guest tables: a range zap walks the tree. Leaves are
4 KiB, 2 MiB or 1 GiB where the backing allows (``--backing 2m|1g``). vCPU faults
take mmu_lock for read (since 5.12), so they wait only for a writer; the dirty-log and
teardown walks of the policies take it for write, as the 2018 code of seed 002 did (the
TDP MMU later moved collapsing under the read lock too).
"""

from __future__ import annotations

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.notifier import KvmGfnRange
from mmbench.model.region.arch import RegionArch
from mmbench.model.region.mmu import RegionMmu
from mmbench_x86.tdp_costs import X86_TDP_BARE_METAL


class X86Tdp(RegionArch):
    """x86 TDP MMU: a tree per root, 4 KiB / 2 MiB / 1 GiB leaves, tree walks for zaps."""

    name = "x86-tdp"
    description = "x86 TDP MMU (EPT/NPT): one tree per root, no rmaps, 4K / 2M / 1G leaves"
    costs = X86_TDP_BARE_METAL
    read_faults = True

    @hookimpl(trylast=True)
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        """``kvm_tdp_mmu_unmap_gfn_range`` over the slot, with yield, then a flush."""
        with kvm.mmu_lock:
            kvm.mmu.zap_slot(slot, lock_break=True)
        return True

    @hookimpl(trylast=True)
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        """``kvm_mmu_zap_all`` at destroy (no vCPU runs): the model's primitive, which
        the zap-all policy uses too."""
        with kvm.mmu_lock:
            kvm.mmu.kvm_mmu_zap_all(lock_break=False)
        return True

    @hookimpl(trylast=True)
    def mmbench_dirty_log_enable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        kvm.mmu.enable_dirty_logging(slot)
        return True

    @hookimpl(trylast=True)
    def mmbench_unmap_gfn_range(self, kvm: Kvm[RegionMmu], range: KvmGfnRange) -> bool:
        """x86 ``kvm_unmap_gfn_range`` (6.18) -> ``kvm_tdp_mmu_unmap_gfn_range`` under the
        write lock (policy ``unmap-range`` names the same zap)."""
        return kvm.mmu.kvm_unmap_gfn_range(range.start, range.end, range.may_block)
