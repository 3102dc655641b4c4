"""Broken dirty-logging policies on the TDP MMU (x86-tdp)."""

from __future__ import annotations

from collections.abc import Callable

from mmbench_collapse_sync import kvm_tdp_mmu_zap_collapsible_sptes
from mmbench_lazy_collapse import LazyCollapse

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu


class _CollapseSync:
    archs = ("x86-tdp",)
    options: dict = {}

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm_tdp_mmu_zap_collapsible_sptes(kvm, slot, lock_break=True)
        return True


class NoWriteProtect(_CollapseSync):
    """collapse-sync whose logging start write-protects nothing: guest writes go
    unlogged (``kvm_mmu_slot_remove_write_access`` left out)."""

    name = "no-write-protect"

    @hookimpl
    def mmbench_dirty_log_enable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        return True


class WriteProtectOffByOne(_CollapseSync):
    """Write-protects all of the slot but its last 2 MiB region."""

    name = "write-protect-off-by-one"

    @hookimpl
    def mmbench_dirty_log_enable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        r0, r1 = mmu.slot_regions(slot)
        with kvm.mmu_lock:
            mmu.walk(r0, r1 - 1, mmu.table_walk, self._wrprot(mmu), lock_break=True)
            kvm.flush_remote_tlbs_if_dirty()
        return True

    @staticmethod
    def _wrprot(mmu: RegionMmu) -> Callable[[slice], None]:
        def apply(sl: slice) -> None:
            mmu.huge_wp[sl] = mmu.huge[sl]
            mmu.w4k[sl] = 0
            mmu.tlbs_dirty = True

        return apply


class CollapseNoFlush:
    """Zaps the slot's collapsible tables on logging stop and never flushes."""

    name = "collapse-no-flush"
    archs = ("x86-tdp",)
    options: dict = {}

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        r0, r1 = mmu.slot_regions(slot)
        with kvm.mmu_lock:
            mmu.walk(r0, r1, mmu.table_walk, self._zap(mmu), lock_break=False)
        return True

    @staticmethod
    def _zap(mmu: RegionMmu) -> Callable[[slice], None]:
        return lambda sl: mmu.zap_tables(sl, huge_leaves=False)


class CollapseUnlocksUnflushed(CollapseNoFlush):
    """Zaps collapsible tables a chunk at a time, dropping mmu_lock between chunks to
    bound its hold time, but without flushing first; flushes once at the end."""

    name = "collapse-unlocks-unflushed"
    CHUNK = 4  # regions per mmu_lock section

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        r0, r1 = mmu.slot_regions(slot)
        for r in range(r0, r1, self.CHUNK):
            with kvm.mmu_lock:
                mmu.walk(r, min(r1, r + self.CHUNK), mmu.table_walk, self._zap(mmu),
                         lock_break=False)  # fmt: skip
        with kvm.mmu_lock:
            kvm.flush_remote_tlbs_if_dirty()
        return True


class LazyIgnoresDeletedSlot(LazyCollapse):
    """lazy-collapse whose worker walks every queued slot, deleted or not: a use after
    free of ``struct kvm_memory_slot`` (the race seed 002's author feared)."""

    name = "lazy-ignores-deleted-slot"

    def zap_collapsible_sptes_fn(self, kvm: Kvm[RegionMmu]) -> None:
        kvm.engine.sleep(self.delay_ns)
        if kvm.destroyed:
            self.work.clear()
            return
        with kvm.mmu_lock:
            while self.work:
                kvm_tdp_mmu_zap_collapsible_sptes(kvm, self.work.pop(0), lock_break=True)


MUTANTS = (
    NoWriteProtect,
    WriteProtectOffByOne,
    CollapseNoFlush,
    CollapseUnlocksUnflushed,
    LazyIgnoresDeletedSlot,
)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    for cls in MUTANTS:
        register(cls)
