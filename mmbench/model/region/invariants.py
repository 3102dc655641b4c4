"""The region MMU's own oracle (the invariants monitor calls it after each event)."""

from __future__ import annotations

import numpy as np

from mmbench.errors import InvariantViolation
from mmbench.model.region.roots import RegionRoots
from mmbench.model.region.state import GIB_REGIONS, REGION_PAGES, REGION_SHIFT


class RegionInvariants(RegionRoots):
    """What must hold of the tree whenever mmu_lock is free and no walk is half done."""

    def check_invariants(self, when: str, gfn0: int = 0, gfn1: int | None = None) -> None:
        """The oracle for this MMU, over the GiBs of ``[gfn0, gfn1)`` (default: all);
        raises ``InvariantViolation``."""

        def fail(msg: str) -> None:
            raise InvariantViolation(f"after {when}: {msg}")

        g0 = (gfn0 >> REGION_SHIFT) // GIB_REGIONS
        end = self.nr_regions if gfn1 is None else -(-gfn1 >> REGION_SHIFT)
        g1 = min(len(self.gb), -(-end // GIB_REGIONS))
        r0, r1 = g0 * GIB_REGIONS, min(self.nr_regions, g1 * GIB_REGIONS)
        sl = slice(r0, r1)
        huge, pt, n4k, w4k = self.huge[sl], self.pt[sl], self.n4k[sl], self.w4k[sl]
        huge_wp, dirty = self.huge_wp[sl], self.dirty[sl]

        def gfn(i: int) -> str:
            return f"gfn 0x{(r0 + i) << REGION_SHIFT:x}"

        gb = self.gib_per_region(self.gb, r0, r1)
        if (gb & (huge | pt)).any():
            fail(f"{gfn(int(np.argmax(gb & (huge | pt))))} is under a 1 GiB leaf and mapped")
        if (self.gb_wp[g0:g1] & ~self.gb[g0:g1]).any():
            fail("a write-protect flag on a GiB without a 1 GiB leaf")
        if (huge & pt).any():
            fail(f"{gfn(int(np.argmax(huge & pt)))} has both a huge leaf and a table")
        if (~pt & (n4k > 0)).any() or (w4k > n4k).any() or (n4k > REGION_PAGES).any():
            fail("4 KiB leaf counts disagree with the tables")
        if (huge_wp & ~huge).any():
            fail("a write-protect flag on a region without a huge leaf")
        covered = int(self.huge.sum()) + GIB_REGIONS * int(self.gb.sum())
        if covered != self.nr_huge:
            fail(f"nr_huge {self.nr_huge} but huge leaves cover {covered} regions")
        pages, logged = self._backing(r0, r1)
        backed = pages > 0
        over = n4k > pages
        if over.any():
            r = int(np.argmax(over))
            fail(f"{gfn(r)}'s table holds {int(n4k[r])} leaves, its slot backs {int(pages[r])}")
        stale = (huge | pt | gb) & ~backed
        if stale.any():
            fail(f"{gfn(int(np.argmax(stale)))} is still mapped but no live memslot backs it")
        gb_w = gb & ~self.gib_per_region(self.gb_wp, r0, r1)
        writable = np.where((huge & ~huge_wp) | gb_w, REGION_PAGES, w4k)
        unlogged = logged & (writable > dirty)
        if unlogged.any():
            r = int(np.argmax(unlogged))
            fail(
                f"a writable spte maps {gfn(r)} in a dirty-logged slot whose bitmap does not"
                f" have it set ({int(writable[r])} writable, {int(dirty[r])} dirty)"
            )
        for vcpu in self.kvm.vcpus:  # an invalidated root is left at the next entry
            if not self.root_usable(vcpu.id) and not (vcpu.request_reload or vcpu.reloading):
                fail(f"vcpu {vcpu.id} runs on an invalid root with no reload pending")
        left = self.invalid_root_leaves()
        if left and not self.kvm.mmu_lock.held_elsewhere():
            fail(f"invalid roots still map {left} leaves: they were never torn down")
        if self.tlbs_dirty and not self.kvm.mmu_lock.held_elsewhere():  # else: it flushes
            fail("sptes were zapped or write-protected but remote TLBs were not flushed")

    def check_host_unmapped(self, when: str, gfn0: int, gfn1: int) -> None:
        """Once an MMU-notifier invalidation of ``[gfn0, gfn1)`` has ended no leaf maps
        those gfns (the host may have freed them; racing faults retried)."""
        r0, r1 = gfn0 >> REGION_SHIFT, -(-gfn1 >> REGION_SHIFT)
        sl = slice(r0, r1)
        mapped = self.huge[sl] | (self.pt[sl] & (self.n4k[sl] > 0))
        mapped |= self.gib_per_region(self.gb, r0, r1)
        if mapped.any():
            r = r0 + int(np.argmax(mapped))
            raise InvariantViolation(
                f"after {when}: a leaf still maps gfn 0x{r << REGION_SHIFT:x}, whose host"
                " page the MMU notifier invalidated"
            )
