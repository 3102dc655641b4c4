"""What ``struct kvm`` and the core read of an MMU family (``ShadowMmu``, ``RegionMmu``):
one Protocol, so ``Kvm[M]`` is typed and nothing probes the MMU with ``hasattr``.

An MMU without dirty logging (the shadow model) says so with ``supports_dirty_log``;
its dirty-log methods are then never called (``KVM_MEM_LOG_DIRTY_PAGES`` is refused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from mmbench.model.memslots import Memslot


class Mmu(Protocol):
    supports_dirty_log: bool
    tlbs_dirty: bool  # sptes zapped or write-protected since the last remote flush
    # leaf sptes made non-present (zapped) since the last remote flush: whoever drops
    # mmu_lock must flush them first, or a thread taking the lock finds them gone, skips
    # its own flush, and a vCPU's TLB still maps the page (see ``check_lock_break``)
    zapped_unflushed: bool
    trace: bool  # record series over time (``mmu_used_pages``, ``pf_fixed``)

    def set_mmu_pages_limit(self, nr_mmu_pages: int, nr_memslot_pages: int) -> None:
        """``KVM_SET_NR_MMU_PAGES`` (0: KVM's default for ``nr_memslot_pages``)."""

    def kvm_mmu_unload(self, vcpu: int) -> int:
        """The vCPU drops its root (``kvm_mmu_unload``); returns sps freed."""

    def root_lock(self) -> AbstractContextManager[object]:
        """mmu_lock in the mode a vCPU's root reload takes it (shadow: exclusive; TDP MMU:
        for read)."""

    def check_new_slot(self, slot_id: int, base_gfn: int, npages: int) -> None:
        """Refuse (``ConfigError``) a memslot layout the MMU model cannot hold."""

    def nr_mapped(self) -> int:
        """What is still mapped: live sps (shadow) or leaves (region); 0 after teardown."""

    def nr_page_tables(self) -> int:
        """Page-table pages still allocated (shadow: live sps; region: tables below the
        roots); 0 after teardown, or they leaked."""

    def extra_stats(self) -> dict[str, float]:
        """MMU-family counters beyond ``kvm->stat`` (``pages_4k``, ``cmo_bytes``...)."""

    def check_after_fault(self, when: str) -> None:
        """What must hold once a fault batch is done (shadow: ``n_used_mmu_pages <=
        n_max_mmu_pages``, which ``make_mmu_pages_available`` guarantees the kernel)."""

    def check_invariants(self, when: str, gfn0: int = 0, gfn1: int | None = None) -> None:
        """The oracle of this MMU, over ``[gfn0, gfn1)`` where it can narrow (raises
        ``InvariantViolation``)."""

    def dirty_log_start(self, slot: Memslot, initially_set: bool) -> None: ...
    def dirty_log_stop(self, slot: Memslot) -> None: ...
    def get_dirty_log(self, slot: Memslot, protect: bool) -> int: ...
    def clear_dirty_log(self, slot: Memslot, first_page: int, npages: int) -> int: ...
