"""Workload ``teardown``: destroy a VM whose memory is all mapped (seed 003).

"Terminating a 64GB VM that has most of its memory mapped at S2 goes from several seconds
(I've seen up to 12s) to less than a second." ``--vcpus`` vCPUs write every page of their
slices of a ``--size`` guest, so everything is mapped (2 MiB leaves where ``--backing``
allows), the vCPUs exit, and the VM is destroyed: ``kvm_arch_flush_shadow_all`` is where
the policy runs. Timed from the last close() to the end of the teardown.
"""

from __future__ import annotations

from typing import Any

from mmbench.backends.vmapi import VmApi, VmSpec
from mmbench.errors import ConfigError
from mmbench.host.hookspecs import hookimpl
from mmbench.workloads.base import Metric, Param, WorkloadSpec
from mmbench.workloads.guest_layout import (
    backing_param,
    check_size,
    one_slot_guest,
    size_param,
    vcpu_slices,
)
from mmbench.workloads.sizes import REGION, GiB


class Teardown:
    name = "teardown"
    description = "destroy a VM with all of --size mapped: kvm_arch_flush_shadow_all"
    paths = ("teardown",)
    phases = ("populate_ms", "teardown_ms")
    default_plots = ("phases", "mmu_lock_hold_hist")
    headline = ("teardown_ms",)
    probe = {"size": "1G", "vcpus": 2}
    default_arch = "arm64"  # seed 003
    params = (
        size_param(64 * GiB, "guest memory: 64G, 4T, 512M or bytes"),
        Param("vcpus", int, 8, "vCPUs that populate memory", ("-v", "--vcpus"), 1, max=512),
        backing_param(),
    )
    metrics = {
        "teardown_ms": Metric("ms", "VM destroy time (kvm_destroy_vm)"),
        "mmu_lock_max_hold_ms": Metric("ms", "longest mmu_lock hold during teardown"),
        "cmo_bytes": Metric("B", "bytes cleaned to the PoC (DC CIVAC)", kind="count"),
        "tlbi_count": Metric("", "TLBI instructions issued (per-IPA and VMALL)", kind="count"),
        "pages_freed": Metric("", "page-table pages freed", kind="count"),
        "sptes_zapped": Metric("", "leaf sptes (stage-2 ptes/blocks) zapped", kind="count"),
        "remote_tlb_flushes": Metric(
            "", "remote TLB flushes", kind="count", stat="remote_tlb_flush"
        ),
        "populate_ms": Metric("ms", "time for the vCPUs to map all memory"),
    }

    def layout(self, p: WorkloadSpec, arch: Any) -> VmSpec:
        check_size(p.size, arch)
        if p.size % REGION:
            raise ConfigError("--size", f"must be a multiple of 2 MiB (got {p.size})")
        return one_slot_guest(p.size, vcpu_slices(p.size, p.vcpus, arch), 16, p.backing)

    def run(self, vm: VmApi, p: WorkloadSpec) -> dict[str, float]:
        spec = self.layout(p, vm.arch)
        vm.create(spec)
        for v, ((g0, g1),) in enumerate(spec.areas_per_vcpu):
            vm.start_passes(v, g0, g1, 1, write=True)
        vm.run_host(lambda: None, name="vmm-wait")
        populate_ms = max(r.ms for r in vm.passes)
        before = vm.stats()
        teardown_ns = vm.destroy()
        st = vm.stats()
        out = {
            "teardown_ms": teardown_ns / 1e6,
            "populate_ms": populate_ms,
            "sptes_zapped": st["sptes_zapped"] - before["sptes_zapped"],
            "remote_tlb_flushes": st["remote_tlb_flush"] - before["remote_tlb_flush"],
        }
        if st.get("mmu_lock_max_hold_host_ns") is not None:
            out["mmu_lock_max_hold_ms"] = st["mmu_lock_max_hold_host_ns"] / 1e6
        if "cmo_bytes" in st:
            out["cmo_bytes"] = st["cmo_bytes"] - before["cmo_bytes"]
            out["tlbi_count"] = st["tlbi"] - before["tlbi"]
            out["pages_freed"] = st["pt_pages_freed"] - before["pt_pages_freed"]
        else:  # x86-shadow: tables are shadow pages; x86 has no CMO or TLBI instruction
            out["pages_freed"] = st["mmu_shadow_zapped"] - before["mmu_shadow_zapped"]
        return out


@hookimpl
def mmbench_register_workloads(register):
    register(Teardown)
