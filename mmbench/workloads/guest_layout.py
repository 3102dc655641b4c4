"""Guest-physical layout pieces every workload uses: the kernel reserve at the bottom of
RAM (guest kernel and page tables), 2 MiB alignment, and one-slot guests on a backing."""

from __future__ import annotations

from typing import Any

from mmbench.backends.vmapi import SlotSpec, VmSpec
from mmbench.errors import ConfigError
from mmbench.model.memslots import PAGE_SHIFT
from mmbench.workloads.base import Param, choice
from mmbench.workloads.sizes import REGION, MiB, parse_size, size_text

REGION_PAGES = 512  # 4 KiB pages per 2 MiB: one leaf table, one huge page
KERNEL_RESERVE = 16 * MiB  # guest kernel image and data besides its page tables
HUGE_PAGE_SIZE = {"2m": 2 << 20, "1g": 1 << 30, "4k": 4 << 10}  # host backing's page
BACKINGS = ("2m", "1g", "4k")


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
        host_page_size=HUGE_PAGE_SIZE[backing],
    )


def vcpu_slices(
    size: int, vcpus: int, arch: Any, reserve_kernel: bool = True
) -> list[tuple[int, int]]:
    """Each vCPU's 2 MiB-aligned slice of guest memory (memstress style), above a reserve
    for the guest kernel and its page tables when ``reserve_kernel``: a real guest
    (--backend kvm) needs them, and shadow paging shadows them."""
    reserve = 0
    if reserve_kernel:
        n = (size >> PAGE_SHIFT) // vcpus  # an upper bound on each vCPU's slice
        pt_pages = arch.page_table_pages([[(v * n, (v + 1) * n)] for v in range(vcpus)]) + 16
        reserve = align_up(KERNEL_RESERVE + (pt_pages << PAGE_SHIFT), REGION)
    per = (size - reserve) // vcpus // REGION * REGION
    if per < REGION:
        raise ConfigError("--size", f"too small for {vcpus} vCPUs")
    pages, base = per >> PAGE_SHIFT, reserve >> PAGE_SHIFT
    return [(base + v * pages, base + (v + 1) * pages) for v in range(vcpus)]


def size_param(default: int, help: str) -> Param:
    return Param(
        "size", int, default, help, ("-b", "--size"), min=REGION, parse=parse_size, unit="size"
    )


def check_size(size: int, arch: Any) -> None:
    limit = arch.max_guest_bytes
    if size > limit:
        raise ConfigError(
            "--size",
            f"{size_text(size)} exceeds what arch {arch.name} models ({size_text(limit)})",
        )


def backing_param(default: str = "2m") -> Param:
    """``--backing``: the host memory behind guest RAM, which bounds the leaf size."""
    return Param(
        "backing",
        str,
        default,
        "host backing: 2m (THP/hugetlbfs), 1g (hugetlbfs 1 GiB pages) or 4k",
        parse=choice("--backing", BACKINGS),
    )
