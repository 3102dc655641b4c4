"""The shadow MMU's correctness oracle (run by the ``invariants`` monitor).

After a memslot delete or move completes, the slot's rmaps are gone, so:
* no spte (reachable or not) may map a gfn that no live memslot backs;
* no sp may shadow a guest table in such a gfn (direct sps shadow none: role.direct);
* with huge leaves (direct maps), the 2 MiB / 1 GiB rmaps match the huge sptes, each
  of which maps only gfns a live memslot backs;
* every vCPU runs on a root of the current generation, or has a reload pending;
* no zapped spte may still sit in a TLB: the remote flush must have happened;
* rmaps and per-sp spte counts agree with the sptes themselves;
* a linked sp and its parent are both live;
* each 2 MiB region's lpage_info disallow count is the number of sps accounted in it
  (``account_shadowed``; ``kvm_clear_all_lpage_info`` resets both);
* the live sp count matches ``n_used_mmu_pages`` and stays within ``n_max_mmu_pages``
  (also checked after every reclaim at the limit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mmbench.errors import InvariantViolation
from mmbench.model.shadow.guest_tables import LEVEL_SHIFT

if TYPE_CHECKING:
    from mmbench.model.shadow.mmu import ShadowMmu
    from mmbench.model.vcpu import Vcpu


def check_shadow_mmu(mmu: ShadowMmu, when: str, memslots: bool = True) -> None:
    """Raise ``InvariantViolation`` on the first broken invariant; ``memslots=False``
    skips the stale-gfn checks (a memslot flush may be in progress, its lock broken)."""
    kvm = mmu.kvm
    n = mmu.n
    alive = mmu.sp_alive[:n]
    leaves = np.flatnonzero(alive & (mmu.sp_level[:n] == 1))
    rows, cols = np.nonzero(mmu.sp_sptes[leaves])
    gfns = mmu.sp_map_base[leaves][rows] + cols

    def fail(msg: str) -> None:
        raise InvariantViolation(f"after {when}: {msg}")

    usable = np.where(alive & ~mmu.sp_invalid[:n], mmu.sp_gen[:n], -1)
    bad = np.flatnonzero(usable != mmu.sp_usable_gen[:n])
    if len(bad):
        fail(f"sp {int(bad[0])}: sp_usable_gen disagrees with its alive/invalid/gen state")
    # a zap unlinks both ways, so a linked sp and its parent are alive (which lets
    # ``prepare_zap_page`` look for children only from the oldest live sp's row on)
    par = mmu.sp_parent[:n]
    linked = np.flatnonzero(par >= 0)
    bad = linked[~alive[linked] | ~alive[par[linked]]]
    if len(bad):
        fail(f"sp {int(bad[0])} is linked to sp {int(par[bad[0]])}, but one of them is freed")
    counted = np.bincount(gfns, minlength=mmu.max_gfn)
    bad = np.flatnonzero(counted != mmu.rmap_count)
    if len(bad):
        g = int(bad[0])
        fail(f"rmap of gfn 0x{g:x} counts {mmu.rmap_count[g]} sptes, {counted[g]} exist")
    per_sp = mmu.sp_sptes[leaves].sum(axis=1)
    wrong = leaves[per_sp != mmu.sp_nr[leaves]]
    if len(wrong):
        fail(f"sp {wrong[0]} counts {mmu.sp_nr[wrong[0]]} sptes, has {per_sp[leaves == wrong[0]]}")
    accounted = mmu.sp_gfn[:n][mmu.sp_accounted[:n]] >> LEVEL_SHIFT
    disallow = np.bincount(accounted, minlength=len(mmu.lpage_disallow))
    bad = np.flatnonzero(disallow != mmu.lpage_disallow)
    if len(bad):
        r = int(bad[0])
        fail(
            f"lpage_info of gfn 0x{r << LEVEL_SHIFT:x} counts {mmu.lpage_disallow[r]} sps, "
            f"{disallow[r]} are accounted"
        )
    live = kvm.memslots.live_mask() if memslots else np.ones(mmu.max_gfn, dtype=bool)
    stale = gfns[~live[gfns]]
    if len(stale):
        sp = leaves[rows[~live[gfns]][0]]
        fail(f"sp {sp} still maps gfn 0x{int(stale[0]):x}, which no live memslot backs")
    if mmu.huge_leaves:
        _check_huge_leaves(mmu, live, fail)
    # a root still in use that was invalidated (role.invalid) or made obsolete is freed
    # when its last vCPU reloads: legitimate while every vCPU on it has a reload pending
    unreloaded = [int(mmu.vcpu_root[v.id]) for v in kvm.vcpus if not reload_pending(v)]
    leaving = alive & (mmu.sp_root_count[:n] > 0)
    leaving &= mmu.sp_invalid[:n] | (mmu.sp_gen[:n] != mmu.mmu_valid_gen)
    leaving[[r for r in unreloaded if 0 <= r < n]] = False
    shadowed = mmu.sp_gfn[:n][alive & ~leaving]
    if not mmu.direct and len(shadowed) and not live[shadowed].all():
        fail(f"an sp shadows gfn 0x{int(shadowed[~live[shadowed]][0]):x} outside every memslot")
    for vcpu in kvm.vcpus:
        root = int(mmu.vcpu_root[vcpu.id])
        if root >= 0 and not mmu.root_usable(vcpu.id) and not reload_pending(vcpu):
            fail(f"vcpu {vcpu.id} runs on obsolete or invalid root sp {root} with no reload")
    if mmu.tlbs_dirty and not kvm.mmu_lock.held_elsewhere():  # else: it flushes first
        fail("sptes were zapped but remote TLBs were not flushed")
    used = int(alive.sum())
    if mmu.n_used_mmu_pages != used:
        fail(f"n_used_mmu_pages is {mmu.n_used_mmu_pages} but {used} sps are live")
    if mmu.n_max_mmu_pages and used > mmu.n_max_mmu_pages:
        fail(f"{used} sps live, over n_max_mmu_pages {mmu.n_max_mmu_pages}")


def _check_huge_leaves(mmu: ShadowMmu, live: np.ndarray, fail) -> None:
    """2 MiB / 1 GiB leaves: rmaps agree, per-sp counts include them, all gfns live."""
    n = mmu.n
    up = np.flatnonzero(mmu.sp_alive[:n] & (mmu.sp_level[:n] > 1))
    rows, _, gfns = mmu.huge_leaf_gfns(up)
    lv = mmu.sp_level[up][rows]
    for level, rmap, shift in ((2, mmu.rmap_2m, LEVEL_SHIFT), (3, mmu.rmap_1g, 2 * LEVEL_SHIFT)):
        counted = np.bincount(gfns[lv == level] >> shift, minlength=len(rmap))
        bad = np.flatnonzero(counted != rmap)
        if len(bad):
            f = int(bad[0])
            fail(
                f"level-{level} rmap of gfn 0x{f << shift:x} counts {rmap[f]} sptes,"
                f" {counted[f]} exist"
            )
    for g, level in zip(gfns.tolist(), lv.tolist(), strict=True):
        span = 1 << (LEVEL_SHIFT * (level - 1))
        if not live[g : g + span].all():
            fail(f"a level-{level} huge spte maps gfn 0x{g:x}+{span}, not all in a live memslot")
    # sp_nr of an upper sp: linked children plus huge leaves
    par = mmu.sp_parent[:n]
    children = np.bincount(par[mmu.sp_alive[:n] & (par >= 0)], minlength=n)
    want = children[up] + mmu.sp_sptes[up].sum(axis=1)
    wrong = up[want != mmu.sp_nr[up]]
    if len(wrong):
        fail(f"sp {wrong[0]} counts {mmu.sp_nr[wrong[0]]} children and huge sptes")


def reload_pending(vcpu: Vcpu) -> bool:
    """``KVM_REQ_MMU_RELOAD`` is set, or taken and the vCPU waits for mmu_lock to unload."""
    return vcpu.request_reload or vcpu.reloading


def check_host_unmapped(mmu: ShadowMmu, when: str, gfn0: int, gfn1: int) -> None:
    """Once an MMU-notifier invalidation of ``[gfn0, gfn1)`` has ended, no spte maps those
    gfns: the host may have freed the pages, and a fault that raced the invalidation must
    have retried (``mmu_invalidate_retry_gfn``) rather than map the old page."""
    mapped = np.flatnonzero(mmu.rmap_count[gfn0:gfn1])
    if len(mapped):
        raise InvariantViolation(
            f"after {when}: an spte still maps gfn 0x{gfn0 + int(mapped[0]):x}, whose host"
            " page the MMU notifier invalidated"
        )
