"""Dirty-log stop on a 4 TiB guest (seed 002): modelled disable time and stall per policy,
and the model's own wall time and peak memory."""

from __future__ import annotations

from .common import run_model

POLICIES = ["collapse-sync", "lazy-collapse", "recover-in-place"]
TIB = 1 << 40


class DirtyLogStopModelled:
    params = [POLICIES]
    param_names = ["policy"]
    timeout = 600

    def setup_cache(self):
        return {p: run_model("dirty-log", {"size": 4 * TIB}, p, arch="x86-tdp") for p in POLICIES}

    def track_disable_dirty_log_ms(self, cache, policy):
        return cache[policy]["disable_dirty_log_ms"]

    track_disable_dirty_log_ms.unit = "ms (modelled)"

    def track_vcpu_stall_max_ms(self, cache, policy):
        return cache[policy]["vcpu_stall_max_ms"]

    track_vcpu_stall_max_ms.unit = "ms (modelled)"

    def track_faults_after_disable(self, cache, policy):
        return cache[policy]["faults_after_disable"]

    track_faults_after_disable.unit = "faults"


class DirtyLogModelSpeed:
    params = [[1, 4], ["collapse-sync", "lazy-collapse"]]
    param_names = ["guest_tib", "policy"]
    number = 1
    repeat = (3, 5, 120.0)
    timeout = 600

    def time_dirty_log(self, guest_tib, policy):
        run_model("dirty-log", {"size": guest_tib * TIB}, policy, arch="x86-tdp")

    def peakmem_dirty_log(self, guest_tib, policy):
        run_model("dirty-log", {"size": guest_tib * TIB}, policy, arch="x86-tdp")
