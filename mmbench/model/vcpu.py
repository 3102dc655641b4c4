"""A vCPU: pending requests (``KVM_REQ_MMU_RELOAD``, TLB flush) and guest accesses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmbench.model.engine import Actor

if TYPE_CHECKING:
    from mmbench.model.kvm import Kvm


class GuestShutdown(Exception):
    """``KVM_EXIT_SHUTDOWN``: the guest triple-faulted and its vCPU thread ends, as when
    ``mmu_check_root`` finds the guest's CR3 outside every visible memslot
    (``KVM_REQ_TRIPLE_FAULT``)."""


class Vcpu:
    def __init__(self, kvm: Kvm, vcpu_id: int) -> None:
        self.kvm = kvm
        self.id = vcpu_id
        self.request_reload = False
        self.pending_flushes = 0
        self.actor: Actor | None = None
        self.in_guest = False  # a kick (IPI) cuts a guest-mode run short
        self.reloading = False
        self.shutdown = False  # KVM_EXIT_SHUTDOWN: the guest thread on it has ended

    @property
    def stats(self):
        return self.kvm.stats.vcpu[self.id]

    def check_requests(self) -> None:
        """What ``vcpu_enter_guest`` does with pending requests before entering."""
        kvm = self.kvm
        if self.pending_flushes:
            self.stats["exits"] += 1
            kvm.charge(kvm.costs.vcpu_flush_exit)
            self.pending_flushes = 0
        if self.request_reload:
            self.request_reload = False
            self.stats["root_reloads"] += 1
            self.reloading = True  # request taken, the unload still waits for mmu_lock
            with kvm.mmu.root_lock():
                freed = kvm.mmu.kvm_mmu_unload(self.id)
                # an invalid shadow root freed by its last user (the TDP MMU frees none)
                zapped = freed * kvm.costs.zap_sp if freed else 0
                kvm.charge(kvm.costs.root_reload + zapped)
            self.reloading = False

    def access(self, gfn0: int, gfn1: int, write: bool = True) -> None:
        """Touch one qword in every 4 KiB page of ``[gfn0, gfn1)``, faulting as needed."""
        self.kvm.arch.touch(self.kvm, self, gfn0, gfn1, write)
