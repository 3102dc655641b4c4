"""Monitor ``invariants``: the correctness oracle, checked after every invalidation.

After a memslot delete or move completes, the slot's rmaps are gone, so:
* no spte (reachable or not) may map a gfn that no live memslot backs;
* no sp may shadow a guest table in such a gfn;
* every vCPU runs on a root of the current generation, or has a reload pending;
* no zapped spte may still sit in a TLB: the remote flush must have happened;
* rmaps and per-sp spte counts agree with the sptes themselves;
* the live sp count matches ``n_used_mmu_pages`` and stays within ``n_max_mmu_pages``
  (also checked after every reclaim at the limit).
"""

from __future__ import annotations

import numpy as np

from mmbench.errors import InvariantViolation
from mmbench.host.hookspecs import hookimpl
from mmbench.model.memslots import KVM_MEM_LOG_DIRTY_PAGES


def check_shadow_mmu(kvm, when: str, memslots: bool = True) -> None:
    """Raise on the first broken invariant; ``memslots=False`` skips the stale-gfn checks
    (a memslot flush may be in progress, its lock broken)."""
    mmu = kvm.mmu
    n = mmu.n
    alive = mmu.sp_alive[:n]
    leaves = np.flatnonzero(alive & (mmu.sp_level[:n] == 1))
    rows, cols = np.nonzero(mmu.sp_sptes[leaves])
    gfns = mmu.sp_map_base[leaves][rows] + cols

    def fail(msg: str) -> None:
        raise InvariantViolation(f"after {when}: {msg}")

    counted = np.bincount(gfns, minlength=mmu.max_gfn)
    bad = np.flatnonzero(counted != mmu.rmap_count)
    if len(bad):
        g = int(bad[0])
        fail(f"rmap of gfn 0x{g:x} counts {mmu.rmap_count[g]} sptes, {counted[g]} exist")
    per_sp = mmu.sp_sptes[leaves].sum(axis=1)
    wrong = leaves[per_sp != mmu.sp_nr[leaves]]
    if len(wrong):
        fail(f"sp {wrong[0]} counts {mmu.sp_nr[wrong[0]]} sptes, has {per_sp[leaves == wrong[0]]}")
    live = kvm.memslots.live_mask() if memslots else np.ones(mmu.max_gfn, dtype=bool)
    stale = gfns[~live[gfns]]
    if len(stale):
        sp = leaves[rows[~live[gfns]][0]]
        fail(f"sp {sp} still maps gfn 0x{int(stale[0]):x}, which no live memslot backs")
    shadowed = mmu.sp_gfn[:n][alive]
    if len(shadowed) and not live[shadowed].all():
        fail(f"an sp shadows gfn 0x{int(shadowed[~live[shadowed]][0]):x} outside every memslot")
    for vcpu in kvm.vcpus:
        root = int(mmu.vcpu_root[vcpu.id])
        if getattr(vcpu, "reloading", False):
            continue  # took the reload request, waits for mmu_lock to unload
        if root >= 0 and not mmu.root_usable(vcpu.id) and not vcpu.request_reload:
            fail(f"vcpu {vcpu.id} runs on obsolete or invalid root sp {root} with no reload")
    if mmu.tlbs_dirty:
        fail("sptes were zapped but remote TLBs were not flushed")
    used = int(alive.sum())
    if getattr(mmu, "n_used_mmu_pages", used) != used:
        fail(f"n_used_mmu_pages is {mmu.n_used_mmu_pages} but {used} sps are live")
    if getattr(mmu, "n_max_mmu_pages", 0) and used > mmu.n_max_mmu_pages:
        fail(f"{used} sps live, over n_max_mmu_pages {mmu.n_max_mmu_pages}")


def check_mmu(kvm, when: str, gfns: tuple[int, int] | None = None) -> None:
    """The arch MMU's own oracle if it has one (``RegionMmu``; it may check only the
    ``gfns`` an operation touched), else the shadow MMU's."""
    own = getattr(kvm.mmu, "check_invariants", None)
    if own is not None:
        own(when, *(gfns or ()))
    else:
        check_shadow_mmu(kvm, when)


class Invariants:
    """Raises ``InvariantViolation`` the moment a policy leaves a stale mapping behind."""

    name = "invariants"
    description = "correctness oracle: no stale spte, sp or root after an invalidation"

    def __init__(self) -> None:
        self.checks = 0

    @hookimpl
    def mmbench_memslot_deleted(self, kvm, slot, change):
        check_mmu(kvm, f"memslot {change} of {slot}")
        self.checks += 1

    @hookimpl
    def mmbench_memslot_flags_changed(self, kvm, slot, old):
        """After dirty logging starts or stops: no writable spte maps an unlogged page."""
        on = "on" if slot.flags & KVM_MEM_LOG_DIRTY_PAGES else "off"
        check_mmu(kvm, f"dirty logging {on} for {slot}")
        self.checks += 1

    @hookimpl
    def mmbench_dirty_log_cleared(self, kvm, slot, first_page, npages):
        gfn0 = slot.base_gfn + first_page
        check_mmu(
            kvm, f"dirty-log clear of {slot} pages {first_page}+{npages}", (gfn0, gfn0 + npages)
        )
        self.checks += 1

    @hookimpl
    def mmbench_mmu_pages_reclaimed(self, kvm, zapped):
        flushing = any(s.invalid for s in kvm.memslots.slots.values())
        check_shadow_mmu(kvm, f"reclaim of {zapped} sps", memslots=not flushing)
        self.checks += 1

    @hookimpl
    def mmbench_vm_destroyed(self, kvm):
        mmu = kvm.mmu
        left = mmu.nr_mapped() if hasattr(mmu, "nr_mapped") else mmu.nr_live_sps()
        if left:
            raise InvariantViolation(f"after teardown: {left} mappings still live")
        if getattr(mmu, "tlbs_dirty", False):
            raise InvariantViolation("after teardown: zapped sptes were never flushed")
        self.checks += 1


@hookimpl
def mmbench_register_monitors(register):
    register(Invariants)
