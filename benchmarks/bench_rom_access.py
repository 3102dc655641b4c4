"""ROM remap (seeds 000/001): modelled timings per policy, and the model's own speed."""

from __future__ import annotations

from .common import run_model

POLICIES = ["zap-all", "fast-invalidate", "zap-slot"]
HEADLINE = {"threads": 8, "mb": 2000, "passes": 30, "rom_interval_ms": 500.0}


class RomRemapModelled:
    """What the model predicts at the seed's size (8 x 2000 MB); deterministic."""

    params = [POLICIES]
    param_names = ["policy"]
    timeout = 300

    def setup_cache(self):
        return {p: run_model("rom-access", HEADLINE, p) for p in POLICIES}

    def track_pass_time_ms(self, cache, policy):
        return cache[policy]["pass_time_ms"]

    track_pass_time_ms.unit = "ms (modelled)"

    def track_memslot_delete_ms(self, cache, policy):
        return cache[policy]["memslot_delete_ms"]

    track_memslot_delete_ms.unit = "ms (modelled)"

    def track_vcpu_stall_ms(self, cache, policy):
        return cache[policy]["vcpu_stall_ms"]

    track_vcpu_stall_ms.unit = "ms (modelled)"

    def track_refaults(self, cache, policy):
        return cache[policy]["refaults"]

    track_refaults.unit = "faults"


class RomRemapModelSpeed:
    """Wall time and peak memory of the model, at 1, 4 and 16 GiB of guest memory."""

    params = [[1, 4, 16], ["fast-invalidate", "zap-slot"]]
    param_names = ["guest_gib", "policy"]
    number = 1
    repeat = (3, 5, 60.0)  # >= 3 samples a round, or asv continuous cannot call a change
    timeout = 300

    def _params(self, guest_gib):
        # ROM reads every 20 ms per GiB: the same number of reads at every size
        return {
            "threads": 8,
            "mb": guest_gib * 128,
            "passes": 10,
            "rom_interval_ms": 20.0 * guest_gib,
        }

    def time_rom_access(self, guest_gib, policy):
        run_model("rom-access", self._params(guest_gib), policy)

    def peakmem_rom_access(self, guest_gib, policy):
        run_model("rom-access", self._params(guest_gib), policy)
