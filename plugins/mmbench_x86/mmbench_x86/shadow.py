"""Arch backend ``x86-shadow``: shadow paging (no EPT/NPT, or ``tdp_mmu=N`` nested).

A vCPU access runs natively where a reachable leaf sp maps the page. Anything else is a
shadow page fault: walk the guest tables, find or allocate the sps on the path
(``kvm_mmu_get_page``), link them, and install the faulting spte plus its aligned group
of ``PTE_PREFETCH_NUM`` neighbours (``FNAME(pte_prefetch)``), all under mmu_lock.

Faults are handled in batches of up to ``FAULT_REGIONS`` 2 MiB regions per mmu_lock
acquisition: when vCPUs contend the lock is saturated either way, so waiting per batch
equals waiting per fault in total, and the model stays fast.
"""

from __future__ import annotations

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.shadow.guest_tables import (
    LEVEL_SHIFT,
    PTES_PER_TABLE,
    build_identity_page_tables,
)
from mmbench.model.shadow.mmu import KVM_MIN_FREE_MMU_PAGES, ShadowMmu
from mmbench.model.vcpu import Vcpu
from mmbench_x86.costs import X86_SHADOW_BARE_METAL

PTE_PREFETCH_NUM = 8  # sptes fetched per fault on the measured host
FAST_REGIONS = 64  # fault-free regions run per engine step
FAULT_REGIONS = 8  # regions faulted per mmu_lock acquisition
GUEST_LEVELS = 4  # build_identity_page_tables(): 4-level guest tables


