"""Host memory behind guest RAM: which host pages exist yet, and what faulting one in costs.

Guest RAM is anonymous memory of the VMM (QEMU, or the kvm backend's ``mmap``) that the
host kernel allocates at first touch. KVM's fault path gets the host page with
``hva_to_pfn`` (virt/kvm/kvm_main.c) before it takes mmu_lock (``kvm_faultin_pfn``): the
fast path (GUP-fast) finds a present page; otherwise the slow path faults it in
(``get_user_pages`` -> ``handle_mm_fault``: allocate and zero it; a 2 MiB THP where the
VMA is ``MADV_HUGEPAGE``). Prefetching the neighbouring sptes only looks pages up
atomically (``FNAME(prefetch_gpte)`` -> ``gfn_to_pfn_memslot_atomic``, v6.x
``kvm_prefetch_pages``), so a page not yet present is not prefetched: with 4 KiB backing a
guest's first pass faults once per page, not once per 8.

Measured on this development host (``mmbench_kvm`` populate of a 64 MiB guest, one vCPU,
median of 3, 2026-12-02, loaded): THP backing 2049 faults either way, 113 ms with host
memory populated first and 150 ms without; 4 KiB backing 2049 faults and 95 ms populated,
16385 faults and 574 ms not.

One bit per host page (``page_size``: 4 KiB, 2 MiB or 1 GiB: guest RAM's backing),
allocated on first use, so the region MMUs' 4 TiB guests that never ask pay nothing.
Memory the VMM maps while the guest runs (a ROM BAR's 128 KiB, memslot_perf_test's
slots) is 4 KiB pages (``add_small``), as the kvm backend maps it.
"""

from __future__ import annotations

import numpy as np

PAGE_SHIFT = 12


class HostMemory:
    """The host pages of guest RAM present so far (none at VM creation)."""

    def __init__(self, max_gfn: int, page_size: int) -> None:
        self.max_gfn = max_gfn
        self.page_size = page_size
        self.shift = page_size.bit_length() - 1 - PAGE_SHIFT  # gfn -> host page index
        self.pages_per_host_page = 1 << self.shift
        self._present: np.ndarray | None = None
        # memory mapped at run time, 4 KiB pages: which backing pages it lies in, and
        # which of its gfns are present (both allocated by the first ``add_small``)
        self._small_at: np.ndarray | None = None
        self._small_present: np.ndarray | None = None
        self.faulted = 0  # host pages faulted in so far

    @property
    def present_bits(self) -> np.ndarray:
        if self._present is None:
            self._present = np.zeros((self.max_gfn >> self.shift) + 1, dtype=bool)
        return self._present

    def add_small(self, gfn0: int, gfn1: int) -> None:
        """``[gfn0, gfn1)`` is backed by 4 KiB host pages of its own (mapped while the guest
        runs); its pages stay present across the slot's delete and re-add. (A backing
        page it shares with guest RAM counts as 4 KiB pages from then on.)"""
        if not self.shift:
            return
        if self._small_at is None:
            self._small_at = np.zeros_like(self.present_bits)
            self._small_present = np.zeros(self.max_gfn + 1, dtype=bool)
        self._small_at[gfn0 >> self.shift : ((gfn1 - 1) >> self.shift) + 1] = True

    def _per_gfn(self, per_page: np.ndarray, gfn0: int, gfn1: int) -> np.ndarray:
        """A per-host-page bit array read for every gfn of ``[gfn0, gfn1)``: to read
        only (with 4 KiB backing, a view of ``per_page``)."""
        s = self.shift
        out = per_page[gfn0 >> s : ((gfn1 - 1) >> s) + 1]
        if not s:
            return out
        return np.repeat(out, 1 << s)[gfn0 - ((gfn0 >> s) << s) :][: gfn1 - gfn0]

    def all_present(self, gfn0: int, gfn1: int) -> bool:
        """Every page of ``[gfn0, gfn1)`` has its host page (the common case once a guest
        has touched its memory), from one slice; False also where memory mapped at run
        time lies in the range (``absent_range`` then says which)."""
        s = self.shift
        lo, hi = gfn0 >> s, ((gfn1 - 1) >> s) + 1
        if not self.present_bits[lo:hi].all():
            return False
        return self._small_at is None or not self._small_at[lo:hi].any()

    def absent_range(self, gfn0: int, gfn1: int) -> np.ndarray:
        """Which gfns of ``[gfn0, gfn1)`` have no host page yet, from slices (a fault
        batch's pages are contiguous, so no per-gfn index array is needed)."""
        out = ~self._per_gfn(self.present_bits, gfn0, gfn1)
        if self._small_at is not None:
            m = self._per_gfn(self._small_at, gfn0, gfn1)
            if m.any():
                out[m] = ~self._small_present[gfn0:gfn1][m]
        return out

    def small_range(self, gfn0: int, gfn1: int) -> np.ndarray:
        """Which gfns of ``[gfn0, gfn1)`` are 4 KiB host pages (all of them with a 4 KiB
        backing, else those of memory mapped at run time)."""
        if not self.shift:
            return np.ones(gfn1 - gfn0, dtype=bool)
        if self._small_at is None:
            return np.zeros(gfn1 - gfn0, dtype=bool)
        return self._per_gfn(self._small_at, gfn0, gfn1)

    def fault_in(self, gfns: np.ndarray) -> tuple[int, int]:
        """``hva_to_pfn``'s slow path for ``gfns`` (each a page a vCPU touches): make their
        host pages present; returns how many backing pages and 4 KiB pages of memory
        mapped at run time that faulted in."""
        gfns = np.asarray(gfns).ravel()
        small = 0
        if self._small_at is not None:
            m = self._small_at[gfns >> self.shift]
            if m.any():
                g = gfns[m]
                small = int((~self._small_present[g]).sum())
                self._small_present[g] = True
                gfns = gfns[~m]
        idx = gfns >> self.shift
        bits = self.present_bits
        new = idx[~bits[idx]]
        n = len(new) if self.shift == 0 else len(np.unique(new))
        bits[new] = True
        self.faulted += n + small
        return n, small

    def fault_in_range(self, gfn0: int, mask: np.ndarray) -> tuple[int, int]:
        """``fault_in`` of the gfns ``gfn0 + i`` for each ``mask[i]`` set (absent pages of
        a fault batch's contiguous range): with 4 KiB backing a slice, no index array."""
        if self.shift or self._small_at is not None:
            return self.fault_in(gfn0 + np.flatnonzero(mask))
        bits = self.present_bits[gfn0 : gfn0 + len(mask)]
        n = int(np.count_nonzero(mask & ~bits))
        bits |= mask
        self.faulted += n
        return n, 0

    def drop(self, gfn0: int, gfn1: int) -> None:
        """The VMM unmapped or ``MADV_DONTNEED``-ed ``[gfn0, gfn1)``: the host pages it
        covers whole are freed (a THP it covers in part is split by the kernel and only
        the covered 4 KiB freed, which one bit per 2 MiB cannot say: it stays present)."""
        s = self.shift
        lo, hi = -(-gfn0 >> s), gfn1 >> s
        if hi > lo:
            self.present_bits[lo:hi] = False
        if self._small_present is not None:
            self._small_present[gfn0:gfn1] = False

    def populate(self, gfn0: int, gfn1: int) -> None:
        """The VMM wrote these pages itself (the guest image it loads, ``MAP_POPULATE``)."""
        self.present_bits[gfn0 >> self.shift : ((gfn1 - 1) >> self.shift) + 1] = True
