"""The ``kvm`` backend, doctor, calibrate and validate on the real /dev/kvm (small guests).

Skipped with the reason where /dev/kvm cannot be opened. Timings are never asserted:
the behaviour is (which counters move under which kernel knob, what is refused, that
nothing leaks).
"""

from __future__ import annotations

import gc
import json
import os
import threading

import pytest
import yaml
from conftest import mmbench, skip_module_without_dev_kvm

skip_module_without_dev_kvm()

from mmbench_kvm import kvm_vm as kvm_backend  # noqa: E402

from mmbench.backends.vmapi import SlotSpec, VmSpec  # noqa: E402
from mmbench.errors import BackendError, ConfigError  # noqa: E402
from mmbench.run import assemble  # noqa: E402

MiB = 1 << 20
KVM_SMALL = ["-c", "2", "-m", "16", "--passes", "20", "--rom-interval-ms", "2"]
KERNEL_COUNTERS = {"sptes_zapped", "sps_zapped", "sp_allocs", "refaults", "remote_tlb_flushes"}
MODEL_ONLY = {
    "mmu_lock_max_hold_ms",
    "vcpu_stall_ms",
    "vcpu_stall_max_ms",
    "lock_breaks",
    "lock_breaks_contention",
    "lock_breaks_resched",
}
# glibc keeps stacks of exited threads in a bounded cache; a thread that has just left
# join() may still hold one, so a few stack mappings come and go. A leak of VMs would show
# as hundreds (guest memory, kvm_run): every VM maps at least three areas.
STACK_CACHE_SLACK = 8


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def maps_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def new_vm(policy: str = "fast-invalidate") -> kvm_backend.KvmVm:
    return assemble(policy, arch="x86-shadow", backend="kvm").vm


def tiny_spec(slot_mb: int = 16, area: tuple[int, int] = (2048, 2304)) -> VmSpec:
    """RAM slot 0 at gpa 0; vCPU 0 maps 1 MiB at 8 MiB, vCPU 1 the ROM gfns."""
    rom = (0xFEBC0000 >> 12, (0xFEBC0000 >> 12) + 32)
    return VmSpec(
        slots=(SlotSpec(0, 0, slot_mb * MiB, "pc.ram"),),
        areas_per_vcpu=((area,), (rom,)),
        pt_gfn=1024,
        max_gfn=rom[1],
    )


