"""The ``sim`` backend's VM API: what a workload calls, played on the model's timeline.

A workload builds the VM (memslots, vCPUs and what each vCPU's process maps), starts
guest threads that touch memory in passes, and runs a host script (the VMM's ioctls, a
guest script like rom.sh) concurrently with them. Here every one of those is an actor on
one virtual timeline; the ``kvm`` backend plays the same calls on /dev/kvm.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pluggy

from mmbench.model.costs import CostTable
from mmbench.model.engine import Actor, Engine
from mmbench.model.kvm import Kvm
from mmbench.model.memslots import PAGE_SHIFT


@dataclass(frozen=True)
class SlotSpec:
    id: int
    gpa: int
    size: int
    name: str = ""
    flags: int = 0


@dataclass(frozen=True)
class VmSpec:
    """What to build: slots present at creation, vCPUs, and each vCPU's mapped areas."""

    slots: tuple[SlotSpec, ...]
    areas_per_vcpu: tuple[tuple[tuple[int, int], ...], ...]  # (gfn0, gfn1) per area
    pt_gfn: int  # first gfn of the guest's page-table pages
    max_gfn: int


@dataclass
class PassRecord:
    vcpu: int
    index: int
    start_ns: int
    end_ns: int
    faults: int

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class SimVm:
    backend = "sim"

    def __init__(self, hook: pluggy.HookRelay, arch: Any, costs: CostTable) -> None:
        self.engine = Engine()
        self.hook = hook
        self.arch = arch
        self.costs = costs
        self.kvm: Kvm | None = None
        self.passes: list[PassRecord] = []
        self._guest_actors: list[Actor] = []

    # -- building ------------------------------------------------------------------------
    def create(self, spec: VmSpec) -> Kvm:
        kvm = Kvm(
            self.engine, self.hook, self.arch, self.costs, len(spec.areas_per_vcpu), spec.max_gfn
        )
        for s in spec.slots:
            kvm.memslots.check_new(s.id, s.gpa >> PAGE_SHIFT, s.size >> PAGE_SHIFT, f"slot {s.id}")
        self.kvm = kvm
        # slots that exist before the guest starts are not timed
        self.engine.spawn("vmm-create", self._create_slots, spec)
        self.engine.run()
        self.arch.setup(kvm, [list(a) for a in spec.areas_per_vcpu], spec.pt_gfn)
        self.hook.mmbench_vm_created(kvm=kvm)
        self.engine.now = 0
        return kvm

    def _create_slots(self, spec: VmSpec) -> None:
        for s in spec.slots:
            self.kvm.create_memslot(s.id, s.gpa, s.size, s.flags, s.name)

    # -- guest threads -------------------------------------------------------------------
    def start_passes(self, vcpu_id: int, gfn0: int, gfn1: int, passes: int) -> None:
        """A guest thread on ``vcpu_id`` writing one qword per page of its area, in passes."""
        vcpu = self.kvm.vcpus[vcpu_id]

        def guest() -> None:
            for i in range(passes):
                t0, f0 = self.engine.now, vcpu.stats["pf_fixed"]
                vcpu.access(gfn0, gfn1, write=True)
                rec = PassRecord(vcpu_id, i, t0, self.engine.now, vcpu.stats["pf_fixed"] - f0)
                self.passes.append(rec)

        actor = self.engine.spawn(f"vcpu{vcpu_id}", guest)
        vcpu.actor = actor
        self._guest_actors.append(actor)

    def guests_done(self) -> bool:
        return all(a.done for a in self._guest_actors)

    # -- the host script's calls (run inside ``run_host``) --------------------------------
    def now_ns(self) -> int:
        return self.engine.now

    def sleep_ns(self, ns: float) -> None:
        self.engine.sleep(ns)

    def _timed(self, fn: Callable[[], Any]) -> int:
        t0 = self.engine.now
        fn()
        return self.engine.now - t0

    def add_memslot(self, slot_id: int, gpa: int, size: int, name: str = "") -> int:
        return self._timed(lambda: self.kvm.create_memslot(slot_id, gpa, size, 0, name))

    def delete_memslot(self, slot_id: int) -> int:
        return self._timed(lambda: self.kvm.delete_memslot(slot_id))

    def move_memslot(self, slot_id: int, new_gpa: int) -> int:
        return self._timed(lambda: self.kvm.move_memslot(slot_id, new_gpa))

    def guest_access(self, vcpu_id: int, gfn0: int, gfn1: int) -> int:
        """A guest access made synchronously by the host script's own vCPU (e.g. rom.sh)."""
        return self._timed(lambda: self.kvm.vcpus[vcpu_id].access(gfn0, gfn1, write=False))

    def event(self, name: str, **data: Any) -> None:
        self.hook.mmbench_workload_event(kvm=self.kvm, name=name, data=data)
        self.kvm.stats.series[name].append((self.engine.now, data))

    def run_host(self, script: Callable[[], None], name: str = "vmm") -> None:
        """Run ``script`` alongside the guest threads until all of them finish."""
        self.engine.spawn(name, script)
        self.engine.run()

    def destroy(self) -> int:
        """Destroy the VM; returns the teardown time in ns."""
        out: list[int] = []
        self.engine.spawn("vmm-destroy", lambda: out.append(self._timed(self.kvm.destroy)))
        self.engine.run()
        return out[0]
