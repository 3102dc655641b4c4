"""Shadow-page reclaim at the seed's limit of 64 pages (seed 004): FIFO vs the LRU idea."""

from __future__ import annotations

from .common import run_model

POLICIES = ["fifo", "skip-roots", "lru-scan"]
SEED_LIMIT = {"mmu_pages": 64}


class ReclaimModelled:
    params = [POLICIES]
    param_names = ["policy"]
    timeout = 300

    def setup_cache(self):
        return {p: run_model("mmu-pressure", SEED_LIMIT, p) for p in POLICIES}

    def track_faults(self, cache, policy):
        return cache[policy]["faults"]

    track_faults.unit = "faults"

    def track_mmu_recycled(self, cache, policy):
        return cache[policy]["mmu_recycled"]

    track_mmu_recycled.unit = "sps"

    def track_roots_zapped_in_use(self, cache, policy):
        return cache[policy]["roots_zapped_in_use"]

    track_roots_zapped_in_use.unit = "roots"
