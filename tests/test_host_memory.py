"""A fresh guest's first touch of its memory faults once per page on the shadow MMU: the
guest's ptes have no Accessed bit yet and, with 4 KiB backing, the host pages do not exist
yet either, and prefetch maps neither (``FNAME(prefetch_invalid_gpte)``,
``gfn_to_pfn_memslot_atomic``). After a zap the refault prefetches 8 per fault. Played on
both backends where /dev/kvm exists, so the model's fault counts are checked against the
kernel's (a 64 MiB populate on this host: 16385 faults fresh, 2049 with warm tables)."""

from __future__ import annotations

import dataclasses

import pytest

from mmbench.host.manager import get_host
from mmbench.run import assemble
from mmbench.workloads.guest_layout import one_slot_guest, vcpu_slices

MiB = 1 << 20
ROM = 32 * MiB  # a 128 KiB slot just above RAM


def populate_then_refault(backing: str, backend: str = "sim") -> dict[str, float]:
    """One vCPU writes every page of a 32 MiB guest (mapped with 4 KiB guest pages); a ROM
    slot is added and deleted under fast-invalidate (every sp zapped); it writes them
    again. The first pass's and the refault pass's faults and times."""
    with assemble("fast-invalidate", arch="x86-shadow", backend=backend) as run:
        vm = run.vm
        ((g0, g1),) = vcpu_slices(32 * MiB, 1, vm.arch)
        spec = one_slot_guest(32 * MiB, [(g0, g1)], 16, backing)
        vm.create(dataclasses.replace(spec, huge_pages=False, max_gfn=(ROM + 2 * MiB) >> 12))
        vm.start_passes(0, g0, g1, 1, write=True)
        vm.run_host(lambda: None, name="vmm-wait")

        def rom_sh() -> None:
            vm.add_memslot(1, ROM, 128 << 10, "pc.rom")
            vm.delete_memslot(1)

        vm.run_host(rom_sh, name="vmm-rom.sh")
        vm.start_passes(0, g0, g1, 1, write=True)
        vm.run_host(lambda: None, name="vmm-wait")
        first, again = vm.passes[0], vm.passes[-1]
        return {
            "pages": g1 - g0,
            "faults": first.faults,
            "refaults": again.faults,
            "first_ms": first.ms,
            "again_ms": again.ms,
        }


@pytest.mark.parametrize("backing", ["2m", "4k"])
def test_first_touch_faults_once_per_page_and_refaults_prefetch(backing):
    got = populate_then_refault(backing)
    assert got["faults"] == got["pages"]  # no Accessed gpte, maybe no host page
    assert got["refaults"] == got["pages"] // 8  # both exist now: prefetch 8
    assert got["first_ms"] > got["again_ms"]


def test_4k_backing_pays_a_host_fault_per_page():
    thp, small = populate_then_refault("2m"), populate_then_refault("4k")
    assert small["first_ms"] > thp["first_ms"]  # 512 host faults per 2 MiB, not 1
    assert small["again_ms"] == pytest.approx(thp["again_ms"])  # present by then


@pytest.mark.skipif(
    not get_host().registry.get("backend", "kvm")().available()[0],
    reason="needs /dev/kvm (the kvm backend)",
)
@pytest.mark.parametrize("backing", ["2m", "4k"])
def test_the_kernel_faults_as_the_model_does(backing):
    model = populate_then_refault(backing)
    kernel = populate_then_refault(backing, "kvm")
    for key in ("faults", "refaults"):
        assert abs(kernel[key] - model[key]) <= 2, (key, kernel, model)
