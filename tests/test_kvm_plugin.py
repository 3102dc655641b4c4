"""The kvm plugin's parts that need no /dev/kvm: registration and the policy -> knob map."""

from __future__ import annotations

import pytest
from conftest import mmbench
from mmbench_kvm import ioctls as k
from mmbench_kvm import knobs, validate
from mmbench_kvm.system import host_mmu

from mmbench.errors import ConfigError


def test_backend_and_commands_are_registered_through_entry_points():
    out = mmbench("list", check=True).stdout
    assert "kvm " in out and "mmbench_register_backends" in out
    for cmd in ("doctor", "calibrate", "validate"):
        assert mmbench(cmd, "--help", check=True).returncode == 0


def test_policies_map_to_the_slot_zap_all_quirk():
    every = k.KVM_X86_QUIRK_SLOT_ZAP_ALL | k.QUIRKS["OUT_7E_INC_RIP"]
    assert knobs.resolve("fast-invalidate", every).quirks_off == 0
    assert knobs.resolve("zap-slot", every).quirks_off == k.KVM_X86_QUIRK_SLOT_ZAP_ALL
    # a kernel older than the quirk still does fast invalidate on memslot delete
    delete = ("memslot-delete",)
    assert [p.name for p in knobs.supported(0, False, delete)] == ["fast-invalidate"]
    # on the TDP MMU the same default is kvm_mmu_zap_all_fast over its roots: fast-zap
    assert [p.name for p in knobs.supported(0, True, delete)] == ["fast-zap"]
    with pytest.raises(ConfigError) as ei:
        knobs.resolve("zap-slot", 0, paths=delete)
    assert ei.value.field == "--policy" and "cannot disable" in ei.value.message
    # zap-all is the kernel's teardown, not a memslot-delete knob
    with pytest.raises(ConfigError) as ei:
        knobs.resolve("zap-all", every, paths=delete)
    assert "teardown path" in ei.value.message and "zap-slot" in ei.value.message
    assert knobs.resolve("zap-all", every, paths=("teardown",)).name == "zap-all"
    # dirty-log stop: the shadow MMU zaps collapsible sptes synchronously
    stop = ("dirty-log-stop",)
    assert knobs.resolve("collapse-sync", every, tdp_mmu=False, paths=stop).quirks_off == 0
    with pytest.raises(ConfigError) as ei:
        knobs.resolve("collapse-sync", every, tdp_mmu=True, paths=stop)
    assert "tdp_mmu=N" in ei.value.message
    with pytest.raises(ConfigError) as ei:
        knobs.resolve("lru-scan", every)
    assert "no kernel knob" in ei.value.message


def test_bad_calibrate_and_validate_input_is_one_line_exit_2(tmp_path):
    proc = mmbench("calibrate", "--sizes-mb", "32,x")
    assert proc.returncode == 2 and "--sizes-mb" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = mmbench("validate", "--costs", str(tmp_path / "missing.yaml"), "--sizes-mb", "48,64")
    assert proc.returncode == 2 and "--costs" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "params, arch",
    [
        ({"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "Y"}}, "x86-tdp"),
        ({"kvm": {"tdp_mmu": "N"}, "kvm_intel": {"ept": "Y"}}, "x86-ept"),
        ({"kvm": {"tdp_mmu": "N"}, "kvm_amd": {"npt": "1"}}, "x86-ept"),
        ({"kvm": {"tdp_mmu": "Y"}, "kvm_intel": {"ept": "N"}}, "x86-shadow"),
        ({"kvm": {"tdp_mmu": "N"}, "kvm_pvm": {"pvm_native": "Y"}}, "x86-shadow"),
    ],
)
def test_the_host_mmu_is_read_from_ept_npt_and_tdp_mmu(params, arch):
    """``tdp_mmu_enabled = tdp_mmu_allowed && tdp_enabled``: the TDP MMU needs both; TDP
    hardware alone is the legacy MMU's direct sps; no ept/npt (kvm_pvm) is shadow paging."""
    got, why = host_mmu(params)
    assert got == arch
    assert ("shadow paging" in why) == (arch == "x86-shadow")


def _self_stat(utime: int, stime: int, gtime: int) -> str:
    """A /proc/self/stat line (fields 14, 15 and 43: utime, stime, guest_time)."""
    fields = ["S"] + ["0"] * 50
    fields[11], fields[12], fields[40] = str(utime), str(stime), str(gtime)
    return "4242 (python3 -m mmbench) " + " ".join(fields)


def test_background_cpus_leave_out_the_vms_own_guest_time():
    """validate's count of CPUs other processes kept busy: the VM's vCPU threads spent
    2 s in the guest over 1 s (HZ 100) and nothing else ran. /proc/stat counts that guest
    time in ``user`` and again in ``guest``; the process's ``utime`` includes it once.
    Nothing else ran, so the background is 0 CPUs (summing every /proc/stat column
    said 2.0); 30 ticks of another process's user time and 20 of steal on top are 0.5."""
    stat0 = "cpu  1000 5 300 9000 10 0 7 0 40 0\ncpu0 500 2 150 4500 5 0 3 0 20 0\n"
    stat1 = "cpu  1200 5 310 9000 10 0 7 0 240 0\ncpu0 600 2 155 4500 5 0 3 0 120 0\n"
    own0, own1 = _self_stat(300, 50, 40), _self_stat(500, 60, 240)
    before = validate.busy_ticks(stat0, own0)
    after = validate.busy_ticks(stat1, own1)
    assert validate.background_from(before, after, 1.0, 100) == 0.0
    busier = "cpu  1230 5 310 9000 10 0 7 20 240 0\n"
    after = validate.busy_ticks(busier, own1)
    assert validate.background_from(before, after, 1.0, 100) == pytest.approx(0.5)
    # a kernel without the guest columns (before 2.6.24) reads the same way
    assert validate.busy_ticks("cpu  1 2 3 4 5 6 7\n", own0)[0] == 1 + 2 + 3 + 6 + 7
