"""Default cost table of the x86 TDP MMU (EPT) on bare metal.

Shared costs (VM exit, remote TLB flush, memslot update...) carry the same provenance as
in ``costs.py``. ``zap_leaf`` and ``kick_vcpu`` are derived from the TDP MMU's published
``dirty_log_perf_test`` figures (David Matlack's 6.13 batched-flush commit, Ben Gardon's
2021 series); the other TDP-specific costs are estimates with their reasoning. None was
fitted to a seed's headline figure (see README, "Cost tables").

``range`` (ns) is what a sweep samples (``costs: stated``): ``touch_page`` the 60-80 ns its
provenance states; every other estimate the cycle counts its reasoning gives at 2-4 GHz,
widened to about a factor of 2 either way (the same rule as ``costs.py``).
"""

from mmbench.model.costs import Cost, CostTable
from mmbench_x86.costs import X86_SHADOW_BARE_METAL as _SHADOW

# 6.13, "KVM: x86/mmu: Batch TLB flushes when zapping collapsible TDP MMU SPTEs"
# (David Matlack, lore 20240805233114.4060019-4-dmatlack@google.com):
# ./dirty_log_perf_test -s anonymous_hugetlb_2mb -v 64 -e -b 4g, 64 x 4 GiB = 256 GiB
# = 131072 tables of 512 4 KiB leaves, every one zapped (100% dirtied, 2 iterations).
_BATCH = (
    "6.13 'KVM: x86/mmu: Batch TLB flushes when zapping collapsible TDP MMU SPTEs' (Matlack,"
    " lore 20240805233114.4060019-4-dmatlack@google.com)"
)
_BEFORE_S, _AFTER_S, _FLUSHES_BEFORE, _FLUSHES_AFTER = 14.334453428, 4.794969689, 131072, 76
_TABLES = 131072
_PER_FLUSH_NS = (_BEFORE_S - _AFTER_S) * 1e9 / (_FLUSHES_BEFORE - _FLUSHES_AFTER)  # 72.8 us
_VCPUS = 64
_SHARED = (
    "fault_exit",
    "remote_tlb_flush",
    "kick_vcpu",  # derived below, in the shared table's place
    "vcpu_flush_exit",
    "root_reload",
    "memslot_update",
    "vm_destroy",
    "mmio_exit",
    "lock_handoff",
)

# per table: tdp_walk + host_level_lookup + pt_free + 512 x zap_leaf (collapsible_zap_cost)
_PER_TABLE_NS = (_AFTER_S * 1e9 - _FLUSHES_AFTER * _PER_FLUSH_NS) / _TABLES
_ZAP_LEAF_NS = (_PER_TABLE_NS - (2 + 150 + 150)) / 512

