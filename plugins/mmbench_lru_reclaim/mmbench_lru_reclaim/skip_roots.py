"""Policy ``skip-roots``: FIFO that never zaps a root in use."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.shadow.mmu import ShadowMmu


class SkipRoots:
    """FIFO reclaim that never zaps a root in use (root_count != 0).

    The first improvement found in the seed 004 thread ("not zapping shadow pages with
    root_count != 0 already makes much difference", Max Laier, 2009); today's
    ``kvm_mmu_zap_oldest_mmu_pages()`` does the same.

    A root in use cannot be freed anyway, only made invalid, and zapping it makes every
    vCPU reload and rebuild its tables.
    """

    name = "skip-roots"
    year = 2009  # seed 004
    archs = ("x86-shadow",)
    options: dict[str, object] = {}

    @hookimpl
    def mmbench_reclaim(self, kvm: Kvm[ShadowMmu], nr_to_zap: int) -> np.ndarray:
        return kvm.mmu.oldest_mmu_pages(nr_to_zap, skip_roots=True)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(SkipRoots)