def test_run_rom_access_on_the_kernel_json(runs_dir):
    proc = mmbench(
        "run", "rom-access", *KVM_SMALL, "--backend", "kvm",
        "--policy", "fast-invalidate", "--policy", "zap-slot", "--json", check=True,
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    assert set(doc) == {
        "schema_version",
        "workload",
        "name",
        "params",
        "kernel",
        "reps",
        "duration_s",
        "units",
        "results",
    }
    # the kernel it ran on, as the host says (this host: "Dynamic Preempt: none")
    assert doc["kernel"]["preempt"] in ("none", "voluntary", "full", None)
    assert doc["kernel"]["host_cpus"] == len(os.sched_getaffinity(0))
    by = {r["policy"]: r for r in doc["results"]}
    assert list(by) == ["fast-invalidate", "zap-slot"]
    for r in doc["results"]:
        assert r["backend"] == "kvm" and r["arch"] == "x86-shadow"
        m = r["metrics"]
        assert set(m) >= {"pass_time_ms", "memslot_delete_ms", *KERNEL_COUNTERS}
        assert not set(m) & MODEL_ONLY  # the kernel cannot show mmu_lock holds
        assert m["rom_reads"] > 0 and m["sp_allocs"] > 0
    fast, slot = by["fast-invalidate"]["metrics"], by["zap-slot"]["metrics"]
    assert fast["sps_zapped"] > 0 and fast["refaults"] > 0  # SLOT_ZAP_ALL: everything goes
    assert slot["sps_zapped"] == 0 and slot["refaults"] == 0  # only the ROM's sptes
    (run,) = list(runs_dir.iterdir())
    rec = json.loads((run / "result.json").read_text())
    assert rec["environment"]["dev_kvm"] and "kvm" in rec["environment"]["kvm_modules"]
    assert "kvm.tdp_mmu" in rec["environment"]["kvm_params"]


def test_policy_without_a_kernel_knob_is_refused(runs_dir):
    proc = mmbench("run", "rom-access", *KVM_SMALL, "--backend", "kvm", "--policy", "zap-all")
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "--policy" in line and "zap-all" in line
    assert "fast-invalidate" in line and "zap-slot" in line  # what this kernel supports
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_check_is_refused_on_the_kernel(runs_dir):
    proc = mmbench("run", "rom-access", *KVM_SMALL, "--backend", "kvm", "--check")
    assert proc.returncode == 2 and "--check" in proc.stderr and "--backend sim" in proc.stderr
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_guest_bigger_than_host_memory_is_refused(runs_dir):
    too_big = kvm_backend.mem_available() // MiB + 1024  # MiB, just over all of it
    proc = mmbench("run", "rom-access", "--backend", "kvm", "-c", "1", "-m", str(too_big))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert "host memory" in line and "MemAvailable" in line
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_doctor_says_what_the_host_supports():
    facts = json.loads(mmbench("doctor", "--json", check=True).stdout)
    assert facts["dev_kvm"] and facts["backend_kvm"]["available"]
    assert facts["guest"]["native"] and facts["guest"]["pf_fixed"] > 0
    assert facts["policies"]["fast-invalidate"]["runs"]
    text = mmbench("doctor", check=True).stdout
    assert "tdp_mmu" in text and "SLOT_ZAP_ALL" in text and "runs natively" in text


def test_calibrate_then_validate_on_tiny_guests(tmp_path, runs_dir):
    table = tmp_path / "costs.yaml"
    args = ["--sizes-mb", "4,8", "--reps", "2", "-o", str(table)]
    out = mmbench("calibrate", *args, check=True).stdout
    assert "zap_spte" in out and "95% CI" in out and "not fitted: fault_locked" in out
    doc = yaml.safe_load(table.read_text())
    host = os.uname().nodename
    cal = doc["calibration"]
    assert cal["sizes_mb"] == [4, 8] and cal["reps"] == 2 and cal["preempt"]
    assert "lock_handoff" in cal["not_fitted"]
    fitted = ("touch_page", "fault_exit", "sp_alloc", "zap_sp", "zap_spte", "memslot_update")
    fitted += ("vm_destroy", "memslot_free_page", "host_page_fault", "host_page_zero")
    for name in fitted:
        cost = doc["costs"][name]
        assert cost["ns"] >= 0 and host in cost["provenance"]
        assert (
            cal["date"][:10] in cost["provenance"]
            and f"preempt {cal['preempt']}" in (cost["provenance"])
        )
        lo, hi = cost["ci95"]
        assert len(cost["per_rep"]) == 2 and lo <= cost["ns"] <= hi
    # the model reads it
    small = ["-c", "1", "-m", "8", "--passes", "3", "--rom-interval-ms", "1"]
    proc = mmbench("run", "rom-access", *small, "--costs", str(table), "--json", check=True)
    assert json.loads(proc.stdout)["results"]
    # validating on a fitted size is refused
    bad = mmbench("validate", "--costs", str(table), "--sizes-mb", "8,12")
    assert bad.returncode == 2 and "--sizes-mb" in bad.stderr
    args = ["--costs", str(table), "--sizes-mb", "24,28", "--repeat", "2", "--format", "json"]
    res = mmbench("validate", *args, check=True)
    report = json.loads(res.stdout)
    cells = report["cells"]
    idle = ("rom_delete_ms", "refault_pass_ms", "teardown_ms", "sps_zapped", "refaults")
    running = ("memslot_delete_p50_ms", "pass_time_ms")  # vCPUs run during the deletes
    teardown = ("populate_ms", "teardown_ms", "sptes_zapped")
    got = {(c["size_mb"], c["scenario"], c["quantity"]) for c in cells}
    want = {(s, "rom-idle", q) for s in (24, 28) for q in idle}
    want |= {(s, "rom-running", q) for s in (24, 28) for q in running}
    want |= {(s, "teardown", q) for s in (24, 28) for q in teardown}
    assert got >= want
    # the model ran under this host's kernel configuration, as calibrate recorded it
    assert doc["calibration"]["host_kernel"]["host_cpus"] == len(os.sched_getaffinity(0))
    assert report["model_kernel"]["host_cpus"] == len(os.sched_getaffinity(0))
    assert report["model_kernel"]["sched"] == report["kernel"]["sched"]  # eevdf from 6.6
    bg = report["background_cpus"]  # what other processes took from the kernel runs
    assert 0 <= bg["median"] <= bg["max"] <= os.cpu_count()
    scored = 0
    for c in cells:
        assert len(c["kernel"]) <= 2  # one figure per kernel repetition that had the event
        if c["error_pct"] is None:
            assert c["note"]  # says why a cell is not scored
            continue
        scored += 1
        assert c["kernel_min"] <= c["kernel_median"] <= c["kernel_max"]
        assert c["inside"] == (abs(c["model"] - c["kernel_median"]) <= 0.25 * c["kernel_median"])
    inside = sum(c["inside"] for c in cells)
    assert report["summary"].startswith(f"{inside} of {scored} within 25%")
    # one size is enough, and the report reads as a table in text and markdown
    one = ["--costs", str(table), "--sizes-mb", "24", "--repeat", "1", "--scenario", "rom-idle"]
    text = mmbench("validate", *one, check=True).stdout
    assert "24 MiB, rom-idle, fast-invalidate" in text and "within 25%" in text
    assert max(len(line) for line in text.splitlines() if line.startswith("  ")) <= 100
    md = mmbench("validate", *one, "--format", "markdown", check=True).stdout
    assert "| 24 MiB | rom-idle | zap-slot |" in md
    for bad in (["--format", "html"], ["--scenario", "nope"], ["--sizes-mb", "10"]):
        proc = mmbench("validate", "--costs", str(table), *bad)
        assert proc.returncode == 2 and bad[0] in proc.stderr, proc.stderr


def test_crashed_guest_is_a_clear_error_and_frees_everything():
    def crash() -> None:
        vm = new_vm()
        try:
            vm.create(tiny_spec())
            vm.start_passes(0, 2048, 2304, 2)
            # the ROM slot does not exist: the guest's read exits to userspace as MMIO
            with pytest.raises(BackendError, match="KVM_EXIT_MMIO.*0xfebc0000"):
                vm.run_host(lambda: vm.guest_access(1, 0xFEBC0, 0xFEBC0 + 32))
        finally:
            vm.close()

    crash()  # warm up: thread stacks, lazily loaded modules
    gc.collect()
    fds, maps = fd_count(), maps_count()
    for _ in range(20):
        crash()
    assert not [t for t in threading.enumerate() if t.name.startswith("vcpu")]
    gc.collect()
    assert fd_count() == fds
    assert maps_count() - maps <= STACK_CACHE_SLACK


def test_stuck_guest_times_out_and_is_kicked(monkeypatch):
    monkeypatch.setattr(kvm_backend, "JOIN_MARGIN_S", 0.2)
    monkeypatch.setattr(kvm_backend, "PASS_NS_PER_PAGE", 0)
    vm = new_vm()
    try:
        vm.create(tiny_spec())
        vm.start_passes(0, 2048, 2304, 10**9)  # would run for hours
        with pytest.raises(BackendError, match="did not finish"):
            vm.run_host(lambda: None)
    finally:
        vm.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("vcpu")]


