"""The same ROM remap on this host's real kernel (/dev/kvm); skipped where it is absent."""

from __future__ import annotations

from .common import have_dev_kvm, require, run_model

SMALL = {"threads": 2, "mb": 256, "passes": 12, "rom_interval_ms": 20.0}


class RomRemapKernel:
    """Kernel timings: fast-invalidate is the SLOT_ZAP_ALL quirk, zap-slot the quirk off."""

    params = [["fast-invalidate", "zap-slot"]]
    param_names = ["policy"]
    number = 1
    repeat = (1, 3, 60.0)
    timeout = 300

    def setup(self, policy):
        if not have_dev_kvm():
            raise NotImplementedError("/dev/kvm is absent: no real-kernel benchmarks here")
        require("backend", "kvm")

    def time_rom_access_kernel(self, policy):
        run_model("rom-access", SMALL, policy, backend="kvm")

    def track_memslot_delete_ms_kernel(self, policy):
        return run_model("rom-access", SMALL, policy, backend="kvm")["memslot_delete_ms"]

    track_memslot_delete_ms_kernel.unit = "ms (kernel)"

    def track_pass_time_ms_kernel(self, policy):
        return run_model("rom-access", SMALL, policy, backend="kvm")["pass_time_ms"]

    track_pass_time_ms_kernel.unit = "ms (kernel)"
