"""The shadow MMU's fault path: what a vCPU access does.

A vCPU access runs natively where a reachable leaf sp maps the page. Anything else is a
shadow page fault (``FNAME(page_fault)``): walk the guest tables, find or allocate the sps
on the path (``kvm_mmu_get_page``), link them (``link_shadow_page``), and install the
faulting spte plus its aligned group of ``pte_prefetch_num`` neighbours
(``FNAME(pte_prefetch)``), all under mmu_lock. Roots: ``mmu_alloc_roots`` on entry,
``kvm_mmu_unload`` on reload, ``kvm_mmu_new_cr3`` when the guest switches process.

Faults are handled in batches of up to ``FAULT_REGIONS`` 2 MiB regions per mmu_lock
acquisition (one region where the guest's ptes are not yet accessed, each page a fault
of its own): when vCPUs contend the lock is saturated either way, so waiting per batch
equals waiting per fault in total, and the model stays fast.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from mmbench.model.shadow.guest_tables import LEVEL_SHIFT, PTES_PER_TABLE, Area, GuestPageTables
from mmbench.model.shadow.reclaim import KVM_MIN_FREE_MMU_PAGES, ShadowReclaim
from mmbench.model.shadow.sps import scatter_add
from mmbench.model.vcpu import GuestShutdown

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm
    from mmbench.model.memslots import Memslots
    from mmbench.model.vcpu import Vcpu

FAST_REGIONS = 64  # fault-free regions run per engine step
FAULT_REGIONS = 8  # regions faulted per mmu_lock acquisition


def group_any(mask: np.ndarray, n: int) -> np.ndarray:
    """Per row of ``mask`` (rows of 512 bools), whether each aligned group of ``n`` has a
    bit set. Eight bools are one 64-bit word, so for x86's ``PTE_PREFETCH_NUM`` (8) the
    test is a compare per word."""
    if n == 8 and mask.flags.c_contiguous:
        return mask.view(np.uint64) != 0
    return mask.reshape(len(mask), -1, n).any(axis=2)


@functools.cache
def _all_wanted(regions: int) -> np.ndarray:
    """A batch's ``want`` when it wants every page (read-only, shared)."""
    want = np.ones((regions, PTES_PER_TABLE), dtype=bool)
    want.flags.writeable = False
    return want


class FaultBatch:
    """The pages one fault batch ``[g, end)`` covers, as rows of its 2 MiB regions.

    ``regions`` are the regions with a touched page (all of them but for a batch that
    ends inside a partly touched one), ``want`` (one 512-wide row per such region) the
    touched pages a memslot backs. Per-gfn arrays are read and written through ``rows``
    and ``set_rows``: slices of the batch's contiguous gfns, no index arrays.
    """

    __slots__ = ("gfn0", "gfn1", "r0", "regions", "want", "whole", "_touched")

    def __init__(self, g: int, end: int, memslots: Memslots) -> None:
        r0, r1 = g >> LEVEL_SHIFT, ((end - 1) >> LEVEL_SHIFT) + 1
        self.r0 = r0
        self.gfn0, self.gfn1 = r0 << LEVEL_SHIFT, r1 << LEVEL_SHIFT
        self._touched: np.ndarray | None = None
        self.regions = np.arange(r0, r1)
        # whole: every page of every region wanted (the common batch: aligned regions
        # inside one memslot), which lets the fault path skip per-page masks
        self.whole = g == self.gfn0 and end == self.gfn1 and memslots.covers(g, end)
        if self.whole:
            self.want = _all_wanted(r1 - r0)
            return
        backed = memslots.backed(self.gfn0, self.gfn1)
        if g > self.gfn0:
            backed[: g - self.gfn0] = False
        if end < self.gfn1:
            backed[end - self.gfn0 :] = False
        want = backed.reshape(-1, PTES_PER_TABLE)
        self.want = want
        if not want.all():  # a region without a wanted page gets no sp
            touched = want.any(axis=1)
            if not touched.all():
                self._touched = touched
                self.regions = self.regions[touched]
                self.want = want[touched]

    def rows(self, per_gfn: np.ndarray, offset: int = 0) -> np.ndarray:
        """``per_gfn`` over the batch's regions, one row per region in ``regions``;
        ``offset``: the gfn ``per_gfn[0]`` stands for (0: indexed by gfn)."""
        a = self.gfn0 - offset
        m = per_gfn[a : a + self.gfn1 - self.gfn0].reshape(-1, PTES_PER_TABLE)
        return m if self._touched is None else m[self._touched]

    def set_rows(self, per_gfn: np.ndarray, mask: np.ndarray) -> None:
        """Set ``per_gfn`` (a bool per gfn) where ``mask`` (rows as ``rows`` returns them)
        is set; the other bits stay as they are now."""
        m = per_gfn[self.gfn0 : self.gfn1].reshape(-1, PTES_PER_TABLE)
        if self.whole:
            m[:] = True
        elif self._touched is None:
            m |= mask
        else:
            m[self._touched] |= mask

    def all_regions(self) -> bool:
        """Every region of ``[gfn0, gfn1)`` is in ``regions`` (rows are the whole range)."""
        return self._touched is None

    def gfns(self, mask: np.ndarray) -> np.ndarray:
        """The gfns of the pages set in ``mask`` (rows as ``rows`` returns them)."""
        r, col = np.nonzero(mask)
        return ((self.regions[r] << LEVEL_SHIFT) + col).astype(np.int64)

    def nbacked(self) -> int:
        """Touched pages a memslot backs (the rest are MMIO exits)."""
        if self.whole:
            return self.gfn1 - self.gfn0
        return int(np.count_nonzero(self.want))


