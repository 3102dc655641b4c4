"""Guest-physical layout pieces every workload uses: the kernel reserve at the bottom of
RAM (guest kernel and page tables), 2 MiB alignment, and one-slot guests on a backing."""

from __future__ import annotations

from mmbench.model.memslots import PAGE_SHIFT
from mmbench.vmapi import SlotSpec, VmSpec
from mmbench.workloads.sizes import MiB

REGION_PAGES = 512  # 4 KiB pages per 2 MiB: one leaf table, one huge page
KERNEL_RESERVE = 16 * MiB  # guest kernel image and data besides its page tables
HUGE_PAGE_SIZE = {"2m": 2 << 20, "1g": 1 << 30, "4k": 4 << 10}  # host backing's page


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def one_slot_guest(
    size: int, areas: list[tuple[int, int]], pt_gfn: int, backing: str, slot_id: int = 0
) -> VmSpec:
    """A guest whose memory is one memslot, each vCPU mapping one area of it."""
    return VmSpec(
        slots=(SlotSpec(slot_id, 0, size, "guest memory"),),
        areas_per_vcpu=tuple((a,) for a in areas),
        pt_gfn=pt_gfn,
        max_gfn=size >> PAGE_SHIFT,
        huge_pages=backing != "4k",
        huge_page_size=HUGE_PAGE_SIZE[backing],
    )
