"""``struct kvm`` of the model: memslots, vCPUs, the MMU, mmu_lock, stats, the run's hooks.

Host-side operations (``KVM_SET_USER_MEMORY_REGION``, destroy) run on the calling actor's
clock and dispatch to the run's policy through the event hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from mmbench.errors import ConfigError, ModelError
from mmbench.model.costs import CostTable
from mmbench.model.engine import Engine
from mmbench.model.host_memory import HostMemory
from mmbench.model.lock import MmuLock
from mmbench.model.memslots import KVM_MEM_LOG_DIRTY_PAGES, PAGE_SHIFT, Memslot, Memslots
from mmbench.model.mmu import Mmu
from mmbench.model.notifier import MmuNotifier
from mmbench.model.sched import KernelConfig
from mmbench.model.stats import Stats
from mmbench.model.vcpu import Vcpu

if TYPE_CHECKING:
    from mmbench.host.hooks import RunHooks

MmuT = TypeVar("MmuT", bound=Mmu)


class Kvm(Generic[MmuT]):
    """One VM. ``Kvm[ShadowMmu]`` or ``Kvm[RegionMmu]``: the arch backend builds ``mmu``,
    so a policy states in its hook signature which MMU family it drives."""

    def __init__(
        self,
        engine: Engine,
        hook: RunHooks,
        arch: Any,
        costs: CostTable,
        nr_vcpus: int,
        max_gfn: int,
        kernel: KernelConfig | None = None,
    ) -> None:
        self.engine = engine
        self.kernel = kernel or KernelConfig()  # the host kernel: preempt model, HZ, CPUs
        self.hook: RunHooks = hook  # typed calls of the run's event hooks
        self.arch = arch
        self.costs = costs
        self.stats = Stats()
        self.mmu_lock = MmuLock(engine, costs.lock_handoff, self.kernel)
        self.memslots = Memslots(max_gfn)
        self.vcpus = [Vcpu(self, i) for i in range(nr_vcpus)]
        self.mmu: MmuT = None  # type: ignore[assignment]  # built by the arch's setup()
        self.destroyed = False
        # remote TLB flushes IPI the vCPUs (x86); an arch with broadcast TLBI clears this
        self.flush_ipis = True
        self.trace_faults = hook.implemented("mmbench_page_fault")
        # KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 and the eager_page_split knob (dirty logging)
        self.manual_protect = False
        self.initially_set = False
        self.eager_split = False
        # the host backing of guest memory (set by the VM API): huge leaves allowed, and
        # the backing's page size (2 MiB THP/hugetlbfs or 1 GiB hugetlbfs)
        self.huge_pages = False
        self.huge_page_size = 4096
        # which host pages of guest RAM exist yet (the VM API sets the backing's size)
        self.host_memory = HostMemory(max_gfn, 2 << 20)
        # kvm->mmu_notifier and the mmu_invalidate_* state faults check (host unmaps)
        self.notifier = MmuNotifier(self)
        # per synchronize_srcu_expedited, the caller's wait for a CPU after it (ns)
        self.gp_wake_waits: list[int] = []

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

    def flush_remote_tlbs(self, count: int = 1) -> None:
        """``kvm_flush_remote_tlbs``, ``count`` times over (a batch of faults that each
        flushed once): every vCPU flushes before it runs guest code again.

        Where the arch flushes by IPI (x86, ``kvm_make_all_cpus_request(kvm,
        KVM_REQ_TLB_FLUSH)``) every vCPU gets the request, but only those in guest mode
        (``kvm_request_needs_ipi``: ``IN_GUEST_MODE``) are sent an IPI, and the caller
        waits for each of them to ack (``KVM_REQUEST_WAIT``): the cost grows with the
        vCPUs running guest code. As the kernel counts, ``remote_tlb_flush_requests``
        counts every call and ``remote_tlb_flush`` only those that sent an IPI
        (``kvm_make_all_cpus_request`` returned true). Where the hardware broadcasts TLB
        maintenance (arm64 ``__kvm_tlb_flush_vmid``: ``TLBI VMALLS12E1IS``) no vCPU is
        kicked, each flush counts (``kvm_arch_flush_remote_tlbs`` succeeded) and one
        ``tlbi``. The one remote flush of both MMU families.
        """
        c = self.costs
        st = self.stats.vm
        st["remote_tlb_flush_requests"] += count
        if self.flush_ipis:
            me = self.engine.current
            acks = [
                v for v in self.vcpus if v.in_guest and v.actor is not None and v.actor is not me
            ]
            for vcpu in self.vcpus:
                vcpu.pending_flushes += 1
            per = 0.0  # no vCPU in the guest: request bits only, no IPI to wait for
            if acks:
                st["remote_tlb_flush"] += count
                per = c.remote_tlb_flush + len(acks) * c.kick_vcpu
                self.kick_vcpus()
        else:
            st["remote_tlb_flush"] += count
            st["tlbi"] += count
            per = c.remote_tlb_flush
        self.charge(count * per)
        self.mmu.tlbs_dirty = False
        self.mmu.zapped_unflushed = False

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
    def synchronize_srcu_expedited(self, *, first_of_delete: bool = False) -> None:
        """``kvm_swap_active_memslots`` (virt/kvm/kvm_main.c, 5.17+; ``install_new_memslots``
        before): publish the new memslot array, then ``synchronize_srcu_expedited``. The
        grace period is driven by ``process_srcu`` in a kworker queued on the caller's
        CPU while the caller sleeps: the kworker takes the CPU the caller leaves and
        hands it back. The time is ``memslot_update``'s; the first grace period of a
        delete may then wait for a CPU under eevdf (``Scheduler.grace_period_wake_wait_ns``:
        off the CPUs meanwhile, which the vCPUs have). ``gp_wake_waits`` has each wait."""
        self.charge(self.costs.memslot_update)
        wait = self.mmu_lock.sched.grace_period_wake_wait_ns() if first_of_delete else 0
        if wait:
            self.engine.idle(wait)
        self.gp_wake_waits.append(wait)

    def create_memslot(
        self, slot_id: int, gpa: int, size: int, flags: int = 0, name: str = ""
    ) -> Memslot:
        if gpa % (1 << PAGE_SHIFT) or size % (1 << PAGE_SHIFT):
            raise ConfigError("memslot", f"gpa 0x{gpa:x} and size 0x{size:x} must be 4 KiB aligned")
        slot = Memslot(slot_id, gpa >> PAGE_SHIFT, size >> PAGE_SHIFT, flags, name)
        self.memslots.check_new(slot_id, slot.base_gfn, slot.npages)
        if self.mmu is not None:  # the MMU model's own limits on a layout
            self.mmu.check_new_slot(slot_id, slot.base_gfn, slot.npages)
        # kvm_arch_prepare_memory_region: rmap and lpage_info arrays; then publish + SRCU
        self.charge(slot.npages * self.costs.memslot_alloc_page)
        self.synchronize_srcu_expedited()
        self.memslots.add(slot)
        self.hook.mmbench_memslot_created(kvm=self, slot=slot)
        return slot

    def _invalidate_slot(self, slot: Memslot, *, delete: bool = False) -> None:
        """Publish the slot as KVM_MEMSLOT_INVALID, then let the policy drop its mappings."""
        self.memslots.invalidate(slot)
        self.synchronize_srcu_expedited(first_of_delete=delete)
        handled = self.hook.mmbench_flush_shadow_memslot(kvm=self, slot=slot)
        if not handled:
            raise ModelError(f"no policy handled kvm_arch_flush_shadow_memslot for {slot}")

    def delete_memslot(self, slot_id: int) -> Memslot:
        slot = self.memslots.get(slot_id)
        self._invalidate_slot(slot, delete=True)
        self.memslots.remove(slot)
        self.synchronize_srcu_expedited()
        self.hook.mmbench_memslot_deleted(kvm=self, slot=slot, change="delete")
        return slot

    def move_memslot(self, slot_id: int, new_gpa: int) -> Memslot:
        slot = self.memslots.get(slot_id)
        new_base = new_gpa >> PAGE_SHIFT
        self.memslots.check_new(slot_id, new_base, slot.npages, field="memslot move")
        self.mmu.check_new_slot(slot_id, new_base, slot.npages)
        self._invalidate_slot(slot)
        self.memslots.remove(slot)
        self.hook.mmbench_memslot_deleted(kvm=self, slot=slot, change="move")
        moved = Memslot(slot.id, new_base, slot.npages, slot.flags, slot.name)
        self.memslots.add(moved)
        self.synchronize_srcu_expedited()
        self.hook.mmbench_memslot_created(kvm=self, slot=moved)
        return moved

    # -- dirty logging: KVM_MR_FLAGS_ONLY, KVM_GET_DIRTY_LOG, KVM_CLEAR_DIRTY_LOG ---------------
    def set_memslot_flags(self, slot_id: int, flags: int) -> Memslot:
        """``KVM_SET_USER_MEMORY_REGION`` with the same gpa and size and new ``flags``.

        A new slot replaces the old one (the kernel copies ``struct kvm_memory_slot``);
        toggling ``KVM_MEM_LOG_DIRTY_PAGES`` runs the enable or disable selection hook.
        """
        old = self.memslots.get(slot_id)
        new = Memslot(old.id, old.base_gfn, old.npages, flags, old.name)
        toggled = (old.flags ^ flags) & KVM_MEM_LOG_DIRTY_PAGES
        if toggled and not self.mmu.supports_dirty_log:
            raise ConfigError("--arch", f"arch {self.arch.name} does not model dirty logging")
        if toggled and flags & KVM_MEM_LOG_DIRTY_PAGES:  # kvm_alloc_dirty_bitmap
            self.charge(old.npages * self.costs.dirty_bitmap_page)
        self.memslots.replace(old, new)
        self.synchronize_srcu_expedited()
        if toggled:
            if flags & KVM_MEM_LOG_DIRTY_PAGES:
                self.mmu.dirty_log_start(new, self.initially_set)
                handled = self.hook.mmbench_dirty_log_enable(kvm=self, slot=new)
            else:
                self.mmu.dirty_log_stop(new)
                handled = self.hook.mmbench_dirty_log_disable(kvm=self, slot=new)
            if not handled:
                raise ModelError(f"no policy or arch handled the dirty-log change of {new}")
        self.hook.mmbench_memslot_flags_changed(kvm=self, slot=new, old=old)
        return new

    def _logged(self, slot_id: int) -> Memslot:
        slot = self.memslots.get(slot_id)
        if not slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
            raise ConfigError("dirty log", f"{slot} does not have KVM_MEM_LOG_DIRTY_PAGES set")
        return slot

    def get_dirty_log(self, slot_id: int) -> int:
        """``KVM_GET_DIRTY_LOG``: returns pages reported dirty. Without manual protect the
        bitmap is also cleared and the dirty pages write-protected again, under mmu_lock."""
        slot = self._logged(slot_id)
        dirty = self.mmu.get_dirty_log(slot, protect=not self.manual_protect)
        if not self.manual_protect:
            self.hook.mmbench_dirty_log_cleared(
                kvm=self, slot=slot, first_page=0, npages=slot.npages
            )
        return dirty

    def clear_dirty_log(self, slot_id: int, first_page: int, npages: int) -> int:
        """``KVM_CLEAR_DIRTY_LOG`` (manual protect only): clear and write-protect a range.
        Returns pages cleared."""
        slot = self._logged(slot_id)
        if not self.manual_protect:
            raise ConfigError("clear_dirty_log", "needs KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
        if first_page < 0 or npages <= 0 or first_page + npages > slot.npages:
            raise ConfigError(
                "clear_dirty_log", f"pages {first_page}+{npages} outside {slot} ({slot.npages})"
            )
        cleared = self.mmu.clear_dirty_log(slot, first_page, npages)
        self.hook.mmbench_dirty_log_cleared(
            kvm=self, slot=slot, first_page=first_page, npages=npages
        )
        return cleared

    # -- teardown ----------------------------------------------------------------------------
    def destroy(self) -> None:
        """``kvm_destroy_vm`` -> ``kvm_arch_flush_shadow_all``; no vCPU runs any more."""
        for vcpu in self.vcpus:
            self.mmu.kvm_mmu_unload(vcpu.id)
        handled = self.hook.mmbench_flush_shadow_all(kvm=self)
        if not handled:
            raise ModelError("no policy or arch handled kvm_arch_flush_shadow_all")
        # the rest of kvm_destroy_vm (virt/kvm/kvm_main.c, v6.18): the NX huge page
        # recovery task stopped (kvm_arch_pre_destroy_vm), vCPUs freed, the MMU notifier
        # unregistered (an SRCU grace period), and each memslot's metadata freed
        # (kvm_free_memslot -> kvm_arch_free_memslot: rmaps, lpage_info)
        pages = sum(s.npages for s in self.memslots.slots.values())
        self.charge(self.costs.vm_destroy + pages * self.costs.memslot_free_page)
        self.destroyed = True
        self.hook.mmbench_vm_destroyed(kvm=self)
