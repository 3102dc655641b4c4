"""The VM API a workload drives, implemented by every backend (``sim``, ``kvm``).

A workload describes what the guest does (threads writing memory in passes) and what the
host does (a script of memslot ioctls and waits, run alongside the guest threads), and
reads back timings and kernel-named counters. The ``sim`` backend plays this on the
model's virtual clock; the ``kvm`` backend on /dev/kvm in real time. Times are ns.

Counters a backend cannot observe are absent from ``stats()``; workloads report only what
the backend measured, never a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class SlotSpec:
    id: int
    gpa: int
    size: int
    name: str = ""
    flags: int = 0


@dataclass(frozen=True)
class VmSpec:
    """What to build: slots present at creation, vCPUs, and each vCPU's mapped areas.

    ``areas_per_vcpu[v]`` lists the ``(gfn0, gfn1)`` runs vCPU ``v``'s guest process maps
    1:1 (virtual page n -> gfn n); guest page tables live from ``pt_gfn`` on.
    """

    slots: tuple[SlotSpec, ...]
    areas_per_vcpu: tuple[tuple[tuple[int, int], ...], ...]
    pt_gfn: int
    max_gfn: int
    # guest maps its areas with 2 MiB pages where aligned; on the x86-tdp and arm64 models,
    # the host backing (THP/hugetlbfs) allows 2 MiB stage-2/TDP leaves
    huge_pages: bool = False
    huge_page_size: int = 2 << 20  # the backing's page size when huge_pages (2 MiB or 1 GiB)
    # the host pages behind guest RAM (``mmbench.model.host_memory``): 2 MiB THP as QEMU
    # and the kvm backend madvise it, 4 KiB with ``--backing 4k``; allocated at first touch
    host_page_size: int = 2 << 20
    # Guest processes: with ``nr_vcpus`` set, ``areas_per_vcpu[p]`` is process p's address
    # space and vCPU v starts on process v; ``start_schedule`` switches them. 0: one each.
    nr_vcpus: int = 0
    # ``KVM_SET_NR_MMU_PAGES``; 0 leaves KVM's default (20 per mille of guest pages, >= 64)
    nr_mmu_pages: int = 0
    trace_mmu_pages: bool = False  # series "mmu_used_pages" and "pf_fixed" over time


@dataclass
class PassRecord:
    vcpu: int
    index: int
    start_ns: int
    end_ns: int
    faults: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class VmApi(Protocol):
    backend: str
    passes: list[PassRecord]

    # building and guest threads
    def create(self, spec: VmSpec) -> Any: ...
    def start_passes(
        self, vcpu_id: int, gfn0: int, gfn1: int, passes: int, write: bool = True
    ) -> None: ...
    def start_schedule(
        self, vcpu_id: int, slices: list[tuple[int, int, int]], write: bool = True
    ) -> None:
        """A guest scheduler on ``vcpu_id``: for each ``(process, gfn0, gfn1)`` switch CR3
        to the process if needed, then touch the range; one ``PassRecord`` per slice."""

    def start_loop(
        self, vcpu_id: int, gfn0: int, gfn1: int, until_ns: int, write: bool = False
    ) -> None:
        """Like ``start_passes`` but passes repeat until the backend clock reaches
        ``until_ns`` (a guest that "runs on" across a host operation)."""
        ...

    def stop_loop(self, vcpu_id: int) -> None:
        """End a ``start_loop`` guest at its next pass boundary (the selftest's
        ``make_guest_exit``)."""
        ...

    def max_memslots(self) -> int:
        """``KVM_CAP_NR_MEMSLOTS``: user memslots a VM may have."""
        ...

    def host_touch(self, gfn0: int, gfn1: int, write: bool = True) -> int:
        """Host user space reads or writes one qword per page of guest memory through its
        own mapping (no KVM involved; memslot_perf_test's rw loop). Returns ns taken."""
        ...

    def guests_done(self) -> bool: ...
    def passes_done(self, vcpu_id: int) -> int:
        """Passes the guest thread on ``vcpu_id`` has finished so far (while it runs)."""
        ...

    def run_host(self, script: Callable[[], None], name: str = "vmm") -> None: ...

    # the host script's calls
    def now_ns(self) -> int: ...
    def sleep_ns(self, ns: float) -> None: ...
    def add_memslot(self, slot_id: int, gpa: int, size: int, name: str = "") -> int: ...
    def delete_memslot(self, slot_id: int) -> int: ...
    def move_memslot(self, slot_id: int, new_gpa: int) -> int: ...
    def guest_access(self, vcpu_id: int, gfn0: int, gfn1: int, write: bool = False) -> int: ...
    def event(self, name: str, **data: Any) -> None: ...

    # the host mm changes guest memory under the running VM (the MMU notifier)
    def host_unmap(self, gpa: int, size: int, how: str) -> int:
        """The VMM unmaps ``[gpa, gpa + size)`` of guest memory's host mapping while the
        vCPUs run: ``how`` is ``"munmap"`` (a fresh anonymous mapping replaces it, as
        ``mmap(MAP_FIXED)`` does: ``MMU_NOTIFY_UNMAP``), ``"dontneed"``
        (``madvise(MADV_DONTNEED)``: ``MMU_NOTIFY_CLEAR``) or ``"mprotect"``
        (``mprotect(PROT_READ)``: ``MMU_NOTIFY_PROTECTION_VMA``; then back to read-write).
        KVM's MMU notifier zaps what maps the range. Returns ns the host call took."""
        ...

    # dirty logging (KVM_MEM_LOG_DIRTY_PAGES, GET/CLEAR_DIRTY_LOG, MANUAL_PROTECT2)
    def enable_manual_protect(self, initially_set: bool) -> None: ...
    def set_eager_page_split(self, on: bool) -> None:
        """Split huge pages when logging starts: the ``kvm.eager_page_split`` module
        parameter on x86, ``KVM_CAP_ARM_EAGER_SPLIT_CHUNK_SIZE`` on arm64."""
        ...

    def set_dirty_logging(self, slot_id: int, on: bool) -> int:
        """Toggle ``KVM_MEM_LOG_DIRTY_PAGES`` (``KVM_MR_FLAGS_ONLY``); returns ns taken."""
        ...

    def get_dirty_log(self, slot_id: int) -> tuple[int, int]:
        """Returns (ns taken, pages reported dirty)."""
        ...

    def clear_dirty_log(self, slot_id: int, first_page: int, npages: int) -> int: ...

    # teardown and figures
    def destroy(self) -> int: ...
    def stats(self) -> dict[str, float]:
        """Kernel-named counters observed: VM stats (``mmu_shadow_zapped``,
        ``mmu_cache_miss``, ``remote_tlb_flush``, ``pages_4k``...) plus per-vCPU stats summed
        over the guest threads' vCPUs (``pf_fixed``, ``exits``...); on the model also
        ``sptes_zapped`` and the mmu_lock figures ``mmu_lock_max_hold_ns``,
        ``vcpu_stall_ns``, ``vcpu_stall_max_ns``, ``lock_breaks`` (and by cause,
        ``lock_breaks_contention``, ``lock_breaks_resched``)."""
        ...

    def series(self) -> dict[str, list]: ...


def wake_waits_us(waits_us: list[float]) -> dict[str, float]:
    """The series keys both backends record for the VMM thread across one traced memslot
    ioctl: how often it was woken (each grace period it slept in), how long the first
    wake-up (the delete's invalidate) waited for a CPU, and all the waits' sum (us)."""
    return {
        "vmm_wakeups": len(waits_us),
        "vmm_first_wake_wait_us": round(waits_us[0], 1) if waits_us else 0.0,
        "vmm_cpu_wait_us": round(sum(waits_us), 1),
    }