def test_guest_bigger_than_host_memory_fails_before_any_vm():
    vm = new_vm()
    try:
        with pytest.raises(ConfigError, match="host memory"):
            vm.create(tiny_spec(slot_mb=64 << 20))
    finally:
        vm.close()


def test_no_leaks_over_150_backend_vms():
    def cycle(i: int) -> None:
        vm = new_vm("zap-slot" if i % 2 else "fast-invalidate")
        try:
            vm.create(tiny_spec())
            vm.start_passes(0, 2048, 2304, 2)

            def script() -> None:
                vm.add_memslot(2, 0xFEBC0000, 128 * 1024)
                vm.guest_access(1, 0xFEBC0, 0xFEBC0 + 32)
                vm.delete_memslot(2)

            vm.run_host(script)
            assert vm.stats()["pf_fixed"] > 0
            if i % 3 == 0:
                assert vm.destroy() > 0
        finally:
            vm.close()

    cycle(0)  # warm up interpreter and thread state
    gc.collect()
    fds, maps = fd_count(), maps_count()
    for i in range(150):
        cycle(i)
    gc.collect()
    assert fd_count() == fds
    assert maps_count() - maps <= STACK_CACHE_SLACK


def test_stuck_host_side_access_is_kicked(monkeypatch):
    monkeypatch.setattr(kvm_backend, "JOIN_MARGIN_S", 0.0)
    monkeypatch.setattr(kvm_backend, "PASS_NS_PER_PAGE", 0)
    vm = new_vm()
    try:
        vm.create(tiny_spec())
        with pytest.raises(BackendError, match="did not finish its access"):
            vm.run_host(lambda: vm.guest_access(0, 2048, 2304))
    finally:
        vm.close()


