"""Default cost table of the x86 shadow MMU on bare metal.

Each cost names where it comes from. "estimate" marks an order-of-magnitude figure not
yet measured; ``mmbench calibrate`` replaces them with measurements of the host it runs
on and writes a table for ``--costs``.

Each cost also states a ``range`` (ns), the box ``mmbench sweep`` samples with ``costs:
stated`` (configs/sweeps/x86-costs.yaml). Where it comes from:
- ``touch_page``: the seed's two kernels, 84.768 ms (zap-slot) and 89.117 ms per 2000 MB
  pass, bound it from above at 174 ns; down to 150 ns if mmtest's loop and the pass's
  few faults take up to a tenth of the pass.
- ``zap_spte``: the one measurement (~48 ns) with this host's up-to-3x run-to-run spread
  (PRIMER) on either side: 16-144 ns.
- every estimate: the cycle counts its reasoning names at 2-4 GHz, and a factor of about 2
  either way where the reasoning is an order of magnitude (IPIs, SRCU grace periods,
  exits to user space span more; their ranges are wider, as stated inline).
"""

from mmbench.model.costs import Cost, CostTable

_E = "estimate"

X86_SHADOW_BARE_METAL = CostTable(
    "x86-shadow bare metal",
    {
        "touch_page": Cost(
            165,
            "seed 001 (2019, Sean Christopherson): 84.768 ms per 2000 MB pass on the"
            " zap-slot kernel = 165 ns per 4 KiB page when passes do not fault",
            "guest writes one qword in a mapped page: TLB miss, 2D walk, cache miss",
            range=(150, 175),
        ),
        "fault_exit": Cost(
            1500,
            f"{_E}: VM exit + entry ~1.2k cycles (kvm-unit-tests vmexit) plus the guest"
            " page-table walk and gfn_to_pfn, at ~2.5 GHz",
            "the part of a shadow page fault outside mmu_lock",
            range=(800, 3000),
        ),
        "fault_locked": Cost(
            400,
            f"{_E}: kvm_mmu_get_page hash lookups + mmu_set_spte under mmu_lock",
            "the mmu_lock section of a shadow page fault",
            range=(200, 1000),
        ),
        "spte_install": Cost(
            25,
            f"{_E}: rmap_add + spte write per (pre)fetched spte",
            "per spte installed",
            range=(10, 60),
        ),
        "sp_alloc": Cost(
            600,
            f"{_E}: kvm_mmu_alloc_page from the memory cache, 4 KiB clear, hash insert,"
            " account_shadowed write-protect",
            "per shadow page allocated (mmu_cache_miss)",
            range=(300, 1500),
        ),
        "zap_sp": Cost(
            250,
            f"{_E}: unlink parents, hash removal, list move, free",
            "per sp zapped",
            range=(100, 600),
        ),
        "zap_spte": Cost(
            45,
            "measured on the development host (kvm_pvm, tdp_mmu=N): zapping all ~0.5 M"
            " sptes on a ROM-slot delete took ~24 ms, ~48 ns per spte",
            "per spte or child link dropped when an sp is zapped or an rmap is zapped",
            range=(16, 144),
        ),
        "sp_scan": Cost(
            30,
            f"{_E}: one active_mmu_pages step plus test_and_clear_bit on the parent_pte"
            " (a locked RMW on a likely cold line)",
            "per sp looked at by a reclaim scan (seed 004's kvm_mmu_get_inactive_page)",
            range=(10, 100),
        ),
        "rmap_walk": Cost(
            8, f"{_E}: one rmap head visited, empty", "per rmap head walked", range=(2, 20)
        ),
        "remote_tlb_flush": Cost(
            4000,
            f"{_E}: IPI all vCPUs and wait for them (KVM_REQUEST_WAIT)",
            "per flush",
            range=(1000, 10000),
        ),
        "kick_vcpu": Cost(
            300, f"{_E}: kvm_make_all_cpus_request per vCPU", "per vCPU kicked", range=(100, 1000)
        ),
        "vcpu_flush_exit": Cost(
            1200,
            f"{_E}: the vCPU's exit + TLB flush + entry",
            "vCPU side of a flush",
            range=(500, 3000),
        ),
        "root_reload": Cost(
            1000,
            f"{_E}: kvm_mmu_unload + kvm_mmu_load bookkeeping",
            "per root reload",
            range=(300, 3000),
        ),
        "memslot_update": Cost(
            20000,
            f"{_E}: install the new memslot array + synchronize_srcu_expedited",
            "per memslot array swap (a delete does two)",
            range=(5000, 100000),
        ),
        "memslot_alloc_page": Cost(
            2,
            f"{_E}: kvcalloc of rmap + lpage_info per 4 KiB page",
            "per page of a new slot",
            range=(0.5, 5),
        ),
        "host_page_fault": Cost(
            1000,
            f"{_E}: hva_to_pfn's slow path, get_user_pages -> handle_mm_fault for one host"
            " page of guest RAM at first touch (page allocation, page-table update)",
            "per host page faulted in (4 KiB, or one 2 MiB THP)",
            range=(300, 5000),
        ),
        "host_page_zero": Cost(
            250,
            f"{_E}: clear_page of 4 KiB at ~16 GB/s; a 2 MiB THP is 512 of them",
            "per 4 KiB of a host page faulted in",
            range=(100, 1000),
        ),
        "memslot_free_page": Cost(
            2,
            f"{_E}: kvm_arch_free_memslot's kvfree of the rmap (8 B per gfn) and lpage_info"
            " arrays, as memslot_alloc_page allocates them",
            "per page of a slot freed at teardown",
            range=(0.5, 10),
        ),
        "vm_destroy": Cost(
            300000,
            f"{_E}: kvm_destroy_vm besides the zap: stop the NX huge page recovery task,"
            " free the vCPUs, mmu_notifier_unregister (an SRCU grace period),"
            " cleanup_srcu_struct; a few scheduler round trips and frees",
            "per VM destroyed",
            range=(50000, 2000000),
        ),
        "mmio_exit": Cost(
            5000,
            f"{_E}: exit to userspace and back for an access with no memslot",
            "per access",
            range=(2000, 15000),
        ),
        "lock_handoff": Cost(
            100,
            f"{_E}: qspinlock handoff, one cache-line transfer",
            "per contended acquire",
            range=(40, 300),
        ),
    },
)
