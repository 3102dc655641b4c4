"""Broken memslot-delete policies on the shadow MMU (``kvm_arch_flush_shadow_memslot``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import Memslot
from mmbench.model.region.mmu import RegionMmu
from mmbench.model.shadow.mmu import ShadowMmu


class _Memslot:
    archs = ("x86-shadow", "x86-ept")
    options: dict = {}


class ForgetsZap(_Memslot):
    """Flushes remote TLBs and zaps nothing: every spte of the slot stays."""

    name = "forgets-zap"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm.flush_remote_tlbs()
        return True


class NeverFlushes(_Memslot):
    """zap-slot without ``kvm_mmu_commit_zap_page``'s flush: zapped sptes stay in TLBs."""

    name = "never-flushes"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm.mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn, flush_on_break=False)
        return True


class FlushesBeforeZap(_Memslot):
    """Flushes first and zaps after: the flush covers nothing that was zapped."""

    name = "flushes-before-zap"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            kvm.flush_remote_tlbs()
            mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn, flush_on_break=False)
            mmu.zap_pages(mmu.pages_with_gfn_in(slot))
        return True


class FlushesAtEnd(_Memslot):
    """zap-slot whose rmap walk yields mmu_lock without flushing first (``flush_on_yield``
    false in ``slot_handle_level_range``) and flushes only at the end."""

    name = "flushes-at-end"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn, lock_break=True, flush_on_break=False)
            mmu.zap_pages(mmu.pages_with_gfn_in(slot), lock_break=True)
            mmu.commit_zap_page()
        return True


class OffByOne(_Memslot):
    """zap-slot over ``[base_gfn, base_gfn + npages - 1)``: the slot's last gfn stays mapped."""

    name = "off-by-one"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn - 1, lock_break=True)
            mmu.zap_pages(mmu.pages_with_gfn_in(slot), lock_break=True)
            mmu.commit_zap_page()
        return True


class SkipsShadowedTables(_Memslot):
    """zap-slot without the ``sp->gfn`` pass: sps shadowing guest tables inside the slot
    stay (found only when the slot holding guest page tables goes)."""

    name = "skips-shadowed-tables"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm.mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn, lock_break=True)
            kvm.mmu.commit_zap_page()
        return True


class ZapsUnlocked(_Memslot):
    """zap-slot without taking mmu_lock: races every vCPU fault."""

    name = "zaps-unlocked"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        mmu.zap_gfn_range(slot.base_gfn, slot.end_gfn)
        mmu.zap_pages(mmu.pages_with_gfn_in(slot))
        mmu.commit_zap_page()
        return True


class DropsSptesNotRmaps(_Memslot):
    """Clears the slot's leaf sptes (``mmu_spte_clear_no_track``) without
    ``pte_list_remove``: rmaps still count sptes that are gone."""

    name = "drops-sptes-not-rmaps"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            for sp in mmu.leaf_sps_mapping(slot.base_gfn, slot.end_gfn):
                base = int(mmu.sp_map_base[sp])
                lo = max(slot.base_gfn, base) - base
                hi = min(slot.end_gfn, base + mmu.sp_sptes.shape[1]) - base
                mmu.sp_nr[sp] -= int(mmu.sp_sptes[sp, lo:hi].sum())
                mmu.sp_sptes[sp, lo:hi] = False
            mmu.zap_pages(mmu.pages_with_gfn_in(slot))
            kvm.flush_remote_tlbs()
        return True


class ZapAllNoCommit(_Memslot):
    """``kvm_mmu_zap_all`` without ``kvm_mmu_commit_zap_page``: no flush, ever."""

    name = "zap-all-no-commit"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm.mmu.zap_pages(kvm.mmu.active_mmu_pages(), lock_break=True)
        return True


class _FastInvalidate(_Memslot):
    def invalidate(self, kvm: Kvm[ShadowMmu], *, reload: bool, clear_lpage: bool) -> None:
        mmu = kvm.mmu
        mmu.mmu_valid_gen += 1
        if clear_lpage:
            mmu.kvm_clear_all_lpage_info()
        if reload:
            kvm.reload_remote_mmus()