def test_guest_accesses_start_no_thread_each(monkeypatch):
    """One watchdog thread per VM, not a Timer per access: on a host whose CPUs all run
    vCPUs, starting and joining a thread per access made each rom.sh read wait for the
    scheduler (4.2 ms at the median here against 0.3 ms of KVM_RUN)."""
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    vm = new_vm()
    try:
        vm.create(tiny_spec())
        vm.run_host(lambda: [vm.guest_access(0, 2048, 2056) for _ in range(20)])
    finally:
        vm.close()
    assert started == ["kvm-watchdog"]


@pytest.mark.parametrize("manual", [False, True])
def test_dirty_log_through_the_vm_api(manual):
    """GET_DIRTY_LOG reports what the guest wrote; with MANUAL_PROTECT2 it keeps reporting
    until CLEAR_DIRTY_LOG re-protects."""
    vm = new_vm()
    try:
        spec = tiny_spec()
        slot = SlotSpec(3, 32 * MiB, 2 * MiB, "ram.logged")
        spec = VmSpec((*spec.slots, slot), ((((8192, 8192 + 512)),), spec.areas_per_vcpu[1]),
                      spec.pt_gfn, spec.max_gfn)  # fmt: skip
        if manual:
            vm.enable_manual_protect(initially_set=False)
        vm.create(spec)
        assert vm.set_dirty_logging(3, True) > 0
        vm.start_passes(0, 8192, 8192 + 128, 1)  # writes 128 of the slot's 512 pages
        vm.run_host(lambda: None)
        ns, dirty = vm.get_dirty_log(3)
        assert ns > 0 and dirty == 128
        _, again = vm.get_dirty_log(3)
        assert again == (128 if manual else 0)
        if manual:
            assert vm.clear_dirty_log(3, 0, 512) > 0
            assert vm.get_dirty_log(3)[1] == 0
        assert vm.set_dirty_logging(3, False) > 0
        assert vm.destroy() > 0
    finally:
        vm.close()


