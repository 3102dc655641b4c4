"""Policy ``fast-invalidate``: the 2013 mmu_valid_gen scheme."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.shadow.mmu import ShadowMmu
from mmbench.workloads.base import Param

BATCH_ZAP_PAGES = 10


class FastInvalidate:
    """Fast invalidate: "KVM: MMU: fast invalid all shadow pages" (Xiao Guangrong, 2013).

    ``kvm_mmu_invalidate_zap_all_pages()``: bump ``mmu_valid_gen`` so every sp becomes
    obsolete, ask every vCPU to reload its root (new tables are built in the new
    generation; obsolete sps are never reused), clear lpage_info, then zap the obsolete sps
    from the list tail in batches of ``BATCH_ZAP_PAGES`` with lock-break.
    """

    name = "fast-invalidate"
    year = 2013  # seed 000
    kernel = "3.11 (2013, seed 000); restored in 5.3"
    archs = ("x86-shadow", "x86-ept")
    options = {
        "batch": Param(
            "batch", int, BATCH_ZAP_PAGES, "obsolete sps zapped between lock-break checks", min=1
        )
    }

    def __init__(self, batch: int = BATCH_ZAP_PAGES) -> None:
        self.batch = batch

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.mmu_valid_gen += 1
            mmu.kvm_clear_all_lpage_info()
            kvm.reload_remote_mmus()
            tail_first = mmu.active_mmu_pages()[::-1]
            mmu.zap_pages(tail_first, where=mmu.is_obsolete, lock_break=True, min_batch=self.batch)
            mmu.commit_zap_page()
        return True


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(FastInvalidate)
