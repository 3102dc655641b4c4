"""Policy ``lazy-collapse``: a delayed worker zaps collapsible sptes with lock-break.

The worker runs the same collapse walk as ``collapse-sync``:
``kvm_tdp_mmu_zap_collapsible_sptes``, imported from ``mmbench_collapse_sync``.
"""

from __future__ import annotations

from collections.abc import Callable

from mmbench_collapse_sync import kvm_tdp_mmu_zap_collapsible_sptes

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu
from mmbench.workloads.base import Param

KVM_MMU_ZAP_DELAYED_S = 60.0  # 60 * HZ in the patch


class LazyCollapse:
    """ "KVM: MMU: Introduce single thread to zap collapsible sptes" (Wanpeng Li, 2018,
    seed 002), with the per-slot work list Radim Krčmář asked for in review.

    Disabling logging only queues the slot on ``zap_collapsible_work`` and, if the list
    was empty, schedules the delayed work: the ioctl returns at once. The worker, after
    ``delay_s``, takes mmu_lock and zaps each queued slot's collapsible sptes with
    lock-break (``kvm_tdp_mmu_zap_collapsible_sptes`` of ``mmbench_collapse_sync``). A
    slot deleted, moved or changed (logging re-enabled) before or while the worker runs
    is no longer the live slot of its id: the worker drops it untouched (whoever replaced
    it handled its mappings), which is the race the author feared.
    """

    name = "lazy-collapse"
    year = 2018  # seed 002
    kernel = "2018 RFC on 4.x (seed 002; not merged), write lock"
    description = "delayed worker zaps collapsible sptes with lock-break (seed 002)"
    archs = ("x86-tdp",)
    options = {
        "delay_s": Param(
            "delay_s", float, KVM_MMU_ZAP_DELAYED_S, "seconds before the worker zaps", min=0
        )
    }

    def __init__(self, delay_s: float = KVM_MMU_ZAP_DELAYED_S) -> None:
        self.delay_ns = delay_s * 1e9
        self.work: list[Memslot] = []  # the per-slot work list; non-empty == work scheduled

    @hookimpl
    def mmbench_dirty_log_disable(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        if not self.work:  # schedule_delayed_work()
            kvm.engine.spawn("kworker/zap_collapsible", self.zap_collapsible_sptes_fn, kvm)
        self.work.append(slot)
        return True

    def zap_collapsible_sptes_fn(self, kvm: Kvm[RegionMmu]) -> None:
        """The delayed work: zap each queued slot that is still live."""
        kvm.engine.idle(self.delay_ns)  # queued delayed work: no task runs meanwhile
        if kvm.destroyed:  # cancel_delayed_work_sync() in kvm_arch_sync_events
            self.work.clear()
            return
        with kvm.mmu_lock:
            while self.work:
                slot = self.work.pop(0)
                if not kvm.memslots.is_live(slot):
                    kvm.stats.vm["collapse_work_dropped"] += 1
                    continue
                kvm_tdp_mmu_zap_collapsible_sptes(
                    kvm, slot, lock_break=True, alive=lambda s=slot: kvm.memslots.is_live(s)
                )


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(LazyCollapse)