class X86Shadow:
    """x86 shadow MMU: sps shadow guest page tables, leaf sptes live in rmaps."""

    name = "x86-shadow"
    description = "x86 shadow paging (no EPT/NPT): sps, rmaps, mmu_valid_gen, 4 KiB sptes"
    costs = X86_SHADOW_BARE_METAL
    max_guest_bytes = 1 << 40  # per-gfn rmap counts: 2 bytes per 4 KiB of guest memory

    # -- building the VM -----------------------------------------------------------------
    def setup(self, kvm: Kvm, areas_per_vcpu: list[list[tuple[int, int]]], pt_gfn: int) -> None:
        """Build the guest's page tables (pages from ``pt_gfn`` on) and the MMU state."""
        gpt = build_identity_page_tables(areas_per_vcpu, pt_gfn)
        kvm.mmu = ShadowMmu(kvm, gpt, kvm.memslots.max_gfn, len(kvm.vcpus))

    @staticmethod
    def page_table_pages(areas_per_vcpu: list[list[tuple[int, int]]]) -> int:
        """How many guest page-table pages the layout needs (to reserve guest RAM)."""
        return build_identity_page_tables(areas_per_vcpu, 0).count

    # -- guest accesses ------------------------------------------------------------------
    def touch(self, kvm: Kvm, vcpu: Vcpu, gfn0: int, gfn1: int, write: bool) -> None:
        mmu: ShadowMmu = kvm.mmu
        area = mmu.gpt.area_of(int(mmu.vcpu_process[vcpu.id]), gfn0)
        if gfn1 > area.gfn1:
            raise ValueError(f"vcpu {vcpu.id}: [0x{gfn0:x}, 0x{gfn1:x}) leaves its mapped area")
        g = gfn0
        last_region = ((gfn1 - 1) >> LEVEL_SHIFT) + 1
        while g < gfn1:
            vcpu.check_requests()
            r0 = g >> LEVEL_SHIFT
            regions = np.arange(r0, min(last_region, r0 + FAST_REGIONS))
            leaves = mmu.reachable_leaves(vcpu.id, area.first_l1 + regions - area.region0)
            full = (leaves >= 0) & (mmu.sp_nr[np.maximum(leaves, 0)] == PTES_PER_TABLE)
            nfull = len(full) if full.all() else int(np.argmin(full))
            if nfull:
                end = min(int(regions[nfull - 1] + 1) << LEVEL_SHIFT, gfn1)
                g = self._run_mapped(kvm, vcpu, g, end, leaves[:nfull])
            else:
                end = min((r0 + FAULT_REGIONS) << LEVEL_SHIFT, gfn1)
                g = self._fault(kvm, vcpu, area, g, end)

    def _run_mapped(self, kvm: Kvm, vcpu: Vcpu, g: int, end: int, leaves: np.ndarray) -> int:
        """Run natively over mapped pages; a kick (IPI) stops the run early."""
        kvm.mmu.mark_accessed(leaves)
        per_page = kvm.costs.touch_page
        total = (end - g) * per_page
        vcpu.in_guest = True
        slept = kvm.engine.sleep_interruptible(total, lambda now: now)
        vcpu.in_guest = False
        if slept >= int(total):
            return end
        vcpu.stats["exits"] += 1
        return g + int(slept // per_page)

    def _fault(self, kvm: Kvm, vcpu: Vcpu, area, g: int, end: int) -> int:
        """Shadow page faults over ``[g, end)``: one mmu_lock section for the batch."""
        mmu: ShadowMmu = kvm.mmu
        c = kvm.costs
        r0, r1 = g >> LEVEL_SHIFT, ((end - 1) >> LEVEL_SHIFT) + 1
        gfns = np.arange(r0 << LEVEL_SHIFT, r1 << LEVEL_SHIFT)
        in_range = (gfns >= g) & (gfns < end)
        want = (in_range & kvm.memslots.backed(gfns[0], gfns[-1] + 1)).reshape(-1, PTES_PER_TABLE)
        touched = want.any(axis=1)
        l1 = (area.first_l1 + np.arange(r0, r1) - area.region0)[touched]
        want = want[touched]
        faults = installed = new_sps = 0
        with kvm.mmu_lock:
            if mmu.n_max_mmu_pages:
                self._make_room(mmu, vcpu.id, l1)
            if not mmu.root_usable(vcpu.id):
                mmu.kvm_mmu_unload(vcpu.id)
                new_sps += mmu.mmu_alloc_root(vcpu.id)
            if len(l1):
                parent_gpts = mmu.gpt.parent[l1]
                path: dict[int, int] = {}
                for pg in set(parent_gpts.tolist()):
                    path[pg], allocated = mmu.ensure_path(vcpu.id, pg)
                    new_sps += allocated
                parents = np.array([path[pg] for pg in parent_gpts.tolist()], dtype=np.int32)
                leaves, allocated = mmu.kvm_mmu_get_pages(l1)
                new_sps += allocated
                mmu.link_shadow_pages(leaves, parents)
                # a fault on any missing spte fetches its aligned group (pte_prefetch)
                missing = want & ~mmu.sp_sptes[leaves]
                groups = missing.reshape(len(l1), -1, PTE_PREFETCH_NUM).any(axis=2)
                faults = int(groups.sum())
                fill = want & np.repeat(groups, PTE_PREFETCH_NUM, axis=1)
                installed = mmu.map_leaf_sptes(leaves, fill)
                mmu.mark_accessed(leaves)
            kvm.charge(faults * c.fault_locked + installed * c.spte_install + new_sps * c.sp_alloc)
        nbacked = int(want.sum())
        mmio = int(in_range.sum()) - nbacked
        kvm.charge(faults * c.fault_exit + nbacked * c.touch_page + mmio * c.mmio_exit)
        st = vcpu.stats
        st["pf_taken"] += faults
        st["pf_fixed"] += faults
        st["mmio_exits"] += mmio
        st["exits"] += faults + mmio
        if mmu.trace and faults:
            kvm.stats.series["pf_fixed"].append((kvm.now, kvm.stats.vcpu_total("pf_fixed")))
        if kvm.trace_faults and faults:
            kvm.hook.mmbench_page_fault(kvm=kvm, vcpu=vcpu, gfn=g, npages=end - g, faults=faults)
        return end

    @staticmethod
    def _make_room(mmu: ShadowMmu, vcpu: int, l1: np.ndarray) -> None:
        """``make_mmu_pages_available()`` before the batch allocates. The kernel checks
        before each fault; a batch stands for several, so ask for room for every sp its
        paths still lack (recounted, as reclaim may zap some of them)."""
        parents = set(mmu.gpt.parent[l1].tolist())
        upper = 1 + len(l1) + len(parents) * GUEST_LEVELS  # root, leaves, tables above
        if mmu.n_max_mmu_pages - mmu.n_used_mmu_pages >= upper + KVM_MIN_FREE_MMU_PAGES:
            return  # the kernel would not reclaim during these faults either
        gpts = {int(mmu.gpt.roots[mmu.vcpu_process[vcpu]]), *l1.tolist()}
        for pg in parents:
            gpts.update(mmu.gpt.path(pg))
        path = np.fromiter(gpts, dtype=np.int64, count=len(gpts))
        while mmu.make_mmu_pages_available(int((~mmu.valid(mmu.gpt_sp[path])).sum())):
            pass

    # -- the default reclaim policy and VM teardown (a policy may override) -----------------
    @hookimpl
    def mmbench_reclaim(self, kvm: Kvm, nr_to_zap: int) -> np.ndarray:
        """FIFO: zap from the tail of ``active_mmu_pages``, roots in use included, as KVM
        did in 2009 (seed 004). Current kernels also skip roots in use (``skip-roots``)."""
        return kvm.mmu.oldest_mmu_pages(nr_to_zap)

    # -- default for VM teardown (a policy may override) ---------------------------------
    @hookimpl
    def mmbench_flush_shadow_all(self, kvm: Kvm) -> bool:
        """``kvm_mmu_zap_all`` at destroy: no vCPU runs, so no lock-break is needed."""
        with kvm.mmu_lock:
            kvm.mmu.zap_pages(kvm.mmu.active_mmu_pages())
            kvm.mmu.commit_zap_page()
        return True
