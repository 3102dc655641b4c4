"""Policy ``collapse-sync``: zap collapsible sptes synchronously on dirty-log stop.

Also home of the collapse walk itself, ``kvm_tdp_mmu_zap_collapsible_sptes``, which the
``lazy-collapse`` policy's worker imports from here.
"""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu
from mmbench.workloads.base import Param


def kvm_tdp_mmu_zap_collapsible_sptes(
    kvm: Kvm[RegionMmu],
    slot: Memslot,
    *,
    lock_break: bool,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """``kvm_tdp_mmu_zap_collapsible_sptes`` (caller holds mmu_lock): walk the slot and
    zap every 4 KiB table that a huge page could replace (``kvm_mmu_max_mapping_level``
    per table); the guest refaults 2 MiB leaves. With 1 GiB backing whole level-2
    tables go, 2 MiB leaves too. Flushes before yielding and at the end. Returns False if
    ``alive()`` failed after a yield and the walk stopped early."""
    mmu = kvm.mmu
    mmu.check_live(slot)
    if not mmu.huge_ok:
        return True
    r0, r1 = mmu.slot_regions(slot)
    gib = mmu.huge_1g  # 1 GiB backing: zap whole level-2 tables, 2 MiB leaves too

    def apply(sl: slice) -> None:
        zapped = any(mmu.zap_tables(sl, huge_leaves=gib))
        if zapped and gib:
            mmu.free_empty_l2_tables(sl)  # handle_removed_pt of the level-3 entry

    done = mmu.walk(r0, r1, mmu.collapsible_zap_cost, apply, lock_break=lock_break, alive=alive)
    kvm.flush_remote_tlbs_if_dirty()
    return done


class CollapseSync:
    """``kvm_mmu_zap_collapsible_sptes`` under mmu_lock when logging stops (the 2018
    baseline of seed 002: "KVM: MMU: Introduce single thread to zap collapsible sptes").

    ``KVM_SET_USER_MEMORY_REGION`` does not return until every 4 KiB table that a huge
    page could replace is zapped, under the write lock; vCPUs that fault meanwhile spin on
    mmu_lock and then refault 2 MiB leaves. The walk yields, flushing first, where the
    2018 ``slot_handle_level_range(..., lock_flush_tlb=true)`` did: on ``need_resched() ||
    spin_needbreak()``, which the host kernel decides (on a non-preemptible host that is
    not overloaded, never: seed 002's 13 s stall). ``lock_break=false`` drops the check.
    (The 2018 walk went over rmaps; the model walks the TDP MMU's tree at its costs.)
    """

    name = "collapse-sync"
    year = 2015  # kvm_mmu_zap_collapsible_sptes, 2015
    kernel = "4.1-5.12 legacy MMU, write lock (seed 002's 2018 baseline)"
    description = "zap collapsible sptes under mmu_lock on dirty-log stop (2018 baseline)"
    archs = ("x86-tdp", "x86-shadow")  # x86-shadow: on --backend kvm (tdp_mmu=N)
    options = {
        "lock_break": Param(
            "lock_break", bool, True, "check need_resched() || spin_needbreak() and yield"
        )
    }

    def __init__(self, lock_break: bool = True) -> None:
        self.lock_break = lock_break

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot, lock_break=self.lock_break)
        return True


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(CollapseSync)
