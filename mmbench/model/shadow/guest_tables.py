"""The guest's own page tables: what the shadow MMU shadows.

A Linux-like guest: each vCPU runs its own process whose page tables map its areas of
guest-physical memory 1:1 (virtual page n -> gfn n), with as many levels as the arch
backend says (x86: 4) and 4 KiB leaves. One guest page table (gpt) at level 1 maps one
2 MiB-aligned run of 512 gfns, so its shadow page's spte i maps gfn ``map_base + i``.
The page-table pages themselves live in guest RAM at ``pt_gfn_base`` onwards (the guest
kernel's memory), which is what ``sp->gfn`` names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PTES_PER_TABLE = 512
LEVEL_SHIFT = 9  # each level resolves 9 bits of the gfn


@dataclass
class Area:
    """A run of gfns a vCPU's process maps, and the id of its first level-1 gpt."""

    gfn0: int
    gfn1: int
    first_l1: int

    @property
    def region0(self) -> int:
        return self.gfn0 >> LEVEL_SHIFT


@dataclass
class GuestPageTables:
    level: np.ndarray  # int8, 4..1
    gfn: np.ndarray  # int64, gfn of the page-table page
    parent: np.ndarray  # int32, parent gpt or -1 for a root (CR3)
    map_base: np.ndarray  # int64, level 1: gfn mapped by entry 0; else -1
    roots: np.ndarray  # int32, root gpt per vCPU
    levels: int  # paging levels (the root's level)
    areas: list[list[Area]] = field(default_factory=list)
    _paths: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def count(self) -> int:
        return len(self.level)

    def area_of(self, vcpu: int, gfn: int) -> Area:
        for area in self.areas[vcpu]:
            if area.gfn0 <= gfn < area.gfn1:
                return area
        raise KeyError(f"vcpu {vcpu} does not map gfn 0x{gfn:x}")

    def path(self, l1: int) -> tuple[int, ...]:
        """gpt ids from the root down to ``l1`` (the tables never change: kept once
        found, as the fault path asks for the same few paths again and again)."""
        found = self._paths.get(l1)
        if found is None:
            out = [l1]
            while self.parent[out[-1]] >= 0:
                out.append(int(self.parent[out[-1]]))
            found = self._paths[l1] = tuple(out[::-1])
        return found


def build_identity_page_tables(
    areas_per_vcpu: list[list[tuple[int, int]]], pt_gfn_base: int, levels: int
) -> GuestPageTables:
    """Build per-vCPU ``levels``-level tables mapping each ``(gfn0, gfn1)`` area 1:1.

    Page-table pages are allocated sequentially from ``pt_gfn_base``.
    """
    level: list[int] = []
    gfn: list[int] = []
    parent: list[int] = []
    map_base: list[int] = []
    roots: list[int] = []
    areas: list[list[Area]] = []

    def new(lvl: int, par: int, base: int) -> int:
        level.append(lvl)
        gfn.append(pt_gfn_base + len(gfn))
        parent.append(par)
        map_base.append(base)
        return len(level) - 1

    for vcpu_areas in areas_per_vcpu:
        root = new(levels, -1, -1)
        roots.append(root)
        # upper tables of this process, keyed by (level, index at that level)
        uppers: dict[tuple[int, int], int] = {}
        mine: list[Area] = []
        for gfn0, gfn1 in vcpu_areas:
            r0, r1 = gfn0 >> LEVEL_SHIFT, (gfn1 - 1 >> LEVEL_SHIFT) + 1
            # level-1 tables of one area get consecutive ids, so region -> gpt is arithmetic
            first_l1 = len(level)
            for r in range(r0, r1):
                new(1, -1, r << LEVEL_SHIFT)
            for i, r in enumerate(range(r0, r1)):
                child = first_l1 + i
                for lvl in range(2, levels + 1):
                    if lvl == levels:
                        parent[child] = root
                        break
                    key = (lvl, r >> (LEVEL_SHIFT * (lvl - 1)))
                    if key not in uppers:
                        uppers[key] = new(lvl, -1, -1)
                        parent[child] = uppers[key]
                        child = uppers[key]
                        continue
                    parent[child] = uppers[key]
                    break
            mine.append(Area(gfn0, gfn1, first_l1))
        areas.append(mine)
    return GuestPageTables(
        level=np.array(level, dtype=np.int8),
        gfn=np.array(gfn, dtype=np.int64),
        parent=np.array(parent, dtype=np.int32),
        map_base=np.array(map_base, dtype=np.int64),
        roots=np.array(roots, dtype=np.int32),
        levels=levels,
        areas=areas,
    )
