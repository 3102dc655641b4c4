"""Policy ``fifo``: zap the oldest shadow page, as KVM did in 2009."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.shadow.mmu import ShadowMmu
from mmbench.model.shadow.reclaim import fifo_reclaim


class Fifo:
    """FIFO reclaim: zap the oldest sp, as KVM did in 2009 (seed 004).

    ``__kvm_mmu_free_some_pages()`` before the "smarter shadow page reclaim" RFC.

    Zap the tail of ``active_mmu_pages`` (the oldest sp) until ``KVM_REFILL_PAGES`` are
    free, whatever it is: a hot leaf, a directory, or a root a vCPU is running on (which
    is only made invalid and forces every vCPU to reload). This is the x86-shadow arch's
    default as a named policy, so it can be selected and compared: both answer with the
    model's ``fifo_reclaim``.
    """

    name = "fifo"
    year = 2007  # KVM's reclaim from the start
    archs = ("x86-shadow",)
    options: dict[str, object] = {}

    @hookimpl
    def mmbench_reclaim(self, kvm: Kvm[ShadowMmu], nr_to_zap: int) -> np.ndarray:
        return fifo_reclaim(kvm, nr_to_zap)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    register(Fifo)
