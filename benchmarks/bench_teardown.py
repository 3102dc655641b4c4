"""VM teardown (seed 003): arm64 64 GiB with and without CMOs, x86 zap-all; modelled
teardown time per policy and the model's own wall time."""

from __future__ import annotations

from .common import run_model

GIB = 1 << 30
CASES = ["arm64/s2-unmap", "arm64/s2-elide", "x86-tdp/zap-all", "x86-tdp/zap-all:lock_break=true"]


def _run(case: str, size: int) -> dict:
    arch, policy = case.split("/", 1)
    return run_model("teardown", {"size": size}, policy, arch=arch)


class TeardownModelled:
    params = [CASES]
    param_names = ["arch_policy"]
    timeout = 300

    def setup_cache(self):
        return {c: _run(c, 64 * GIB) for c in CASES}

    def track_teardown_ms(self, cache, case):
        return cache[case]["teardown_ms"]

    track_teardown_ms.unit = "ms (modelled)"

    def track_cmo_bytes(self, cache, case):
        return cache[case]["cmo_bytes"]

    track_cmo_bytes.unit = "bytes"


class TeardownModelSpeed:
    params = [[16, 64], ["arm64/s2-unmap", "arm64/s2-elide"]]
    param_names = ["guest_gib", "arch_policy"]
    number = 1
    repeat = (3, 5, 60.0)
    timeout = 300

    def time_teardown(self, guest_gib, case):
        _run(case, guest_gib * GIB)

    def peakmem_teardown(self, guest_gib, case):
        _run(case, guest_gib * GIB)
