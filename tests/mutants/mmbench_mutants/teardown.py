"""Broken teardown policies (``kvm_arch_flush_shadow_all``) on arm64 and x86-tdp."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.region.mmu import RegionMmu


class FreesNothing:
    """Answers ``kvm_arch_flush_shadow_all`` and frees nothing."""

    name = "frees-nothing"
    archs = ("arm64", "x86-tdp")
    options: dict = {}

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        return True


class ElidesTheTlbi:
    """s2-elide that drops the final ``TLBI VMALLS12E1IS`` along with the CMOs and
    per-IPA TLBIs: the VMID's TLB entries outlive the VM."""

    name = "elides-the-tlbi"
    archs = ("arm64",)
    options: dict = {}

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_range(0, mmu.nr_regions, lock_break=True, cmo=False, tlbi_per_ipa=False)
            mmu.free_tables()
        return True


class LeaksTables:
    """Zaps every leaf and flushes, but never frees the tables (``kvm_free_stage2_pgd`` /
    ``kvm_tdp_mmu_put_root`` left out): the page-table pages leak."""

    name = "leaks-tables"
    archs = ("arm64", "x86-tdp")
    options: dict = {}

    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm[RegionMmu]) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_range(0, mmu.nr_regions, lock_break=True)
            kvm.flush_remote_tlbs_if_dirty()
        return True


MUTANTS = (FreesNothing, ElidesTheTlbi, LeaksTables)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    for cls in MUTANTS:
        register(cls)
