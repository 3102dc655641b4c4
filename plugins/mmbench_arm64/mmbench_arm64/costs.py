"""Default cost table of arm64 stage-2 (non-VHE, a 2-socket server like the seed's D05).

``cmo_line`` is derived from seed 003's own figure (so the seed can no longer validate the
modelled teardown: it is its source), ``wrprot_spte`` from a published Kunpeng 920 figure;
every other constant is an estimate with its reasoning and range (cycle counts at
2.0-2.6 GHz, about a factor of 2 either way where the reasoning is an order of
magnitude), or absent where arm64 has no such mechanism. ``mmbench list --costs arm64``
prints them (README, "Cost tables").
"""

from mmbench.model.costs import Cost, CostTable

# seed 003, "[PATCH 0/7] KVM: arm/arm64: Help VMs dying quicker" (Marc Zyngier, 2019):
# "terminating a 64GB VM that has most of its memory mapped at S2 goes from several
# seconds (I've seen up to 12s) ... 99% of the overhead is due to the unnecessary cache
# cleaning". One DC CIVAC per 64-byte line of every mapped byte.
_SEED003 = "seed 003, '[PATCH 0/7] KVM: arm/arm64: Help VMs dying quicker' (Marc Zyngier, 2019)"
_LINES_64G = (64 << 30) // 64
_CMO_LINE_NS = 0.99 * 12e9 / _LINES_64G  # 11.06 ns
_CMO_LINE_LOW = 0.99 * 3e9 / _LINES_64G  # "several seconds": 3 s

# c862626e19ef "KVM: arm64: Support enabling dirty log gradually in small chunks" (Keqian
# Zhu, lore 20200413122023.52583-1-zhukeqian1@huawei.com): Kunpeng 920 2.6 GHz, 128G VM
# with 127G touched, 4K pages: memory_global_dirty_log_start 650 ms before the change,
# i.e. stage2_wp_range over every 4 KiB leaf.
_KUNPENG = (
    "c862626e19ef 'KVM: arm64: Support enabling dirty log gradually in small chunks'"
    " (Keqian Zhu, lore 20200413122023.52583-1-zhukeqian1@huawei.com)"
)
_WP_LEAVES = (127 << 30) // 4096
_WRPROT_NS = 650e6 / _WP_LEAVES - 2  # minus tdp_walk per entry visited