class ShadowFault(ShadowReclaim):
    """Building sps and sptes: the page fault, its prefetch, and root loading."""

    def __init__(
        self,
        kvm: Kvm,
        gpt: GuestPageTables,
        max_gfn: int,
        nr_vcpus: int,
        *,
        pte_prefetch_num: int,
    ) -> None:
        super().__init__(kvm, gpt, max_gfn, nr_vcpus)
        self.pte_prefetch_num = pte_prefetch_num  # the arch's PTE_PREFETCH_NUM
        # the VMM wrote the guest's page tables (its image): their host pages exist
        kvm.host_memory.fault_in(gpt.gfn)
        # the Accessed bit of the guest pte of each gfn (the guest maps its areas 1:1, so
        # one bit per gfn; processes that map the same gfn share it). A fresh guest's
        # ptes have it clear; the fault path's walk sets it on the faulting gpte
        # (FNAME(update_accessed_dirty_bits)), and prefetch skips gptes without it
        # (FNAME(prefetch_invalid_gpte)), so a first pass faults once per page.
        self.gpte_accessed = np.zeros(max_gfn, dtype=bool)
        self._tables_checked_for: tuple | None = None  # memslot layout of the last check
        self._tables_visible = False

    # -- sps and links ---------------------------------------------------------------------
    def kvm_mmu_get_pages(self, gpts: np.ndarray) -> tuple[np.ndarray, int]:
        """``kvm_mmu_get_page`` for each gpt: the valid sp shadowing it, allocating the
        missing ones (``mmu_cache_miss``); obsolete and invalid sps are never reused.
        Returns (sps, number allocated)."""
        sps = self.gpt_sp[gpts]
        need = ~self.valid(sps)
        k = int(np.count_nonzero(need))
        if not k:
            return sps, 0
        if k == len(gpts):
            if k == 1:  # (a batch of one region: scalars cost less than arrays)
                a = self._alloc_sps(int(gpts[0]))
                return np.arange(a, a + 1, dtype=np.int32), 1
            return self._alloc_sps(gpts), k
        sps = sps.copy()
        sps[need] = self._alloc_sps(gpts[need])
        return sps, k

    def _alloc_sps(self, gpts: np.ndarray | int) -> np.ndarray | int:
        """New sps (the next rows, so a contiguous range of ids) shadowing ``gpts``, in
        the current generation, on the list head. Returns their ids. ``gpts`` may be one
        gpt as an int, which gets its id as an int: the upper levels of a path are
        allocated one at a time, where array calls would cost more than the work."""
        one = not isinstance(gpts, np.ndarray)
        k = 1 if one else len(gpts)
        while self.n + k > self.cap:
            self._grow()
        a = self.n
        b = a + k
        self.n = b
        rows = a if one else slice(a, b)
        gpt_tables = self.gpt
        gen = self.mmu_valid_gen
        self.sp_gfn[rows] = gpt_tables.gfn[gpts]
        self.sp_level[rows] = gpt_tables.level[gpts]
        self.sp_gen[rows] = gen
        self.sp_usable_gen[rows] = gen
        self.sp_alive[rows] = True
        self.n_used_mmu_pages += k
        self._record_used()
        self.sp_map_base[rows] = gpt_tables.map_base[gpts]
        self.sp_accessed[rows] = True
        new = a if one else np.arange(a, b, dtype=np.int32)
        self.gpt_sp[gpts] = new
        if not self.direct:
            # account_shadowed(): the guest table is write-protected; no huge page over
            # it. A direct sp (role.direct) shadows no guest table and accounts nothing.
            if one:
                self.lpage_disallow[int(self.sp_gfn[a]) >> LEVEL_SHIFT] += 1
            else:
                scatter_add(self.lpage_disallow, self.sp_gfn[a:b] >> LEVEL_SHIFT)
            self.sp_accounted[rows] = True
        self.kvm.stats.vm["mmu_cache_miss"] += k
        return new

    def kvm_mmu_get_page(self, gpt: int) -> tuple[int, bool]:
        """``kvm_mmu_get_page`` for one gpt. Returns (sp, allocated)."""
        sp = int(self.gpt_sp[gpt])
        if self.valid1(sp):
            return sp, False
        return self._alloc_sps(gpt), True

    def link_shadow_pages(self, sps: np.ndarray, parents: np.ndarray) -> None:
        """Point each parent's spte at its child sp (``link_shadow_page``); ``parents``
        are sps."""
        old = self.sp_parent[sps]
        if (old < 0).all():  # none linked yet (new sps): every one moves
            self.sp_parent[sps] = parents
            scatter_add(self.sp_nr, parents)
            return
        moved = old != parents
        if not moved.any():
            return
        scatter_add(self.sp_nr, old[moved & (old >= 0)], -1)
        self.sp_parent[sps[moved]] = parents[moved]
        scatter_add(self.sp_nr, parents[moved])

    def link_shadow_page(self, sp: int, parent: int) -> None:
        """``link_shadow_page`` for one sp."""
        old = int(self.sp_parent[sp])
        if old == parent:
            return
        if old >= 0:
            self.sp_nr[old] -= 1
        self.sp_parent[sp] = parent
        self.sp_nr[parent] += 1

    def ensure_path(
        self, vcpu: int, gpt: int, path_sps: list[int] | None = None
    ) -> tuple[int, int]:
        """The upper levels of ``FNAME(fetch)``: find or build, and link, the sps from the
        vCPU's root down to ``gpt`` (appended to ``path_sps``, root first, if given).
        Returns (sp of gpt, sps allocated)."""
        parent, allocated = int(self.vcpu_root[vcpu]), 0
        if path_sps is not None:
            path_sps.append(parent)
        for g in self.gpt.path(gpt)[1:]:
            sp, new = self.kvm_mmu_get_page(g)
            allocated += new
            self.link_shadow_page(sp, parent)
            parent = sp
            if path_sps is not None:
                path_sps.append(sp)
        return parent, allocated

    def map_leaf_sptes(
        self, leaves: np.ndarray | slice, fill: np.ndarray, fresh: bool | None = None
    ) -> int:
        """Install the sptes set in ``fill`` (one 512-wide row per leaf sp; ``leaves``
        may be a slice of sp rows) and add them to the rmaps (``mmu_set_spte`` ->
        ``rmap_add``). Returns how many were new.
        ``fresh``: no leaf has a spte yet, if the caller knows (else it is looked up)."""
        if fresh is None:
            fresh = not self.sp_nr[leaves].any()
        if fresh and fill.all():  # fresh leaf sps, filled whole
            self.sp_sptes[leaves] = True
            self.add_leaf_rmaps(leaves, np.True_, 1)
            self.sp_nr[leaves] += PTES_PER_TABLE
            return len(fill) * PTES_PER_TABLE
        rows = self.sp_sptes[leaves]
        new = fill & ~rows
        per_sp = np.add.reduce(new, axis=1, dtype=np.int32)
        total = int(per_sp.sum())
        if not total:
            return 0
        self.sp_sptes[leaves] = rows | fill
        # distinct leaves map distinct 2 MiB runs
        self.add_leaf_rmaps(leaves, new, 1)
        self.sp_nr[leaves] += per_sp
        return total

    # -- roots ---------------------------------------------------------------------------
    def mmu_alloc_roots(self, vcpu: int) -> int:
        """``mmu_alloc_roots``: load (or build) the root for the vCPU's CR3. Returns the
        sps allocated."""
        sp, new = self.kvm_mmu_get_page(int(self.gpt.roots[self.vcpu_process[vcpu]]))
        self.sp_root_count[sp] += 1
        self.sp_accessed[sp] = True  # a root has no parent_pte: loading CR3 is its access
        self.vcpu_root[vcpu] = sp
        return int(new)

    def kvm_mmu_unload(self, vcpu: int) -> int:
        """Drop the vCPU's root reference; free it if it was zapped while in use."""
        root = int(self.vcpu_root[vcpu])
        self.vcpu_root[vcpu] = -1
        if root < 0:
            return 0
        self.sp_root_count[root] -= 1
        if self.sp_root_count[root] == 0 and self.sp_invalid[root] and self.sp_alive[root]:
            self.sp_alive[root] = False
            self.n_used_mmu_pages -= 1
            self._record_used()
            return 1
        return 0

    def kvm_mmu_reload(self, vcpu: int) -> int:
        """``kvm_mmu_reload``: a vCPU whose root is gone, obsolete or invalid unloads it
        and loads a fresh one (``mmu_alloc_roots``). Returns the sps allocated."""
        if self.root_usable(vcpu):
            return 0
        self.kvm_mmu_unload(vcpu)
        return self.mmu_alloc_roots(vcpu)

    def kvm_mmu_new_cr3(self, vcpu: int, process: int) -> int:
        """The guest switched the vCPU to ``process``'s page tables (a CR3 load):
        ``kvm_mmu_new_cr3`` drops the current root; the next entry loads the new one.
        Returns the sps freed."""
        self.vcpu_process[vcpu] = process
        return self.kvm_mmu_unload(vcpu)

    # -- a vCPU access -------------------------------------------------------------------
    def access(self, vcpu: Vcpu, gfn0: int, gfn1: int, write: bool) -> None:
        """Touch one qword per 4 KiB page of ``[gfn0, gfn1)``: run natively over fully
        mapped 2 MiB regions, take shadow page faults over the rest."""
        area = self.gpt.area_of(int(self.vcpu_process[vcpu.id]), gfn0)
        if gfn1 > area.gfn1:
            raise ValueError(f"vcpu {vcpu.id}: [0x{gfn0:x}, 0x{gfn1:x}) leaves its mapped area")
        g = gfn0
        last_region = ((gfn1 - 1) >> LEVEL_SHIFT) + 1
        while g < gfn1:
            vcpu.check_requests()
            r0 = g >> LEVEL_SHIFT
            l1 = area.first_l1 + r0 - area.region0
            if self._leaf_full(vcpu.id, l1):  # then how many regions after it are too
                regions = np.arange(r0, min(last_region, r0 + FAST_REGIONS))
                leaves = self.reachable_leaves(vcpu.id, l1 + regions - r0)
                full = (leaves >= 0) & (self.sp_nr[np.maximum(leaves, 0)] == PTES_PER_TABLE)
                nfull = len(full) if full.all() else int(np.argmin(full))
            else:
                nfull = 0
            if nfull:
                end = min(int(regions[nfull - 1] + 1) << LEVEL_SHIFT, gfn1)
                g = self._run_native(vcpu, g, end, leaves[:nfull])
            else:
                # a batch stands for its faults' mmu_lock sections; where the gptes are
                # not yet accessed every page is a fault of its own, so take one region
                # at a time there, which keeps a batch near 512 faults either way
                n = FAULT_REGIONS if self.gpte_accessed[g] else 1
                end = min((r0 + n) << LEVEL_SHIFT, gfn1)
                g = self.page_fault(vcpu, area, g, end)

    def _leaf_full(self, vcpu: int, l1: int) -> bool:
        """The leaf sp of gpt ``l1`` maps all 512 pages and is reachable from the vCPU's
        root: ``reachable_leaves`` and the full-row test for one region, on scalars."""
        sp = int(self.gpt_sp[l1])
        return (
            sp >= 0
            and int(self.sp_nr[sp]) == PTES_PER_TABLE
            and self._linked_to(sp, l1, int(self.vcpu_root[vcpu]))
        )

    def _run_native(self, vcpu: Vcpu, g: int, end: int, leaves: np.ndarray) -> int:
        """Run in guest mode over mapped pages; a kick (IPI) stops the run early. Returns
        the gfn the run reached."""
        kvm = self.kvm
        self.mark_accessed(leaves)
        per_page = kvm.costs.touch_page
        total = (end - g) * per_page
        vcpu.in_guest = True
        slept = kvm.engine.sleep_interruptible(total, lambda now: now)
        vcpu.in_guest = False
        if slept >= int(total):
            return end
        vcpu.stats["exits"] += 1
        return g + int(slept // per_page)

    def page_fault(self, vcpu: Vcpu, area: Area, g: int, end: int) -> int:
        """``FNAME(page_fault)`` for every missing spte of ``[g, end)``: one mmu_lock
        section for the batch; gfns no memslot backs are MMIO exits. Returns ``end``."""
        kvm = self.kvm
        c = kvm.costs
        b = self._fault_batch(g, end)
        want = b.want
        l1 = b.regions + (area.first_l1 - area.region0)
        faults = installed = new_sps = 0
        self._walk_guest_tables(vcpu, l1)
        mn = kvm.notifier
        mmu_seq = mn.fault_seq()  # kvm_faultin_pfn: before the pfn lookup
        if mn.in_range(g, end):  # mmu_invalidate_retry_gfn_unsafe: retry without the lock
            mn.retry(vcpu, g, end)
            return g
        absent = self._faultin_host_pages(b)
        accessed = b.rows(self.gpte_accessed)
        if not accessed.all():  # (a warm batch: every gpte accessed, nothing cold)
            cold = ~accessed
            if not b.whole:
                cold &= want
            absent = cold if absent is None else absent | cold
        with kvm.mmu_lock:
            if mn.retry_gfn(mmu_seq, g, end):  # is_page_fault_stale: RET_PF_RETRY
                stale = True
            else:
                stale = False
                if self.n_max_mmu_pages:
                    self._make_pages_available_for(vcpu.id, l1)
                new_sps += self.kvm_mmu_reload(vcpu.id)
                if len(l1):
                    faults, installed, allocated = self._fetch(vcpu.id, l1, want, absent)
                    new_sps += allocated
                    b.set_rows(self.gpte_accessed, want)
            kvm.charge(faults * c.fault_locked + installed * c.spte_install + new_sps * c.sp_alloc)
        if stale:
            mn.retry(vcpu, g, end)
            return g
        return self._fault_exit(vcpu, faults, b.nbacked(), end - g, g, end)

    def _fault_batch(self, g: int, end: int) -> FaultBatch:
        """The 2 MiB regions a batch ``[g, end)`` spans and which of their pages it wants
        (touched and backed by a memslot)."""
        return FaultBatch(g, end, self.kvm.memslots)

    def _fault_exit(
        self, vcpu: Vcpu, faults: int, nbacked: int, touched: int, g: int, end: int
    ) -> int:
        """After the batch's mmu_lock section: the exits (``faults`` page faults, MMIO
        for the touched pages no memslot backs), the pages touched, the vCPU's stats and
        the fault observers. Returns ``end``."""
        kvm, c = self.kvm, self.kvm.costs
        mmio = touched - nbacked
        kvm.charge(faults * c.fault_exit + nbacked * c.touch_page + mmio * c.mmio_exit)
        st = vcpu.stats
        st["pf_taken"] += faults
        st["pf_fixed"] += faults
        st["mmio_exits"] += mmio
        st["exits"] += faults + mmio
        if self.trace and faults:
            kvm.stats.series["pf_fixed"].append((kvm.now, kvm.stats.vcpu_total("pf_fixed")))
        if kvm.trace_faults and faults:
            kvm.hook.mmbench_page_fault(kvm=kvm, vcpu=vcpu, gfn=g, npages=end - g, faults=faults)
        return end

    def _faultin_host_pages(self, b: FaultBatch) -> np.ndarray | None:
        """``kvm_faultin_pfn`` -> ``hva_to_pfn`` before mmu_lock: the wanted pages whose host
        page does not exist yet are faulted in (``host_page_fault`` each, and
        ``host_page_zero`` per 4 KiB cleared). Returns, with 4 KiB host pages, which
        wanted pages were absent (each its own fault: prefetch skips absent pages); None
        when none were, or with huge host pages (one fault-in makes the whole prefetch
        group present)."""
        hm = self.kvm.host_memory
        if hm.all_present(b.gfn0, b.gfn1):
            return None
        absent = b.rows(hm.absent_range(b.gfn0, b.gfn1), offset=b.gfn0)
        if not b.whole:
            absent &= b.want
        if not absent.any():
            return None
        if b.all_regions():
            big, small = hm.fault_in_range(b.gfn0, absent.reshape(-1))
        else:
            big, small = hm.fault_in(b.gfns(absent))
        c = self.kvm.costs
        zeroed = big * hm.pages_per_host_page + small
        self.kvm.charge((big + small) * c.host_page_fault + zeroed * c.host_page_zero)
        if hm.shift:
            absent &= b.rows(hm.small_range(b.gfn0, b.gfn1), offset=b.gfn0)
        return absent if absent.any() else None

    def _walk_guest_tables(self, vcpu: Vcpu, l1: np.ndarray) -> None:
        """Before mmu_lock, the guest's tables must be readable: ``mmu_check_root`` (in
        ``mmu_alloc_shadow_roots``) turns a CR3 outside every visible memslot into
        ``KVM_REQ_TRIPLE_FAULT``; ``FNAME(walk_addr_generic)`` failing on a lower table
        injects a #PF, which a guest whose own tables are gone cannot survive either. So
        a vCPU whose tables left the memslots (their slot deleted) shuts down."""
        if self._all_tables_visible():
            return
        gpts = [int(self.gpt.roots[self.vcpu_process[vcpu.id]])]
        if not self.root_usable(vcpu.id) or len(l1):
            for pg in set(self.gpt.parent[l1].tolist()):
                gpts += self.gpt.path(pg)
            gpts += l1.tolist()
        gfns = self.gpt.gfn[np.asarray(gpts, dtype=np.int64)]
        lo = int(gfns.min())
        if not self.kvm.memslots.backed(lo, int(gfns.max()) + 1)[gfns - lo].all():
            vcpu.shutdown = True
            vcpu.stats["exits"] += 1
            vcpu.stats["shutdowns"] += 1
            raise GuestShutdown(f"vcpu {vcpu.id}: its page tables are outside every memslot")

    def _all_tables_visible(self) -> bool:
        """Every guest page-table page in a visible memslot: then no walk can fail. Only
        a memslot change can alter the answer, so it is kept until the slots change."""
        layout = self.kvm.memslots.layout()
        if layout != self._tables_checked_for:
            g = self.gpt.gfn
            lo = int(g.min())
            self._tables_visible = bool(
                self.kvm.memslots.backed(lo, int(g.max()) + 1)[g - lo].all()
            )
            self._tables_checked_for = layout
        return self._tables_visible

    def _fetch(
        self, vcpu: int, l1: np.ndarray, want: np.ndarray, absent: np.ndarray | None = None
    ) -> tuple[int, int, int]:
        """``FNAME(fetch)`` for the batch (mmu_lock held): the sps of every path, linked,
        then the leaf sptes ``want`` asks for, with their prefetch groups (``absent``: the
        wanted pages prefetch cannot map: a fault each).
        Returns (faults, sptes installed, sps allocated)."""
        new_sps = 0
        parent_gpts = self.gpt.parent[l1]
        path: dict[int, int] = {}
        pgs = parent_gpts.tolist()
        uppers: list[int] = []  # every sp on the paths, root included
        for pg in set(pgs):
            path[pg], allocated = self.ensure_path(vcpu, pg, uppers)
            new_sps += allocated
        leaves, allocated = self.kvm_mmu_get_pages(l1)
        new_sps += allocated
        k = len(leaves)
        if allocated == k and k:
            # every leaf new: rows a..a+k (``_alloc_sps``), unlinked and empty, so
            # ``link_shadow_pages`` and the installs below work on a slice of rows
            a = int(leaves[0])
            rows: np.ndarray | slice = slice(a, a + k)
            if len(path) == 1:  # (one parent table, the common batch)
                p = path[pgs[0]]
                self.sp_parent[rows] = p
                self.sp_nr[p] += k
            else:
                parents = np.array([path[pg] for pg in pgs], dtype=np.int32)
                self.sp_parent[rows] = parents
                scatter_add(self.sp_nr, parents)
            fresh = True
        else:
            rows = leaves
            parents = np.array([path[pg] for pg in pgs], dtype=np.int32)
            self.link_shadow_pages(leaves, parents)
            # (linking changes only the parents' counts: the leaves' stay as they are)
            fresh = not self.sp_nr[leaves].any()
        fill, faults = self.pte_prefetch(leaves, want, absent, fresh)
        installed = self.map_leaf_sptes(rows, fill, fresh)
        self.sp_accessed[rows] = True
        # the walk to each leaf: mark_accessed, whose ancestors are the paths just linked
        self.sp_accessed[uppers] = True
        return faults, installed, new_sps

    def pte_prefetch(
        self,
        leaves: np.ndarray,
        want: np.ndarray,
        absent: np.ndarray | None = None,
        fresh: bool | None = None,
    ) -> tuple[np.ndarray, int]:
        """``FNAME(pte_prefetch)``: a fault on any missing spte also fetches the rest of
        its aligned group of ``pte_prefetch_num``, but only gptes with the Accessed bit
        (``FNAME(prefetch_invalid_gpte)``) whose host page is present (the lookup is
        atomic, ``gfn_to_pfn_memslot_atomic``). A page prefetch cannot map (``absent``)
        is a fault of its own, which prefetches the mappable pages of its group (a
        mixed group may take one fault fewer than in the kernel, where a mappable page
        touched first faults too). ``fresh``: as for ``map_leaf_sptes``.
        Returns (sptes to install, faults)."""
        n = self.pte_prefetch_num
        k = len(leaves)
        if fresh is None:
            fresh = not self.sp_nr[leaves].any()
        if fresh:  # fresh leaf sps: every wanted spte is missing
            missing = want
            if want.all():  # and every group of every row faults: fill it all
                groups_per_row = PTES_PER_TABLE // n
                if absent is None:
                    return want, k * groups_per_row
                with_absent = int(np.count_nonzero(group_any(absent, n)))
                return want, int(np.count_nonzero(absent)) + k * groups_per_row - with_absent
        else:
            missing = want & ~self.sp_sptes[leaves]
        groups = group_any(missing, n)
        fill = want & np.repeat(groups, n, axis=1)
        if absent is None or not absent.any():
            return fill, int(np.count_nonzero(groups))
        with_absent = group_any(absent, n)
        present_only = group_any(missing & ~absent, n)
        return fill, int(np.count_nonzero(absent)) + int(
            np.count_nonzero(present_only & ~with_absent)
        )

    def _make_pages_available_for(self, vcpu: int, l1: np.ndarray) -> None:
        """``make_mmu_pages_available()`` before the batch allocates. The kernel checks
        before each fault; a batch stands for several, so ask for room for every sp its
        paths still lack (recounted, as reclaim may zap some of them)."""
        parents = set(self.gpt.parent[l1].tolist())
        upper = 1 + len(l1) + len(parents) * self.gpt.levels  # root, leaves, tables above
        if self.n_max_mmu_pages - self.n_used_mmu_pages >= upper + KVM_MIN_FREE_MMU_PAGES:
            return  # the kernel would not reclaim during these faults either
        gpts = {int(self.gpt.roots[self.vcpu_process[vcpu]]), *l1.tolist()}
        for pg in parents:
            gpts.update(self.gpt.path(pg))
        path = np.fromiter(gpts, dtype=np.int64, count=len(gpts))
        while self.make_mmu_pages_available(int((~self.valid(self.gpt_sp[path])).sum())):
            pass