class NoReload(_FastInvalidate):
    """Fast invalidate without ``kvm_reload_remote_mmus``: vCPUs run on obsolete roots."""

    name = "no-reload"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            self.invalidate(kvm, reload=False, clear_lpage=True)
            mmu.zap_pages(mmu.active_mmu_pages()[::-1], where=mmu.is_obsolete, lock_break=True)
            mmu.commit_zap_page()
        return True


class GenBumpOnly(_FastInvalidate):
    """Fast invalidate that never zaps the obsolete sps: they keep mapping the slot."""

    name = "gen-bump-only"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            self.invalidate(kvm, reload=True, clear_lpage=True)
            kvm.mmu.commit_zap_page()
        return True


class LpageReset(_FastInvalidate):
    """Fast invalidate that zeroes lpage_info's counts by hand instead of
    ``kvm_clear_all_lpage_info``: obsolete sps stay accounted and unaccount again."""

    name = "lpage-reset"

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            self.invalidate(kvm, reload=True, clear_lpage=False)
            mmu.lpage_disallow[:] = np.zeros_like(mmu.lpage_disallow)
            mmu.zap_pages(mmu.active_mmu_pages()[::-1], where=mmu.is_obsolete, lock_break=True)
            mmu.commit_zap_page()
        return True


class ZapsLeafLevelOnly(_Memslot):
    """zap-slot on the legacy MMU with EPT whose rmap walk covers only the 4 KiB heads
    (``slot_handle_leaf`` instead of ``slot_handle_all_level``): the slot's 2 MiB and 1 GiB
    sptes stay, and with them the mappings of a deleted slot."""

    name = "zaps-leaf-level-only"
    archs = ("x86-ept",)

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[ShadowMmu], slot: Memslot) -> bool:
        mmu = kvm.mmu
        with kvm.mmu_lock:
            kvm.mmu_lock.work(np.full(slot.npages, kvm.costs.rmap_walk), False)
            mmu._zap_rmapp(slot.base_gfn, slot.end_gfn)
            mmu.commit_zap_page()
        return True


class FastZapNoReload(_Memslot):
    """``kvm_mmu_zap_all_fast`` on the TDP MMU without
    ``kvm_make_all_cpus_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)``: vCPUs stay on the
    invalidated roots, which are then torn down under them."""

    name = "fast-zap-no-reload"
    archs = ("x86-tdp",)

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm.mmu.kvm_tdp_mmu_invalidate_all_roots()
        with kvm.mmu_lock.read_lock():
            kvm.mmu.kvm_tdp_mmu_zap_invalidated_roots(lock_break=True)
        return True


class FastZapKeepsInvalidRoots(_Memslot):
    """``kvm_mmu_zap_all_fast`` that invalidates the roots and asks for the reload but
    never calls ``kvm_tdp_mmu_zap_invalidated_roots``: the old tree, with the deleted
    slot's mappings, is never torn down."""

    name = "fast-zap-keeps-invalid-roots"
    archs = ("x86-tdp",)

    @hookimpl
    def mmbench_flush_shadow_memslot(self, kvm: Kvm[RegionMmu], slot: Memslot) -> bool:
        with kvm.mmu_lock:
            kvm.mmu.kvm_tdp_mmu_invalidate_all_roots()
            kvm.reload_remote_mmus()
        return True


MUTANTS = (
    ForgetsZap,
    NeverFlushes,
    FlushesBeforeZap,
    FlushesAtEnd,
    OffByOne,
    SkipsShadowedTables,
    ZapsUnlocked,
    DropsSptesNotRmaps,
    ZapAllNoCommit,
    NoReload,
    GenBumpOnly,
    LpageReset,
    ZapsLeafLevelOnly,
    FastZapNoReload,
    FastZapKeepsInvalidRoots,
)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    for cls in MUTANTS:
        register(cls)
