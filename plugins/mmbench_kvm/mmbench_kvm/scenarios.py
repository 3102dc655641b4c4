"""What ``validate`` plays on both backends: each scenario written once against the VM API.

A scenario is one policy (a kernel knob on ``kvm``, a plugin on the model) and a function
that drives a fresh VM at one guest size and returns named quantities; most are a
workload with fixed parameters. Its quantities are the cells of the fidelity report.
Adding a scenario here adds its rows to ``mmbench validate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmbench.backends.vmapi import VmApi
from mmbench.host.manager import get_host
from mmbench.workloads.base import resolve_params
from mmbench.workloads.rom_access import ROM_SLOT, RomAccess

MiB = 1 << 20


@dataclass(frozen=True)
class Quantity:
    key: str
    what: str
    count: bool = False  # a count (the model's structure) rather than a time
    unit: str = "ms"  # of a time


@dataclass(frozen=True)
class Scenario:
    name: str
    policy: str
    what: str
    play: Callable[[VmApi, int], dict[str, float]]
    quantities: tuple[Quantity, ...]
    arch: str = "x86-shadow"
    sized: bool = True  # False: the scenario's guest is fixed (played at the first size only)


def rom_idle(vm: VmApi, size_mb: int) -> dict[str, float]:
    """One guest thread populates its memory and makes a warm pass; rom.sh adds, reads and
    deletes the 128 KiB ROM slot while that vCPU is idle; one more pass refaults whatever
    the delete zapped; the VM is destroyed. Times in ms."""
    wl = RomAccess()
    p = resolve_params(wl.params, {"threads": 1, "mb": size_mb, "passes": 2})
    spec = wl.layout(p, vm.arch)
    vm.create(spec)
    ((g0, g1),) = spec.areas_per_vcpu[0]
    r0, r1 = spec.areas_per_vcpu[1][0]
    vm.start_passes(0, g0, g1, 2)
    vm.run_host(lambda: None, name="vmm-wait")
    out: dict[str, float] = {}

    def rom_sh() -> None:
        vm.add_memslot(ROM_SLOT, p.rom_gpa, p.rom_kib * 1024, "pc.rom")
        vm.guest_access(1, r0, r1)
        before = vm.stats()["mmu_shadow_zapped"]
        out["rom_delete_ms"] = vm.delete_memslot(ROM_SLOT) / 1e6
        out["sps_zapped"] = vm.stats()["mmu_shadow_zapped"] - before

    vm.run_host(rom_sh, name="vmm-rom.sh")
    vm.start_passes(0, g0, g1, 1)
    vm.run_host(lambda: None, name="vmm-wait")
    out["populate_ms"] = vm.passes[0].ms
    out["warm_pass_ms"] = vm.passes[1].ms
    out["refault_pass_ms"] = vm.passes[-1].ms
    out["refaults"] = vm.passes[-1].faults
    out["teardown_ms"] = vm.destroy() / 1e6
    return out


def workload(name: str, params: Callable[[int], dict[str, Any]]) -> Callable[..., dict]:
    """Play the registered workload ``name`` with ``params(size_mb)``; its metrics."""

    def play(vm: VmApi, size_mb: int) -> dict[str, float]:
        wl = get_host().registry.get("workload", name)()
        return wl.run(vm, resolve_params(wl.params, params(size_mb)))

    play.__doc__ = f"``mmbench run {name}`` on the VM, its metrics"
    return play


def _rom_running(size_mb: int) -> dict[str, Any]:
    # rom-access -c 2 -m SIZE --passes 20 --rom-interval-ms 1 --rom-read-kib 128: two
    # vCPUs keep writing their memory while rom.sh deletes the ROM slot again and again;
    # one remap per cat, so that every steady-state delete finds the guest refaulted and
    # its latency is the zap's (per 4 KiB read, 31 of 32 deletes find little to zap)
    return {
        "threads": 2,
        "mb": size_mb,
        "passes": 20,
        "rom_interval_ms": 1.0,
        "rom_read_kib": 128,
    }


def _teardown(size_mb: int) -> dict[str, Any]:
    return {"size": size_mb * MiB, "vcpus": 2, "backing": "4k"}


def _host_unmap(size_mb: int) -> dict[str, Any]:
    # ten MADV_DONTNEEDs of an eighth of guest RAM (2-32 MiB) while 2 vCPUs run
    unmap = max(2, min(32, size_mb // 8) // 2 * 2) * MiB
    return {"size": size_mb * MiB, "unmap_size": unmap, "unmaps": 10, "interval_ms": 5.0}


def _memslot_perf(size_mb: int) -> dict[str, Any]:
    # memslot_perf_test -s 512 -f 3 -e 4 (move active, move inactive): its guest is fixed
    return {"slots": 512, "first": 3, "last": 4, "loop_s": 1.0, "max_iterations": 20}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "rom-idle",
        "fast-invalidate",
        "populate, warm pass, one rom.sh round with the vCPU idle, refault pass, teardown",
        rom_idle,
        (
            Quantity("rom_delete_ms", "ROM delete, vCPU idle, SLOT_ZAP_ALL on"),
            Quantity("refault_pass_ms", "pass after the delete (refaults)"),
            Quantity("teardown_ms", "teardown (last close of the VM fd)"),
            Quantity("sps_zapped", "sps zapped by the delete", count=True),
            Quantity("refaults", "faults in the pass after it", count=True),
        ),
    ),
    Scenario(
        "rom-idle",
        "zap-slot",
        "the same with SLOT_ZAP_ALL off",
        rom_idle,
        (Quantity("rom_delete_ms", "ROM delete, vCPU idle, SLOT_ZAP_ALL off"),),
    ),
    Scenario(
        "rom-running",
        "fast-invalidate",
        "rom-access -c 2 --passes 20 --rom-interval-ms 1 --rom-read-kib 128: ROM deletes while"
        " 2 vCPUs run",
        workload("rom-access", _rom_running),
        (
            Quantity("memslot_delete_p50_ms", "ROM delete p50, 2 vCPUs running, after populate"),
            Quantity("memslot_delete_p99_ms", "ROM delete p99, 2 vCPUs running"),
            Quantity("pass_time_ms", "time per pass of 2 vCPUs across ROM deletes"),
            Quantity("sps_per_delete", "sps zapped per delete, after populate", count=True),
        ),
    ),
    Scenario(
        "teardown",
        "zap-all",
        "teardown --size SIZE -v 2 --backing 4k: two vCPUs map it all, then the VM goes",
        workload("teardown", _teardown),
        (
            Quantity("populate_ms", "two vCPUs map all of it"),
            Quantity("teardown_ms", "VM destroy (kvm_mmu_zap_all and the frees)"),
            Quantity("sptes_zapped", "sptes zapped by teardown", count=True),
        ),
    ),
    Scenario(
        "host-unmap",
        "unmap-range",
        "host-unmap: ten MADV_DONTNEEDs of guest RAM while 2 vCPUs touch it (MMU notifier)",
        workload("host-unmap", _host_unmap),
        (
            Quantity("invalidate_p50_us", "host call p50, notifier included", unit="us"),
            Quantity("sptes_zapped", "sptes zapped by the notifier", count=True),
        ),
    ),
    Scenario(
        "memslot-perf",
        "fast-invalidate",
        "memslot_perf_test -s 512 -f 3 -e 4: move a slot under the guest (SLOT_ZAP_ALL on)",
        workload("memslot-perf", _memslot_perf),
        (
            Quantity("move_active_iter_best_ms", "move active area, best iteration"),
            Quantity("move_inactive_iter_best_ms", "move inactive area, best iteration"),
        ),
        sized=False,
    ),
)
