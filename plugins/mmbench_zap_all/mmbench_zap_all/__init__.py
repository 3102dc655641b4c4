"""Policy ``zap-all``: kvm_mmu_zap_all on memslot delete, optionally with lock-break."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu
from mmbench.model.shadow.mmu import ShadowMmu
from mmbench.workloads.base import Param


class ZapAll:
    """Legacy ``kvm_mmu_zap_all`` on memslot delete: the "big hammer" (before 2013).

    Models ``kvm_arch_flush_shadow_memslot() -> kvm_mmu_zap_all()``: walk
    ``active_mmu_pages`` and zap every sp under mmu_lock, roots in use becoming invalid and
    their vCPUs reloading. ``lock_break=true`` models "KVM: x86/mmu: Voluntarily reschedule as
    needed when zapping all sptes" (Sean Christopherson, 2019, in "Remove fast invalidate
    mechanism"): drop mmu_lock when someone waits and restart the walk from the list head,
    which also meets the sps vCPUs built meanwhile.

    On VM teardown (``kvm_arch_flush_shadow_all``) the same zap frees everything; on
    ``x86-tdp`` it is ``kvm_tdp_mmu_zap_all``. Without lock-break this is both x86 archs'
    default teardown: they call the same model primitive, ``kvm_mmu_zap_all``.
    """

    name = "zap-all"
    year = 2008  # kvm_mmu_zap_all on memslot removal, 2008
    archs = ("x86-shadow", "x86-ept", "x86-tdp")
    options = {"lock_break": Param("lock_break", bool, False, "drop mmu_lock when someone waits")}

    def __init__(self, lock_break: bool = False) -> None:
        self.lock_break = lock_break

    def _zap_all(self, kvm: Kvm[ShadowMmu | RegionMmu]) -> bool:
        with kvm.mmu_lock:
            kvm.mmu.kvm_mmu_zap_all(lock_break=self.lock_break)
        return True

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu | RegionMmu], slot: Memslot) -> bool:
        return self._zap_all(kvm)

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm[ShadowMmu | RegionMmu]) -> bool:
        return self._zap_all(kvm)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(ZapAll)
