"""Policy ``recover-in-place``: install huge sptes over 4 KiB tables on dirty-log stop.

Home of the recovery walk, ``kvm_tdp_mmu_recover_huge_pages`` (1 GiB case included).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu
from mmbench.model.region.state import GIB_REGIONS


def kvm_tdp_mmu_recover_huge_pages(
    kvm: Kvm[RegionMmu],
    slot: Memslot,
    *,
    lock_break: bool,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """``kvm_tdp_mmu_recover_huge_pages`` (caller holds mmu_lock): walk the slot and
    install a huge leaf over each table a huge page could replace
    (``kvm_mmu_max_mapping_level``, then ``make_huge_spte`` from a child), freeing the
    table; no zap, no refault, the children's write protection kept. With 1 GiB backing a
    level-2 table wholly inside the slot becomes a 1 GiB leaf first. Flushes at the end.
    Returns False if the walk stopped early."""
    mmu = kvm.mmu
    mmu.check_live(slot)
    if not mmu.huge_ok:
        return True
    c = kvm.costs
    st = kvm.stats.vm
    r0, r1 = mmu.slot_regions(slot)
    gib = mmu.huge_1g

    def cost(sl: slice) -> np.ndarray:
        pt = mmu.pt[sl]
        n = mmu.n4k[sl].astype(np.float64)
        per_pt = c.host_level_lookup + c.pt_free + c.spte_install
        out = c.tdp_walk + pt * per_pt + n * c.zap_leaf
        if gib:
            l2 = mmu.gib_per_region(mmu.l2, sl.start, sl.stop)
            out = out + mmu.huge[sl] * c.zap_leaf + l2 * (per_pt / GIB_REGIONS)
        return out

    def apply(sl: slice) -> None:
        if gib:  # the level-2 tables wholly inside this step and the slot
            g0 = -(-max(sl.start, r0) // GIB_REGIONS)
            g1 = min(sl.stop, r1) // GIB_REGIONS
            for g in range(g0, g1):
                if mmu.make_huge_spte_1g(g):
                    st["huge_pages_recovered"] += 1
        k = mmu.make_huge_sptes(sl)
        if k:
            st["huge_pages_recovered"] += k

    done = mmu.walk(r0, r1, cost, apply, lock_break=lock_break, alive=alive)
    kvm.flush_remote_tlbs_if_dirty()
    return done


class RecoverInPlace:
    """ "KVM: x86/mmu: Recover TDP MMU huge page mappings in-place instead of zapping"
    (David Matlack, 2024, merged for 6.13): ``kvm_tdp_mmu_recover_huge_pages``.

    Each 4 KiB table that a huge page could replace becomes a 2 MiB leaf built from one of
    its children; the table is freed. Nothing is zapped, so the guest never refaults.
    Runs under ``read_lock(&kvm->mmu_lock)``, as ``kvm_mmu_recover_huge_pages`` does, so
    faulting vCPUs share the lock; the walk's flushes are batched: one at each yield
    (``tdp_mmu_iter_cond_resched`` with ``flush``) and one at the end
    (``kvm_flush_remote_tlbs_memslot``).
    """

    name = "recover-in-place"
    year = 2024  # merged for 6.13
    kernel = "6.13"
    description = "install huge sptes over 4 KiB tables in place, no refault (6.13)"
    archs = ("x86-tdp",)
    options = {}

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock.read_lock():
            kvm_tdp_mmu_recover_huge_pages(kvm, slot, lock_break=True)
        return True


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(RecoverInPlace)