def test_huge_guest_pages_on_thp_memory_give_2m_sptes():
    vm = new_vm()
    try:
        spec = tiny_spec(slot_mb=32, area=(4096, 4096 + 2048))  # 8 MiB at 16 MiB, aligned
        vm.create(VmSpec(spec.slots, spec.areas_per_vcpu, spec.pt_gfn, spec.max_gfn, True))
        vm.start_passes(0, 4096, 4096 + 2048, 2)
        vm.run_host(lambda: None)
        st = vm.stats()
        assert st["pages_2m"] >= 1 and st["pf_fixed"] < 2048  # not one fault per 4 KiB
    finally:
        vm.close()


def test_memslot_move_zaps_only_the_slot_without_the_quirk():
    vm = new_vm("zap-slot")
    try:
        vm.create(tiny_spec())
        vm.start_passes(0, 2048, 2304, 1)
        vm.run_host(lambda: None)

        def script() -> None:
            vm.add_memslot(2, 0xFEBC0000, 128 * 1024)
            vm.guest_access(1, 0xFEBC0, 0xFEBC0 + 32)
            assert vm.move_memslot(2, 0xFEC00000) > 0

        vm.run_host(script)
        st = vm.stats()
        assert st["sptes_zapped"] == 32 and st["mmu_shadow_zapped"] == 0
        assert st["pages_4k"] >= 256  # the guest thread's sptes stay
    finally:
        vm.close()


def test_single_stat_read_matches_the_full_read():
    vm = new_vm()
    try:
        vm.create(tiny_spec())
        vm.start_passes(0, 2048, 2304, 1)
        vm.run_host(lambda: None)
        reader = vm.vm.vcpus[0].stats_reader
        full = reader.read()
        assert full["pf_fixed"] > 0
        for name in ("pf_fixed", "exits", "pf_taken"):
            assert reader.read_one(name) == full[name]
    finally:
        vm.close()


def test_teardown_and_dirty_log_run_on_the_kernel(tmp_path):
    """Both headline paths on /dev/kvm, with per-phase times and kernel counters."""
    env = {"MMBENCH_RUNS_DIR": str(tmp_path)}
    td = json.loads(
        mmbench(
            "run", "teardown", "--backend", "kvm", "--size", "256M", "--json", env=env, check=True
        ).stdout
    )
    (res,) = td["results"]
    assert res["policy"] == "zap-all" and res["arch"] in ("x86-shadow", "x86-tdp")
    assert res["metrics"]["teardown_ms"] > 0 and res["metrics"]["sptes_zapped"] > 0
    dl = json.loads(
        mmbench(
            "run",
            "dirty-log",
            "--backend",
            "kvm",
            "--size",
            "256M",
            "--run-on-s",
            "0.5",
            "--json",
            env=env,
            check=True,
        ).stdout
    )
    m = dl["results"][0]["metrics"]
    assert m["disable_dirty_log_ms"] > 0 and m["pages_dirtied"] > 0
    assert "iter1_clear_dirty_log_ms" in m and "vcpu_stall_ms" not in m  # kernel: no lock view


def test_the_arch_is_the_hosts_mmu_and_another_is_refused_saying_why(runs_dir):
    """The result records the host's MMU; an --arch it does not run is one line, exit 2,
    naming the host's MMU, why, and what the other arch needs."""
    from mmbench_kvm.system import KvmSystem

    with KvmSystem() as s:
        here, why = s.mmu
    doc = json.loads(
        mmbench("run", "rom-access", "--backend", "kvm", "-c", "1", "-m", "16", "--passes", "3",
                "--policy", "zap-slot", "--json", check=True).stdout
    )  # fmt: skip
    assert [r["arch"] for r in doc["results"]] == [here]
    for other in {"x86-shadow", "x86-ept", "x86-tdp"} - {here}:
        proc = mmbench("run", "rom-access", "--backend", "kvm", "--arch", other, "-m", "16")
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert f"backend kvm runs this host's MMU, {here} ({why}); {other} needs" in line
