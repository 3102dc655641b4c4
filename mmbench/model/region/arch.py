"""What the x86-tdp and arm64 arch backends share: a ``RegionMmu`` and the kernel's
default behaviour on dirty-log enable (policies choose what happens on disable)."""

from __future__ import annotations

from typing import Any

from mmbench.model.kvm import Kvm
from mmbench.model.region.mmu import RegionMmu
from mmbench.model.vcpu import Vcpu

GiB = 1 << 30
TiB = 1 << 40


class RegionArch:
    """Base of arch backends whose MMU is one radix tree per VM (TDP MMU, stage-2)."""

    name = ""
    costs: Any = None
    max_guest_bytes = 16 * TiB  # per-2 MiB state: ~10 bytes per region, linear wall time
    dirty_log = True  # implements KVM_MEM_LOG_DIRTY_PAGES, GET/CLEAR_DIRTY_LOG
    flush_ipis = True  # remote TLB flushes IPI the vCPUs (x86); arm64 broadcasts TLBI
    read_faults = False  # vCPU faults take mmu_lock for read (rwlock) rather than exclusively
    region_granular = True  # guest accesses, slots and clears in whole 2 MiB regions

    def setup(self, kvm: Kvm, areas_per_vcpu: list[list[tuple[int, int]]], pt_gfn: int) -> None:
        huge = kvm.huge_pages
        gib = huge and kvm.huge_page_size >= GiB
        kvm.flush_ipis = self.flush_ipis
        # x86 TDP MMU: an rwlock since 5.12, faults under the read lock. arm64 as modelled
        # (seed 003's 2019 stage-2, v5.x): a spinlock. arm64's mmu_lock became an rwlock
        # in v5.18 ("KVM: arm64: Use read/write spin lock for MMU protection", Jing Zhang,
        # 2022; only permission-relaxing faults under the read lock), and stage-2 faults
        # took the read lock in v6.2 ("KVM: arm64: Handle stage-2 faults in parallel",
        # Oliver Upton): eras this model does not follow.
        kvm.mmu_lock.kind = "rwlock" if self.read_faults else "spinlock"
        kvm.mmu = RegionMmu(kvm, kvm.memslots.max_gfn, huge, self.read_faults, huge_1g=gib)

    @staticmethod
    def page_table_pages(areas_per_vcpu: list[list[tuple[int, int]]]) -> int:
        """Guest page tables do not matter to a two-dimensional MMU: none reserved."""
        return 0

    def touch(self, kvm: Kvm, vcpu: Vcpu, gfn0: int, gfn1: int, write: bool) -> None:
        kvm.mmu.access(vcpu, gfn0, gfn1, write)
