"""Policy ``tdp-zap-collapsible``: the TDP MMU's collapsible-SPTE zap of 5.13-6.12.

``kvm_mmu_zap_collapsible_sptes`` takes ``read_lock(&kvm->mmu_lock)`` for the TDP MMU
("KVM: x86/mmu: Allow zapping collapsible SPTEs to use MMU read lock", Ben Gardon, 5.13),
so faulting vCPUs share the lock with the zap. ``zap_collapsible_spte_range`` walks the
slot; every 4 KiB table that a huge page could replace (``kvm_mmu_max_mapping_level``) is
zapped by ``tdp_mmu_zap_spte_atomic``, which flushes remote TLBs for it at once: one
``kvm_flush_remote_tlbs`` per zapped table. ``batch_flush=true`` is 6.13's "KVM: x86/mmu:
Batch TLB flushes when zapping collapsible TDP MMU SPTEs" (David Matlack): the zap sets a
flush flag and the walk flushes once at each yield (``tdp_mmu_iter_cond_resched``) and at
the end. The guest refaults 2 MiB leaves either way.
"""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu
from mmbench.workloads.base import Param


def kvm_tdp_mmu_zap_collapsible_sptes(
    kvm: Kvm[RegionMmu], slot: Memslot, *, batch_flush: bool
) -> None:
    """``kvm_tdp_mmu_zap_collapsible_sptes`` (caller holds mmu_lock for read)."""
    mmu = kvm.mmu
    mmu.check_live(slot)
    if not mmu.huge_ok:
        return
    r0, r1 = mmu.slot_regions(slot)
    gib = mmu.huge_1g  # 1 GiB backing: level-2 tables and 2 MiB leaves go too

    def apply(sl: slice) -> None:
        huge, _, tables = mmu.zap_tables(sl, huge_leaves=gib)
        if gib and (huge or tables):
            mmu.free_empty_l2_tables(sl)
        if not batch_flush and (huge or tables):
            kvm.flush_remote_tlbs(huge + tables)  # tdp_mmu_zap_spte_atomic: one each

    mmu.walk(r0, r1, mmu.collapsible_zap_cost, apply, lock_break=True)
    kvm.flush_remote_tlbs_if_dirty()


class TdpZapCollapsible:
    """``kvm_mmu_zap_collapsible_sptes`` on the TDP MMU, 5.13-6.12 (``batch_flush``: 6.13).

    Disabling dirty logging zaps every collapsible 4 KiB table under the read lock,
    yielding on ``need_resched() || rwlock_needbreak()``; until 6.12 each zap is followed
    by its own remote TLB flush, an IPI to every running vCPU and a wait for their acks.
    """

    name = "tdp-zap-collapsible"
    year = 2021  # 5.13
    kernel = "5.13-6.12 (batch_flush: 6.13)"
    description = "zap collapsible TDP MMU sptes under the read lock, a flush per table"
    archs = ("x86-tdp",)
    options = {
        "batch_flush": Param(
            "batch_flush",
            bool,
            False,
            "one flush per yield and at the end instead of one per zapped table (6.13)",
        )
    }

    def __init__(self, batch_flush: bool = False) -> None:
        self.batch_flush = batch_flush

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock.read_lock():
            kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot, batch_flush=self.batch_flush)
        return True


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(TdpZapCollapsible)