X86_TDP_BARE_METAL = CostTable(
    "x86-tdp bare metal",
    {
        **{k: _SHADOW[k] for k in _SHARED},
        "kick_vcpu": Cost.derived(
            round((_PER_FLUSH_NS - _SHADOW.remote_tlb_flush) / _VCPUS),
            "per running vCPU IPI'd and waited for by a remote flush (KVM_REQUEST_WAIT)",
            ref=_BATCH,
            figure=f"{_BEFORE_S} s with {_FLUSHES_BEFORE} flushes vs {_AFTER_S} s with"
            f" {_FLUSHES_AFTER}, 64 vCPUs running (-e)",
            derivation="9.54 s / 130996 flushes = 72.8 us per flush = remote_tlb_flush (4 us)"
            " + 64 x kick_vcpu: 1075 ns. Range: 700 ns if a third of the per-table"
            " difference was the frozen-SPTE handling the same commit removed, 1140 ns"
            " if remote_tlb_flush is 1 us",
            range=(700, 1140),
        ),
        "touch_page": Cost.estimate(
            60,
            "one qword written per 4 KiB page is one cache miss to DRAM (~60-80 ns"
            " on a 2018 Xeon); with 2 MiB EPT leaves the 2D walk hits the paging caches",
            "guest writes one qword in a mapped page",
            range=(60, 80),
        ),
        "fault_locked": Cost.estimate(
            300,
            "kvm_tdp_mmu_map: walk 4 levels from the root, make_spte and the"
            " cmpxchg, page-stat update (~750 cycles at 2.5 GHz)",
            "the mmu_lock section of a TDP page fault",
            range=(150, 600),
        ),
        "fast_page_fault": Cost.estimate(
            200,
            "lockless walk, cmpxchg of W back into the spte, mark_page_dirty_in_slot",
            "fast_page_fault on a write-protected leaf (no mmu_lock)",
            range=(100, 400),
        ),
        "spte_install": Cost.estimate(
            10, "one spte store + stats", "per leaf installed", range=(5, 25)
        ),
        "pt_alloc": Cost.estimate(
            400,
            "a table page from kvm_mmu_memory_cache, 4 KiB cleared (~250 ns at"
            " 16 GB/s), struct kvm_mmu_page init and link",
            "per 4 KiB table allocated",
            range=(250, 800),
        ),
        "pt_free": Cost.estimate(
            150,
            "tdp_mmu_unlink_sp + call_rcu + free_page of a table",
            "per table freed",
            range=(75, 300),
        ),
        "tdp_walk": Cost.estimate(
            2,
            "tdp_iter_next over a cache-hot table: one load and a few compares (~5 cycles)",
            "per spte visited by a tree walk",
            range=(1, 5),
        ),
        "zap_leaf": Cost.derived(
            round(_ZAP_LEAF_NS, 1),
            "per leaf spte zapped (also per child freed by handle_removed_pt)",
            ref=_BATCH,
            figure=f"Disabling dirty logging time: {_AFTER_S} s ({_FLUSHES_AFTER} flushes),"
            " 64 vCPUs x 4 GiB, 2 MiB HugeTLB",
            derivation=f"(4.795 s - {_FLUSHES_AFTER} flushes x 72.8 us) / {_TABLES} tables"
            " = 36.5 us per table; minus tdp_walk + host_level_lookup + pt_free (302 ns),"
            " / 512 leaves = 70.8 ns. Range: 60 ns (the same on a 15% faster host) to"
            " 142 ns (legacy MMU rmap walk: 3.567 s / 25.2 M leaves, Gardon 2021, lore"
            " 20211110223010.1392399-1-bgardon@google.com)",
            range=(60, 142),
        ),
        "wrprot_spte": Cost.estimate(
            8,
            "clear W with a locked and on a present leaf (~20 cycles)",
            "per leaf write-protected",
            range=(4, 16),
        ),
        "split_spte": Cost.estimate(
            5,
            "one entry of the new table filled from the huge spte",
            "per child spte of an eager split",
            range=(2, 10),
        ),
        "host_level_lookup": Cost.estimate(
            150,
            "kvm_mmu_max_mapping_level -> host_pfn_mapping_level walks the host"
            " page tables (4-5 dependent loads, irqs off)",
            "per 4 KiB table checked for collapse or recovery",
            range=(75, 300),
        ),
        "dirty_bitmap_word": Cost.estimate(
            2,
            "one long of the dirty bitmap read/xchg and copied to user space",
            "per 64 pages of GET_DIRTY_LOG or CLEAR_DIRTY_LOG",
            range=(1, 5),
        ),
        "dirty_bitmap_page": Cost.estimate(
            0.02,
            "kvzalloc of the dirty bitmap, 1 bit per page, cleared at ~6 GB/s",
            "per page when logging starts",
            range=(0.01, 0.05),
        ),
        "memslot_free_page": Cost.estimate(
            0.001,
            "with the TDP MMU alone no rmaps are allocated (kvm_memslots_have_rmaps, 'KVM:"
            " x86/mmu: Allocate rmaps only if needed', 5.12), so kvm_arch_free_memslot frees"
            " only lpage_info (4 B per 2 MiB and per 1 GiB of the slot: 32 vmalloc pages for"
            " 64 GiB, ~10 us of vfree)",
            "per page of a slot freed at teardown",
            range=(0.0002, 0.005),
        ),
        "memslot_alloc_page": Cost.estimate(
            0.02,
            "the TDP MMU allocates no rmaps; lpage_info is one int per 2 MiB",
            "per page of a new slot",
            range=(0.01, 0.05),
        ),
    },
)