ARM64_STAGE2 = CostTable(
    "arm64 stage-2, non-VHE, 2 sockets",
    {
        "touch_page": Cost.estimate(
            60,
            "one qword written per 4 KiB page, one cache miss to DRAM (~60-80 ns)",
            "guest writes one qword in a mapped page",
            range=(50, 120),
        ),
        "fault_locked": Cost.estimate(
            300,
            "user_mem_abort's mmu_lock section: stage-2 walk, pte install (~700 cycles)",
            "the mmu_lock section of a stage-2 fault",
            range=(150, 600),
        ),
        "spte_install": Cost.estimate(
            10, "one pte store + stats (~25 cycles)", "per leaf installed", range=(5, 25)
        ),
        "pt_alloc": Cost.estimate(
            400,
            "a table page from the memory cache, 4 KiB cleared (~250 ns at 16 GB/s)",
            "per 4 KiB table allocated",
            range=(250, 800),
        ),
        "pt_free": Cost.estimate(
            150,
            "put_page/free_page of a table page (~350 cycles)",
            "per table freed",
            range=(75, 300),
        ),
        "tdp_walk": Cost.estimate(
            2,
            "one load and compare per entry visited (~5 cycles, cache-hot table)",
            "per entry walked",
            range=(1, 5),
        ),
        "split_spte": Cost.estimate(
            5, "one entry of the new table filled", "per child of a split", range=(2, 10)
        ),
        "host_level_lookup": Cost.estimate(
            150,
            "host page-table walk for the mapping level (4 dependent loads)",
            "per table checked",
            range=(75, 300),
        ),
        "dirty_bitmap_word": Cost.estimate(
            2, "one long of the bitmap read and copied", "per 64 pages", range=(1, 5)
        ),
        "dirty_bitmap_page": Cost.estimate(
            0.02, "1 bit per page cleared at ~6 GB/s", "per page", range=(0.01, 0.05)
        ),
        "memslot_alloc_page": Cost.estimate(
            0.02,
            "no rmaps on arm64: the dirty bitmap only, 1 bit per page",
            "per page of a new slot",
            range=(0.01, 0.05),
        ),
        "memslot_free_page": Cost.absent(
            "arm64's kvm_arch_free_memslot() is empty: no per-page metadata"
        ),
        "vm_destroy": Cost.estimate(
            300000,
            "kvm_destroy_vm besides the stage-2 free: vgic and vCPU teardown,"
            " mmu_notifier_unregister (an SRCU grace period), cleanup_srcu_struct; the"
            " same order as x86's (no arm64 measurement)",
            "per VM destroyed",
            range=(50000, 2000000),
        ),
        "memslot_update": Cost.estimate(
            20000,
            "install the new memslot array + synchronize_srcu_expedited (as x86-shadow's)",
            "per memslot array swap",
            range=(5000, 100000),
        ),
        "mmio_exit": Cost.estimate(
            5000,
            "exit to user space and back (non-VHE world switch twice)",
            "per MMIO access",
            range=(2000, 15000),
        ),
        "lock_handoff": Cost.estimate(
            100,
            "spinlock handoff, one cache line across the interconnect",
            "per acquire",
            range=(40, 300),
        ),
        "root_reload": Cost.absent(
            "one stage-2 per VM (kvm->arch.mmu), no roots to reload (arch/arm64/kvm/mmu.c)"
        ),
        "fault_exit": Cost.estimate(
            2000,
            "stage-2 abort: trap to EL2, world switch to the EL1 host and back"
            " (non-VHE, ~2 us on Cortex-A72)",
            "the part of a stage-2 fault outside mmu_lock",
            range=(1000, 4000),
        ),
        "fast_page_fault": Cost.estimate(
            600,
            "arm64 has no lockless write-fault path here: a permission fault"
            " relaxes the pte under mmu_lock (cost beyond the exit)",
            "write fault on a write-protected leaf",
            range=(300, 1200),
        ),
        "zap_leaf": Cost.estimate(
            10,
            "kvm_set_pte(0) + put_page of the table page's refcount (~25 cycles)",
            "per stage-2 leaf cleared",
            range=(5, 25),
        ),
        "wrprot_spte": Cost.derived(
            round(_WRPROT_NS, 1),
            "per leaf write-protected (clear S2AP W)",
            ref=_KUNPENG,
            figure="650 ms to start dirty logging on a 128G VM with 127G touched, 4K pages",
            derivation=f"650 ms / (127 GiB / 4 KiB) = 19.5 ns per leaf, minus tdp_walk (2 ns)"
            f" = {_WRPROT_NS:.1f} ns. Range: 8 ns (a bit cleared with a locked op, ~20"
            " cycles) to 19.5 ns (all of the per-leaf time charged to the leaf)",
            range=(8, 19.5),
        ),
        "cmo_line": Cost.derived(
            round(_CMO_LINE_NS, 2),
            "per 64-byte line cleaned+invalidated (kvm_flush_dcache_pte/pmd)",
            ref=_SEED003,
            figure="a 64GB VM's teardown 'several seconds (I've seen up to 12s)', 99% of it"
            " cache cleaning, on a D05 (2 sockets)",
            derivation=f"0.99 x 12 s / (64 GiB / 64 B) = {_CMO_LINE_NS:.2f} ns per line; the"
            f" range's low end is 'several' = 3 s: {_CMO_LINE_LOW:.2f} ns",
            range=(round(_CMO_LINE_LOW, 2), round(_CMO_LINE_NS, 2)),
        ),
        "tlbi_ipa": Cost.estimate(
            1000,
            "non-VHE __kvm_tlb_flush_vmid_ipa: HVC round trip (~300 ns), TLBI"
            " IPAS2E1IS + DSB ISH + TLBI VMALLE1IS + DSB ISH broadcast to both sockets",
            "per stage-2 leaf unmapped with per-IPA invalidation",
            range=(400, 3000),
        ),
        "tlbi_vmall": Cost.estimate(
            2000,
            "HVC + TLBI VMALLS12E1IS + DSB ISH completing on every CPU of both sockets",
            "one whole-VMID invalidation",
            range=(800, 6000),
        ),
        "remote_tlb_flush": Cost.estimate(
            2000,
            "kvm_flush_remote_tlbs is __kvm_tlb_flush_vmid: one TLBI VMALLS12E1IS",
            "per flush (broadcast TLBI: no IPI, no vCPU exit)",
            range=(800, 6000),
        ),
        "kick_vcpu": Cost.absent(
            "broadcast TLBI needs no IPI per vCPU (kvm_arch_flush_remote_tlbs,"
            " arch/arm64/kvm/mmu.c)"
        ),
        "vcpu_flush_exit": Cost.absent("no vCPU exit for a broadcast TLBI"),
    },
)
