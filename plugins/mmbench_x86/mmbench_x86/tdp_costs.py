"""Default cost table of the x86 TDP MMU (EPT) on bare metal.

Shared costs (VM exit, remote TLB flush, memslot update...) carry the same provenance as
in ``costs.py``. Every TDP-specific cost is an explicit estimate with its reasoning:
none was fitted to a seed's headline figure (see README, "Dirty-log stop").

``range`` (ns) is what a sweep samples (``costs: stated``): ``touch_page`` the 60-80 ns its
provenance states; every other estimate the cycle counts its reasoning gives at 2-4 GHz,
widened to about a factor of 2 either way (the same rule as ``costs.py``).
"""

from mmbench.model.costs import Cost, CostTable
from mmbench_x86.costs import X86_SHADOW_BARE_METAL as _SHADOW

_E = "estimate"
_SHARED = (
    "fault_exit",
    "remote_tlb_flush",
    "kick_vcpu",
    "vcpu_flush_exit",
    "root_reload",
    "memslot_update",
    "vm_destroy",
    "mmio_exit",
    "lock_handoff",
)

X86_TDP_BARE_METAL = CostTable(
    "x86-tdp bare metal",
    {
        **{k: _SHADOW[k] for k in _SHARED},
        "touch_page": Cost(
            60,
            f"{_E}: one qword written per 4 KiB page is one cache miss to DRAM (~60-80 ns"
            " on a 2018 Xeon); with 2 MiB EPT leaves the 2D walk hits the paging caches",
            "guest writes one qword in a mapped page",
            range=(60, 80),
        ),
        "fault_locked": Cost(
            300,
            f"{_E}: kvm_tdp_mmu_map: walk 4 levels from the root, make_spte and the"
            " cmpxchg, page-stat update (~750 cycles at 2.5 GHz)",
            "the mmu_lock section of a TDP page fault",
            range=(150, 600),
        ),
        "fast_page_fault": Cost(
            200,
            f"{_E}: lockless walk, cmpxchg of W back into the spte, mark_page_dirty_in_slot",
            "fast_page_fault on a write-protected leaf (no mmu_lock)",
            range=(100, 400),
        ),
        "spte_install": Cost(
            10, f"{_E}: one spte store + stats", "per leaf installed", range=(5, 25)
        ),
        "pt_alloc": Cost(
            400,
            f"{_E}: a table page from kvm_mmu_memory_cache, 4 KiB cleared (~250 ns at"
            " 16 GB/s), struct kvm_mmu_page init and link",
            "per 4 KiB table allocated",
            range=(250, 800),
        ),
        "pt_free": Cost(
            150,
            f"{_E}: tdp_mmu_unlink_sp + call_rcu + free_page of a table",
            "per table freed",
            range=(75, 300),
        ),
        "tdp_walk": Cost(
            2,
            f"{_E}: tdp_iter_next over a cache-hot table: one load and a few compares (~5 cycles)",
            "per spte visited by a tree walk",
            range=(1, 5),
        ),
        "zap_leaf": Cost(
            25,
            f"{_E}: xchg of the spte (locked op, ~20 cycles) and handle_changed_spte"
            " bookkeeping, page-stat update (~60 cycles at 2.5 GHz)",
            "per leaf spte zapped (also per child freed by handle_removed_pt)",
            range=(12, 50),
        ),
        "wrprot_spte": Cost(
            8,
            f"{_E}: clear W with a locked and on a present leaf (~20 cycles)",
            "per leaf write-protected",
            range=(4, 16),
        ),
        "split_spte": Cost(
            5,
            f"{_E}: one entry of the new table filled from the huge spte",
            "per child spte of an eager split",
            range=(2, 10),
        ),
        "host_level_lookup": Cost(
            150,
            f"{_E}: kvm_mmu_max_mapping_level -> host_pfn_mapping_level walks the host"
            " page tables (4-5 dependent loads, irqs off)",
            "per 4 KiB table checked for collapse or recovery",
            range=(75, 300),
        ),
        "dirty_bitmap_word": Cost(
            2,
            f"{_E}: one long of the dirty bitmap read/xchg and copied to user space",
            "per 64 pages of GET_DIRTY_LOG or CLEAR_DIRTY_LOG",
            range=(1, 5),
        ),
        "dirty_bitmap_page": Cost(
            0.02,
            f"{_E}: kvzalloc of the dirty bitmap, 1 bit per page, cleared at ~6 GB/s",
            "per page when logging starts",
            range=(0.01, 0.05),
        ),
        "memslot_free_page": Cost(
            0.001,
            f"{_E}: with the TDP MMU alone no rmaps are allocated (kvm_memslots_have_rmaps,"
            " 'KVM: x86/mmu: Allocate rmaps only if needed', 5.12), so kvm_arch_free_memslot"
            " frees only lpage_info (4 B per 2 MiB and per 1 GiB of the slot: 32 vmalloc"
            " pages for 64 GiB, ~10 us of vfree)",
            "per page of a slot freed at teardown",
            range=(0.0002, 0.005),
        ),
        "memslot_alloc_page": Cost(
            0.02,
            f"{_E}: the TDP MMU allocates no rmaps; lpage_info is one int per 2 MiB",
            "per page of a new slot",
            range=(0.01, 0.05),
        ),
    },
)
