"""Default cost table of arm64 stage-2 (non-VHE, a 2-socket server like the seed's D05).

Every constant is an explicit estimate with its reasoning. ``cmo_line`` drives the
teardown figure with CMOs almost alone; it was estimated from what a DC CIVAC to the
PoC costs, not fitted to the seed's 12 s (README, "Teardown").
"""

from mmbench.model.costs import Cost, CostTable

_E = "estimate"

ARM64_STAGE2 = CostTable(
    "arm64 stage-2, non-VHE, 2 sockets",
    {
        "touch_page": Cost(
            60,
            f"{_E}: one qword written per 4 KiB page, one cache miss to DRAM (~60-80 ns)",
            "guest writes one qword in a mapped page",
        ),
        "fault_locked": Cost(
            300,
            f"{_E}: user_mem_abort's mmu_lock section: stage-2 walk, pte install",
            "the mmu_lock section of a stage-2 fault",
        ),
        "spte_install": Cost(10, f"{_E}: one pte store", "per leaf installed"),
        "pt_alloc": Cost(
            400,
            f"{_E}: a table page from the memory cache, 4 KiB cleared (~250 ns at 16 GB/s)",
            "per 4 KiB table allocated",
        ),
        "pt_free": Cost(150, f"{_E}: put_page/free_page of a table page", "per table freed"),
        "tdp_walk": Cost(2, f"{_E}: one load and compare per entry visited", "per entry walked"),
        "split_spte": Cost(5, f"{_E}: one entry of the new table", "per child of a split"),
        "host_level_lookup": Cost(
            150, f"{_E}: host page-table walk for the mapping level", "per table checked"
        ),
        "dirty_bitmap_word": Cost(2, f"{_E}: one long of the bitmap", "per 64 pages"),
        "dirty_bitmap_page": Cost(0.02, f"{_E}: 1 bit per page cleared", "per page"),
        "memslot_alloc_page": Cost(0.02, f"{_E}: no rmaps on arm64", "per page of a new slot"),
        "memslot_free_page": Cost(
            0, "arm64's kvm_arch_free_memslot() is empty: no per-page metadata", "unused"
        ),
        "vm_destroy": Cost(
            300000,
            f"{_E}: kvm_destroy_vm besides the stage-2 free: vgic and vCPU teardown,"
            " mmu_notifier_unregister (an SRCU grace period), cleanup_srcu_struct;"
            " the same order as x86's (no arm64 measurement)",
            "per VM destroyed",
            range=(50000, 2000000),
        ),
        "memslot_update": Cost(
            20000,
            f"{_E}: install the new memslot array + synchronize_srcu_expedited",
            "per memslot array swap",
        ),
        "mmio_exit": Cost(5000, f"{_E}: exit to user space and back", "per MMIO access"),
        "lock_handoff": Cost(100, f"{_E}: spinlock handoff, one cache line", "per acquire"),
        "root_reload": Cost(0, "arm64 has one stage-2 per VM: no root reloads", "unused"),
        "fault_exit": Cost(
            2000,
            f"{_E}: stage-2 abort: trap to EL2, world switch to the EL1 host and back"
            " (non-VHE, ~2 us on Cortex-A72)",
            "the part of a stage-2 fault outside mmu_lock",
        ),
        "fast_page_fault": Cost(
            600,
            f"{_E}: arm64 has no lockless write-fault path here: a permission fault"
            " relaxes the pte under mmu_lock (cost beyond the exit)",
            "write fault on a write-protected leaf",
        ),
        "zap_leaf": Cost(
            10,
            f"{_E}: kvm_set_pte(0) + put_page of the table page's refcount",
            "per stage-2 leaf cleared",
        ),
        "wrprot_spte": Cost(8, f"{_E}: clear S2AP write bit of a present leaf", "per leaf"),
        "cmo_line": Cost(
            10,
            f"{_E} (range 5-30 ns): DC CIVAC of one 64-byte line to the PoC, issued back"
            " to back; even a clean line is a transaction across the interconnect of a"
            " 2-socket system (~24 cycles at 2.4 GHz). Not measured; not fitted to seed 003",
            "per 64-byte line cleaned+invalidated (kvm_flush_dcache_pte/pmd)",
            range=(5, 30),
        ),
        "tlbi_ipa": Cost(
            1000,
            f"{_E}: non-VHE __kvm_tlb_flush_vmid_ipa: HVC round trip (~300 ns), TLBI"
            " IPAS2E1IS + DSB ISH + TLBI VMALLE1IS + DSB ISH broadcast to both sockets",
            "per stage-2 leaf unmapped with per-IPA invalidation",
        ),
        "tlbi_vmall": Cost(
            2000,
            f"{_E}: HVC + TLBI VMALLS12E1IS + DSB ISH completing on every CPU of both sockets",
            "one whole-VMID invalidation",
        ),
        "remote_tlb_flush": Cost(
            2000,
            f"{_E}: kvm_flush_remote_tlbs is __kvm_tlb_flush_vmid: one TLBI VMALLS12E1IS",
            "per flush (broadcast TLBI: no IPI, no vCPU exit)",
        ),
        "kick_vcpu": Cost(0, "arm64 broadcasts TLBI in hardware: no IPI per vCPU", "unused"),
        "vcpu_flush_exit": Cost(0, "no vCPU exit for a broadcast TLBI", "unused"),
    },
)
