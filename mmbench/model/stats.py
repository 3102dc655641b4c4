"""Counters with the kernel's binary-stats names, so model and kernel read alike."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

VM_STATS = (
    "mmu_shadow_zapped",  # sps zapped (pages, not sptes), as the kernel counts
    "sptes_zapped",  # leaf sptes dropped (the kernel shows this as the fall in pages_4k)
    "mmu_cache_miss",  # sps allocated
    "mmu_recycled",  # sps zapped by reclaim at n_max_mmu_pages
    "mmu_recycled_roots",  # of those, roots in use (root_count != 0): only made invalid
    "remote_tlb_flush",
    "remote_tlb_flush_requests",
    "mmu_reload_requests",
    "lock_breaks",
)
VCPU_STATS = ("pf_taken", "pf_fixed", "mmio_exits", "exits", "root_reloads")


@dataclass
class Stats:
    vm: Counter[str] = field(default_factory=Counter)
    vcpu: defaultdict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    # time series: name -> list of (t_ns, value) or tuples a plot can read
    series: defaultdict[str, list[tuple]] = field(default_factory=lambda: defaultdict(list))

    def vcpu_total(self, key: str, vcpus: list[int] | None = None) -> int:
        return sum(c[key] for v, c in self.vcpu.items() if vcpus is None or v in vcpus)
