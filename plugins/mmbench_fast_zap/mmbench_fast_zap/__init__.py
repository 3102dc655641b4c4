"""Policy ``fast-zap``: ``kvm_mmu_zap_all_fast`` on the TDP MMU (SLOT_ZAP_ALL on)."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu


class FastZap:
    """``kvm_mmu_zap_all_fast`` with the TDP MMU, as v6.12 runs it on a memslot delete while
    ``KVM_X86_QUIRK_SLOT_ZAP_ALL`` is on (the default; "KVM: x86: Introduce
    KVM_X86_QUIRK_SLOT_ZAP_ALL", Yan Zhao, 6.12, made zapping only the slot opt-in).

    Under ``write_lock(&kvm->mmu_lock)``: flip ``mmu_valid_gen``,
    ``kvm_tdp_mmu_invalidate_all_roots()``, ``kvm_make_all_cpus_request(kvm,
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)`` (every vCPU drops its root and loads a new, empty one),
    ``kvm_zap_obsolete_pages()`` (no shadow pages on the TDP MMU). Then under
    ``read_lock``: ``kvm_tdp_mmu_zap_invalidated_roots()``, yielding, while the vCPUs fault
    into their new roots beside it.
    """

    name = "fast-zap"
    year = 2020  # the TDP MMU's kvm_mmu_zap_all_fast (5.10); the quirk's default since 6.12
    kernel = "6.12 (KVM_X86_QUIRK_SLOT_ZAP_ALL on)"
    archs = ("x86-tdp",)
    options: dict[str, object] = {}

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.kvm_tdp_mmu_invalidate_all_roots()
            kvm.reload_remote_mmus()  # KVM_REQ_MMU_FREE_OBSOLETE_ROOTS
        with kvm.mmu_lock.read_lock():
            mmu.kvm_tdp_mmu_zap_invalidated_roots(lock_break=True)
        return True


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(FastZap)
