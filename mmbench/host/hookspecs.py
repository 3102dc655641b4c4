"""Every mmbench hook, in one place.

Two kinds of hook, on two kinds of plugin manager:

* **Registration hooks** run once on the host manager (``mmbench.host.manager``). Each receives a
  ``register`` callback, as in ``llm``: the host keeps the registry, rejects duplicate
  names and remembers which plugin provided what. What a registered class must provide is
  in ``mmbench.host.contracts``; registration checks it and refuses, naming the plugin, a
  class with an ``mmbench_*`` attribute that lacks ``@hookimpl`` or names no hook.
* **Event hooks** run on a per-run manager that holds only that run's arch backend, policy
  and monitors. Selection hooks are ``firstresult``: an arch backend implements them as
  ``@hookimpl(trylast=True)``, the kernel's default, so a policy's implementation answers
  first whatever the registration order. Observer hooks (monitors, the invariant checker)
  see every event. Callers use the typed facade ``mmbench.host.hooks.RunHooks``.

All hooks are called with keyword arguments only (pluggy's rule).

**Tracing.** ``MMBENCH_TRACE_HOOKS=1`` prints every hook call to stderr, on the host manager
(registrations: which plugin registered what) and on every per-run manager: the hook, its
arguments in brief, the result, and the plugin that answered (for ``firstresult`` hooks)
or every plugin that was called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import numpy as np

    from mmbench.model.kvm import Kvm
    from mmbench.model.memslots import Memslot
    from mmbench.model.notifier import KvmGfnRange
    from mmbench.model.vcpu import Vcpu

PROJECT = "mmbench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
# the attribute pluggy's marker sets on a decorated function (what pluggy looks for)
IMPL_MARK = f"{PROJECT}_impl"
SPEC_MARK = f"{PROJECT}_spec"
TRACE_ENV = "MMBENCH_TRACE_HOOKS"


# --- registration hooks (host manager) ------------------------------------------------


@hookspec
def mmbench_register_policies(register: Callable[[Any], None]) -> None:
    """Register invalidation policies: ``register(PolicyClass)``.

    A policy class has ``name`` (CLI name), ``archs`` (arch backend names it applies to),
    optionally ``options`` (a dict of option name to default, settable as ``--policy
    NAME:opt=val``), ``year`` and ``paths``, and ``@hookimpl`` methods for the selection
    hooks; the full contract is ``mmbench.host.contracts.Policy``. The host instantiates it
    once per run.
    """


@hookspec
def mmbench_register_archs(register: Callable[[Any], None]) -> None:
    """Register arch backends: ``register(ArchClass)``.

    An arch backend builds the MMU model and the guest's page tables for a VM, handles
    vCPU memory accesses (faults, prefetch) and carries the cost table
    (``contracts.Arch``). It may implement the selection hooks below, as
    ``@hookimpl(trylast=True)``, for the kernel's default when a policy does not.
    """


@hookspec
def mmbench_register_workloads(register: Callable[[Any], None]) -> None:
    """Register workloads: ``register(WorkloadClass)`` (``name``, ``params``, ``metrics``,
    ``layout``, ``run``...: ``contracts.Workload``)."""


@hookspec
def mmbench_register_monitors(register: Callable[[Any], None]) -> None:
    """Register monitors: ``register(MonitorClass)``; observers of a run's event hooks
    (``contracts.Monitor``)."""


@hookspec
def mmbench_register_backends(register: Callable[[Any], None]) -> None:
    """Register backends: ``register(BackendClass)`` with ``name``, ``available() ->
    (bool, reason)`` and ``create_vm(hook, arch, costs) -> VmApi`` (``mmbench.backends.vmapi``;
    ``hook`` is the run's ``RunHooks``); the contract is ``contracts.Backend``.

    Optional, for real-time backends such as ``kvm``: ``exclusive = True`` (the runner
    runs policies one after another), ``supported_policies(names) -> names`` (the default
    policy list), ``check_policies(names, arch)`` (raise ConfigError before anything runs)
    and, on the VM, ``close()`` (called by the runner after the workload, on errors too)
    and ``costs_name`` (recorded instead of the unused cost table's name)."""


@hookspec
def mmbench_register_commands(register: Callable[[Any], None]) -> None:
    """Register CLI subcommands: ``register(CommandClass)`` with ``name``, ``help``,
    ``add_arguments(parser)`` and ``run(args) -> int`` (exit status): ``contracts.Command``."""


# --- selection hooks (per-run manager, firstresult) -------------------------------------


@hookspec(firstresult=True)
def mmbench_flush_shadow_memslot(kvm: Kvm, slot: Memslot) -> bool | None:
    """``kvm_arch_flush_shadow_memslot``: drop what maps ``slot`` before it is deleted or
    moved.

    Called with the slot already marked invalid (vCPUs can no longer fault it in) and
    mmu_lock *not* held. Return True once handled. After it returns, no spte may map a
    gfn of the slot and no sp may shadow a gfn in it: its rmaps are about to be freed.
    """


@hookspec(firstresult=True)
def mmbench_flush_shadow_all(kvm: Kvm) -> bool | None:
    """``kvm_arch_flush_shadow_all``: the VM is being destroyed; free every mapping.

    Called with no vCPU running and mmu_lock not held. Return True once handled.
    """


@hookspec(firstresult=True)
def mmbench_reclaim(kvm: Kvm, nr_to_zap: int) -> np.ndarray | None:
    """Pick sps to zap because the VM reached ``n_max_mmu_pages``
    (``make_mmu_pages_available`` -> ``kvm_mmu_zap_oldest_mmu_pages``).

    Called from a vCPU's page fault with mmu_lock held, until ``nr_to_zap`` pages are free.
    Return the victims (sp indices, in the order to zap); the core zaps them and counts
    ``mmu_recycled``. A root still in use frees nothing until its vCPUs reload, so the
    hook is called again. Return an empty array when nothing may be zapped. The arch
    backend's answer (FIFO: the list tail) is the default.
    """


@hookspec(firstresult=True)
def mmbench_dirty_log_enable(kvm: Kvm, slot: Memslot) -> bool | None:
    """``kvm_mmu_slot_apply_flags`` when ``KVM_MEM_LOG_DIRTY_PAGES`` is set on ``slot``.

    Called with the new slot installed (flag set, dirty bitmap allocated: all ones if
    ``kvm.initially_set``) and mmu_lock not held. Typical: split huge pages eagerly if
    ``kvm.eager_split``, then write-protect the slot unless manual-protect with
    initially-set defers that to ``KVM_CLEAR_DIRTY_LOG``. Return True once handled. After
    it returns no writable spte may map a page the dirty bitmap does not have set.
    """


@hookspec(firstresult=True)
def mmbench_dirty_log_disable(kvm: Kvm, slot: Memslot) -> bool | None:
    """``kvm_mmu_slot_apply_flags`` when ``KVM_MEM_LOG_DIRTY_PAGES`` is cleared on ``slot``
    (a live migration completed or rolled back).

    Called with the new slot installed (flag clear) and mmu_lock not held. Nothing is
    required for correctness; the question is how and when 4 KiB sptes become huge again:
    zap the collapsible ones now, later from a worker (``kvm.engine.spawn``), or install
    huge sptes in place. Return True once handled.
    """


@hookspec(firstresult=True)
def mmbench_unmap_gfn_range(kvm: Kvm, range: KvmGfnRange) -> bool | None:
    """``kvm_unmap_gfn_range``: the host mm invalidates ``range`` of one memslot (the MMU
    notifier's ``invalidate_range_start``, ``mmbench.model.notifier``).

    Called with mmu_lock held for write, ``kvm_mmu_invalidate_begin`` done and the range
    added, so vCPU faults on it retry until the invalidation ends. ``range.may_block``
    says whether the walk may yield (``cond_resched``); ``range.event`` is the notifier's
    event (``"unmap"``, ``"clear"``, ``"protection_vma"``, ``"migrate"``...). Drop every
    spte mapping the range; return True if remote TLBs still need a flush (the caller
    flushes once, before mmu_lock is dropped), False if none is owed (e.g. arm64's
    per-IPA TLBIs). After ``invalidate_range_end`` no spte may map the range.
    """


# --- observer hooks (per-run manager) ---------------------------------------------------


@hookspec
def mmbench_vm_created(kvm: Kvm) -> None:
    """The VM, its memslots, vCPUs and MMU exist; nothing is mapped yet."""


@hookspec
def mmbench_vm_destroyed(kvm: Kvm) -> None:
    """The VM has been torn down (after ``mmbench_flush_shadow_all``)."""


@hookspec
def mmbench_memslot_created(kvm: Kvm, slot: Memslot) -> None:
    """A memslot was added (``KVM_MR_CREATE``)."""


@hookspec
def mmbench_memslot_deleted(kvm: Kvm, slot: Memslot, change: str) -> None:
    """A memslot was deleted (``change="delete"``) or moved away (``change="move"``).

    Called after the flush completed and the slot left the memslot array: this is where
    invariants about stale mappings are checked.
    """


@hookspec
def mmbench_memslot_flags_changed(kvm: Kvm, slot: Memslot, old: Memslot) -> None:
    """``KVM_MR_FLAGS_ONLY``: ``slot`` replaced ``old`` (same gfns, new flags) and the
    dirty-log enable/disable selection hook has returned: where invariants are checked."""


@hookspec
def mmbench_dirty_log_cleared(kvm: Kvm, slot: Memslot, first_page: int, npages: int) -> None:
    """``KVM_GET_DIRTY_LOG`` (without manual protect: the whole slot) or
    ``KVM_CLEAR_DIRTY_LOG`` re-armed write protection for a range of ``slot``."""


@hookspec
def mmbench_page_fault(kvm: Kvm, vcpu: Vcpu, gfn: int, npages: int, faults: int) -> None:
    """A vCPU took ``faults`` shadow page faults over ``[gfn, gfn + npages)``.

    Called once per fault batch, not per fault; only if some plugin implements it.
    """


@hookspec
def mmbench_mmu_pages_reclaimed(kvm: Kvm, zapped: int) -> None:
    """Reclaim at ``n_max_mmu_pages`` zapped ``zapped`` sps and flushed remote TLBs;
    called with mmu_lock held (the invariant checker looks here)."""


@hookspec
def mmbench_mmu_notifier_invalidated(kvm: Kvm, gfn0: int, gfn1: int, event: str) -> None:
    """``kvm_mmu_notifier_invalidate_range_end`` finished for gfns ``[gfn0, gfn1)``
    (``mmu_invalidate_seq`` bumped, mmu_lock dropped): where the invariant that nothing
    maps the range is checked. Faults may map it again from here on."""


@hookspec
def mmbench_workload_event(kvm: Kvm, name: str, data: dict[str, Any]) -> None:
    """A workload-level event (e.g. ``rom-read``), for tracing and time series."""
