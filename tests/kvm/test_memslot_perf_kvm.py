"""memslot-perf on the real /dev/kvm: the tests run, name the same metrics as the model,
and ``-q`` is the kernel's KVM_X86_QUIRK_SLOT_ZAP_ALL knob. Timings are not asserted."""

from __future__ import annotations

import pytest
from conftest import mmbench, run_json, skip_module_without_dev_kvm

skip_module_without_dev_kvm()

# -l 5 so that --max-iterations ends the loop even on a loaded host
SMALL = ["-s", "64", "-l", "5", "--max-iterations", "20"]


def one(doc: dict) -> tuple[str, dict]:
    (res,) = doc["results"]
    assert res["backend"] == "kvm"
    return res["policy"], res["metrics"]


@pytest.mark.parametrize("quirk", [[], ["-q"]])
def test_move_tests_on_the_kernel_match_the_model_names(runs_dir, quirk):
    """Both move tests (move-active: the guest's writes to the moved slot are MMIO exits
    while it is away) run under either knob, with the model's metric names."""
    args = [*SMALL, "-f", "3", "-e", "4", *quirk]
    pol, kernel = one(run_json("memslot-perf", *args, "--backend", "kvm"))
    assert pol == ("zap-slot" if quirk else "fast-invalidate")
    sim = run_json("memslot-perf", *args)["results"][0]["metrics"]
    assert set(kernel) == set(sim)
    for key in ("move_active", "move_inactive"):
        assert kernel[f"{key}_iterations"] == 20
        assert kernel[f"{key}_iter_best_ms"] > 0 and kernel[f"{key}_slot_setup_ms"] > 0


def test_rw_on_the_kernel(runs_dir):
    out = mmbench(
        "run", "memslot-perf", *SMALL, "-f", "5", "-e", "5", "--max-iterations", "2",
        "--backend", "kvm",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Testing RW performance with 1 runs" in out.stdout
    assert "Best runtime result was" in out.stdout


def test_map_on_the_kernel(runs_dir):
    _, m = one(run_json("memslot-perf", *SMALL, "-f", "0", "-e", "0", "--backend", "kvm"))
    assert m["map_iterations"] >= 1
