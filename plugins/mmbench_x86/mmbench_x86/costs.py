"""Default cost table of the x86 shadow MMU on bare metal.

Each cost is ``Cost.measured``, ``Cost.derived`` (from a cited public figure) or
``Cost.estimate`` (with its range), see ``mmbench/model/costs.py``; ``mmbench list
--costs x86-shadow`` prints them. ``mmbench calibrate`` measures the ones this host's
kernel can separate and writes a table for ``--costs``.

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

X86_SHADOW_BARE_METAL = CostTable(
    "x86-shadow bare metal",
    {
        "touch_page": Cost.derived(
            165,
            "guest writes one qword in a mapped page: TLB miss, 2D walk, cache miss",
            ref="seed 001, 'KVM: x86/mmu: Zap only the relevant pages when removing a"
            " memslot' (Sean Christopherson, 2019)",
            figure="84.768 ms per 2000 MB pass of mmtest -c 8 -m 2000 on the zap-slot kernel",
            derivation="84.768 ms / (2000 MiB / 4 KiB) = 165 ns per page when passes do not"
            " fault; 150 ns if mmtest's loop and the pass's few faults take a tenth",
            range=(150, 175),
        ),
        "fault_exit": Cost.estimate(
            1500,
            "VM exit + entry ~1.2k cycles (kvm-unit-tests vmexit) plus the guest"
            " page-table walk and gfn_to_pfn, at ~2.5 GHz",
            "the part of a shadow page fault outside mmu_lock",
            range=(800, 3000),
        ),
        "fault_locked": Cost.estimate(
            400,
            "kvm_mmu_get_page hash lookups + mmu_set_spte under mmu_lock",
            "the mmu_lock section of a shadow page fault",
            range=(200, 1000),
        ),
        "spte_install": Cost.estimate(
            25,
            "rmap_add + spte write per (pre)fetched spte",
            "per spte installed",
            range=(10, 60),
        ),
        "sp_alloc": Cost.estimate(
            600,
            "kvm_mmu_alloc_page from the memory cache, 4 KiB clear, hash insert,"
            " account_shadowed write-protect",
            "per shadow page allocated (mmu_cache_miss)",
            range=(300, 1500),
        ),
        "zap_sp": Cost.estimate(
            250,
            "unlink parents, hash removal, list move, free",
            "per sp zapped",
            range=(100, 600),
        ),
        "zap_spte": Cost.measured(
            45,
            "a ROM-slot delete with SLOT_ZAP_ALL on zapped all ~0.5 M sptes in ~24 ms, ~48 ns"
            " per spte (one delete; the spread is this host's up-to-3x run-to-run noise)",
            "per spte or child link dropped when an sp is zapped or an rmap is zapped",
            host="the development host (nested: kvm_pvm, tdp_mmu=N, 2 CPUs)",
            kernel="6.18",
            preempt="none",
            date="2026-11-23",
            spread=(16, 144),
        ),
        "sp_scan": Cost.estimate(
            30,
            "one active_mmu_pages step plus test_and_clear_bit on the parent_pte"
            " (a locked RMW on a likely cold line)",
            "per sp looked at by a reclaim scan (seed 004's kvm_mmu_get_inactive_page)",
            range=(10, 100),
        ),
        "rmap_walk": Cost.estimate(
            8, "one rmap head visited, empty", "per rmap head walked", range=(2, 20)
        ),
        "remote_tlb_flush": Cost.estimate(
            4000,
            "IPI all vCPUs and wait for them (KVM_REQUEST_WAIT)",
            "per flush",
            range=(1000, 10000),
        ),
        "kick_vcpu": Cost.estimate(
            300, "kvm_make_all_cpus_request per vCPU", "per vCPU kicked", range=(100, 1000)
        ),
        "vcpu_flush_exit": Cost.estimate(
            1200,
            "the vCPU's exit + TLB flush + entry",
            "vCPU side of a flush",
            range=(500, 3000),
        ),
        "root_reload": Cost.estimate(
            1000,
            "kvm_mmu_unload + kvm_mmu_load bookkeeping",
            "per root reload",
            range=(300, 3000),
        ),
        "memslot_update": Cost.estimate(
            20000,
            "install the new memslot array + synchronize_srcu_expedited",
            "per memslot array swap (a delete does two)",
            range=(5000, 100000),
        ),
        "memslot_alloc_page": Cost.estimate(
            2,
            "kvcalloc of rmap + lpage_info per 4 KiB page",
            "per page of a new slot",
            range=(0.5, 5),
        ),
        "host_page_fault": Cost.estimate(
            1000,
            "hva_to_pfn's slow path, get_user_pages -> handle_mm_fault for one host page of"
            " guest RAM at first touch (page allocation, page-table update)",
            "per host page faulted in (4 KiB, or one 2 MiB THP)",
            range=(300, 5000),
        ),
        "host_page_zero": Cost.estimate(
            250,
            "clear_page of 4 KiB at ~16 GB/s; a 2 MiB THP is 512 of them",
            "per 4 KiB of a host page faulted in",
            range=(100, 1000),
        ),
        "memslot_free_page": Cost.estimate(
            2,
            "kvm_arch_free_memslot's kvfree of the rmap (8 B per gfn) and lpage_info arrays,"
            " as memslot_alloc_page allocates them",
            "per page of a slot freed at teardown",
            range=(0.5, 10),
        ),
        "vm_destroy": Cost.estimate(
            300000,
            "kvm_destroy_vm besides the zap: stop the NX huge page recovery task, free the"
            " vCPUs, mmu_notifier_unregister (an SRCU grace period), cleanup_srcu_struct; a"
            " few scheduler round trips and frees",
            "per VM destroyed",
            range=(50000, 2000000),
        ),
        "mmio_exit": Cost.estimate(
            5000,
            "exit to userspace and back for an access with no memslot",
            "per access",
            range=(2000, 15000),
        ),
        "lock_handoff": Cost.estimate(
            100,
            "qspinlock handoff, one cache-line transfer",
            "per contended acquire",
            range=(40, 300),
        ),
    },
)
