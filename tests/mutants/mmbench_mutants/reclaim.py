"""Broken reclaim policies at ``n_max_mmu_pages`` (``make_mmu_pages_available``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.shadow.mmu import ShadowMmu


class NeverReclaims:
    """Answers every reclaim with no victim: sps pile up past ``n_max_mmu_pages``."""

    name = "never-reclaims"
    archs = ("x86-shadow",)
    options: dict = {}

    @hookimpl
    def mmbench_reclaim(self, kvm: Kvm[ShadowMmu], nr_to_zap: int) -> np.ndarray:
        return np.array([], dtype=np.int64)


class ZapsRootsInUse:
    """Picks only the roots in use: each is just made invalid and frees nothing until its
    vCPUs reload, so sps pile up past ``n_max_mmu_pages``."""

    name = "zaps-roots-in-use"
    archs = ("x86-shadow",)
    options: dict = {}

    @hookimpl
    def mmbench_reclaim(self, kvm: Kvm[ShadowMmu], nr_to_zap: int) -> np.ndarray:
        order = kvm.mmu.oldest_mmu_pages()
        return order[kvm.mmu.root_in_use(order)][:nr_to_zap]


MUTANTS = (NeverReclaims, ZapsRootsInUse)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    for cls in MUTANTS:
        register(cls)
