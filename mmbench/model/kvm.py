"""``struct kvm`` of the model: memslots, vCPUs, the MMU, mmu_lock, stats, the run's hooks.

Host-side operations (``KVM_SET_USER_MEMORY_REGION``, destroy) run on the calling actor's
clock and dispatch to the run's policy through the event hooks.
"""

from __future__ import annotations

from typing import Any

import pluggy

from mmbench.errors import ConfigError, ModelError
from mmbench.model.costs import CostTable
from mmbench.model.engine import Engine
from mmbench.model.lock import MmuLock
from mmbench.model.memslots import PAGE_SHIFT, Memslot, Memslots
from mmbench.model.stats import Stats
from mmbench.model.vcpu import Vcpu


class Kvm:
    def __init__(
        self,
        engine: Engine,
        hook: pluggy.HookRelay,
        arch: Any,
        costs: CostTable,
        nr_vcpus: int,
        max_gfn: int,
    ) -> None:
        self.engine = engine
        self.hook = hook
        self.arch = arch
        self.costs = costs
        self.stats = Stats()
        self.mmu_lock = MmuLock(engine, costs.lock_handoff)
        self.memslots = Memslots(max_gfn)
        self.vcpus = [Vcpu(self, i) for i in range(nr_vcpus)]
        self.mmu: Any = None  # built by the arch backend
        self.destroyed = False
        self.trace_faults = bool(hook.mmbench_page_fault.get_hookimpls())

    # -- clock -----------------------------------------------------------------------------
    @property
    def now(self) -> int:
        return self.engine.now

    def charge(self, ns: float) -> None:
        self.engine.sleep(ns)

    # -- cross-vCPU requests ---------------------------------------------------------------
    def kick_vcpus(self) -> None:
        """IPI every vCPU in guest mode so it exits and sees its requests."""
        for vcpu in self.vcpus:
            if vcpu.in_guest and vcpu.actor is not None:
                self.engine.interrupt(vcpu.actor)

    def flush_remote_tlbs(self) -> None:
        """``kvm_flush_remote_tlbs``: every vCPU exits and flushes before we go on."""
        self.stats.vm["remote_tlb_flush_requests"] += 1
        self.stats.vm["remote_tlb_flush"] += 1
        for vcpu in self.vcpus:
            vcpu.pending_flushes += 1
        self.kick_vcpus()
        self.charge(self.costs.remote_tlb_flush + len(self.vcpus) * self.costs.kick_vcpu)
        self.mmu.tlbs_dirty = False

    def flush_remote_tlbs_if_dirty(self) -> None:
        if self.mmu.tlbs_dirty:
            self.flush_remote_tlbs()

    def reload_remote_mmus(self) -> None:
        """``kvm_reload_remote_mmus``: every vCPU drops its root at its next entry."""
        self.stats.vm["mmu_reload_requests"] += 1
        for vcpu in self.vcpus:
            vcpu.request_reload = True
        self.kick_vcpus()
        self.charge(len(self.vcpus) * self.costs.kick_vcpu)

    # -- KVM_SET_USER_MEMORY_REGION ----------------------------------------------------------
    def create_memslot(
        self, slot_id: int, gpa: int, size: int, flags: int = 0, name: str = ""
    ) -> Memslot:
        if gpa % (1 << PAGE_SHIFT) or size % (1 << PAGE_SHIFT):
            raise ConfigError("memslot", f"gpa 0x{gpa:x} and size 0x{size:x} must be 4 KiB aligned")
        slot = Memslot(slot_id, gpa >> PAGE_SHIFT, size >> PAGE_SHIFT, flags, name)
        self.memslots.check_new(slot_id, slot.base_gfn, slot.npages)
        # kvm_arch_prepare_memory_region: rmap and lpage_info arrays; then publish + SRCU
        self.charge(self.costs.memslot_update + slot.npages * self.costs.memslot_alloc_page)
        self.memslots.add(slot)
        self.hook.mmbench_memslot_created(kvm=self, slot=slot)
        return slot

    def _invalidate_slot(self, slot: Memslot) -> None:
        """Publish the slot as KVM_MEMSLOT_INVALID, then let the policy drop its mappings."""
        slot.invalid = True
        self.charge(self.costs.memslot_update)
        handled = self.hook.mmbench_flush_shadow_memslot(kvm=self, slot=slot)
        if not handled:
            raise ModelError(f"no policy handled kvm_arch_flush_shadow_memslot for {slot}")

    def delete_memslot(self, slot_id: int) -> Memslot:
        slot = self.memslots.get(slot_id)
        self._invalidate_slot(slot)
        self.memslots.remove(slot)
        self.charge(self.costs.memslot_update)
        self.hook.mmbench_memslot_deleted(kvm=self, slot=slot, change="delete")
        return slot

    def move_memslot(self, slot_id: int, new_gpa: int) -> Memslot:
        slot = self.memslots.get(slot_id)
        new_base = new_gpa >> PAGE_SHIFT
        self.memslots.check_new(slot_id, new_base, slot.npages, field="memslot move")
        self._invalidate_slot(slot)
        self.memslots.remove(slot)
        self.hook.mmbench_memslot_deleted(kvm=self, slot=slot, change="move")
        moved = Memslot(slot.id, new_base, slot.npages, slot.flags, slot.name)
        self.memslots.add(moved)
        self.charge(self.costs.memslot_update)
        self.hook.mmbench_memslot_created(kvm=self, slot=moved)
        return moved

    # -- teardown ----------------------------------------------------------------------------
    def destroy(self) -> None:
        """``kvm_destroy_vm`` -> ``kvm_arch_flush_shadow_all``; no vCPU runs any more."""
        for vcpu in self.vcpus:
            self.mmu.kvm_mmu_unload(vcpu.id)
        handled = self.hook.mmbench_flush_shadow_all(kvm=self)
        if not handled:
            raise ModelError("no policy or arch handled kvm_arch_flush_shadow_all")
        self.destroyed = True
        self.hook.mmbench_vm_destroyed(kvm=self)
