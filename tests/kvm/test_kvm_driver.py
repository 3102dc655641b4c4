"""Real-kernel tests of the mmbench_kvm /dev/kvm driver (root, KVM host needed).

Guests are a few MiB with 1-2 vCPUs so the module runs in well under 30 s.
Timing is only sanity-bounded; the numbers themselves belong to benchmarks.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import os
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import skip_module_without_dev_kvm

skip_module_without_dev_kvm("real-kernel tests need a KVM host")

from mmbench_kvm import ioctls as k  # noqa: E402
from mmbench_kvm.errors import GuestExitError, VcpuTimeout  # noqa: E402
from mmbench_kvm.guest import (  # noqa: E402
    DONE_PORT,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    PASS_PORT,
    GuestLayout,
    PageTables,
    touch_program,
)
from mmbench_kvm.stats import StatsReader  # noqa: E402
from mmbench_kvm.system import KvmSystem, module_loaded  # noqa: E402
from mmbench_kvm.vcpu import VcpuThread  # noqa: E402
from mmbench_kvm.vm import Vm, bitmap_pages, bitmap_popcount  # noqa: E402

D = GuestLayout.DATA_BASE
MiB = 1 << 20


@pytest.fixture(scope="module")
def kvm() -> Iterator[KvmSystem]:
    with KvmSystem() as s:
        yield s


def make_vm(
    kvm: KvmSystem,
    size: int,
    *,
    page_size: int = PAGE_SIZE_4K,
    extra_maps: tuple[tuple[int, int], ...] = (),
    vcpus: int = 1,
    thp: bool = True,
    log_dirty: bool = False,
    quirks_off: int = 0,
    manual_dirty: bool | None = None,
) -> Vm:
    """VM with the system slot 0 and a data slot 1 of `size` bytes at D."""
    vm = kvm.create_vm()
    try:
        if quirks_off:
            vm.disable_quirks(quirks_off)
        if manual_dirty is not None:
            vm.enable_manual_dirty_log(initially_set=manual_dirty)
        layout = GuestLayout()
        layout.map(D, size, page_size)
        for gpa, sz in extra_maps:
            layout.map(gpa, sz)
        vm.load_system_image(layout.build())
        vm.add_memslot(1, D, size, thp=thp, log_dirty=log_dirty)
        for _ in range(vcpus):
            vm.create_vcpu().setup_cpl3()
        return vm
    except BaseException:
        vm.close()
        raise


def touch(vm: Vm, start: int, end: int, *, passes: int = 1, write: bool = True, vcpu: int = 0):
    v = vm.vcpus[vcpu]
    v.set_touch(start, end, passes=passes, write=write)
    return v.run()


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def maps_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


# --- ABI and pure-Python parts ------------------------------------------------


def test_ioctl_numbers_match_kernel_abi() -> None:
    expected = {
        "KVM_CREATE_VM": 0xAE01,
        "KVM_CHECK_EXTENSION": 0xAE03,
        "KVM_GET_VCPU_MMAP_SIZE": 0xAE04,
        "KVM_GET_SUPPORTED_CPUID": 0xC008AE05,
        "KVM_CREATE_VCPU": 0xAE41,
        "KVM_GET_DIRTY_LOG": 0x4010AE42,
        "KVM_SET_USER_MEMORY_REGION": 0x4020AE46,
        "KVM_RUN": 0xAE80,
        "KVM_GET_REGS": 0x8090AE81,
        "KVM_SET_REGS": 0x4090AE82,
        "KVM_GET_SREGS": 0x8138AE83,
        "KVM_SET_SREGS": 0x4138AE84,
        "KVM_SET_CPUID2": 0x4008AE90,
        "KVM_ENABLE_CAP": 0x4068AEA3,
        "KVM_CLEAR_DIRTY_LOG": 0xC018AEC0,
        "KVM_GET_STATS_FD": 0xAECE,
    }
    assert {n: getattr(k, n) for n in expected} == expected
    assert ctypes.sizeof(k.kvm_cpuid_entry2) == 40
    assert ctypes.sizeof(k.kvm_stats_desc) == 16
    assert k.kvm_run.exit_reason.offset == 8
    assert k.kvm_run.exit.offset == 32
    assert ctypes.sizeof(k.make_cpuid2(3)) == 8 + 3 * 40


def test_code_blob_and_page_tables() -> None:
    code, entries, listing = touch_program()
    assert entries["touch"] == 0 and code[entries["spin"] :][:2] == b"\xeb\xfe"
    assert bytes([0xE7, PASS_PORT]) in code and bytes([0xE7, DONE_PORT]) in code
    assert "pass_loop:" in listing and "out 0x10" in listing

    pt = PageTables(0x3000)
    pt.map(D, 4 * MiB)
    pt.map(D + 4 * MiB, 4 * MiB, PAGE_SIZE_2M, writable=False)
    assert pt.lookup(D + 0x5123) == (D + 0x5123, PAGE_SIZE_4K)
    assert pt.lookup(D + 5 * MiB + 7) == (D + 5 * MiB + 7, PAGE_SIZE_2M)
    assert pt.lookup(D + 8 * MiB) is None
    # PML4 + PDPT + PD + 2 PTs for the 4 KiB part.
    assert pt.size == 5 * PAGE_SIZE_4K and len(pt.image()) == pt.size
    with pytest.raises(ValueError):
        pt.map(D + 4 * MiB, PAGE_SIZE_4K)  # already a 2 MiB page there
    with pytest.raises(ValueError):
        pt.map(D + 1, PAGE_SIZE_4K)

    layout = GuestLayout()
    layout.map(D, 2 * MiB)
    img = layout.build()
    assert img.page_tables.lookup(img.entries["touch"])[0] == img.entries["touch"]
    assert img.size % PAGE_SIZE_4K == 0 and img.cr3 == 0x3000
    bad = GuestLayout()
    bad.map(0, PAGE_SIZE_2M, PAGE_SIZE_2M)  # the system area itself
    with pytest.raises(ValueError):
        bad.build()


def test_system_capabilities(kvm: KvmSystem) -> None:
    assert kvm.api_version == 12
    assert kvm.vcpu_mmap_size >= 4096
    assert kvm.supports("USER_MEMORY") and kvm.supports("BINARY_STATS_FD")
    assert kvm.check_extension("NR_MEMSLOTS") >= 32
    assert kvm.supported_cpuid().nent > 0
    assert module_loaded("kvm") and kvm.loaded_modules["kvm"]
    assert "halt_poll_ns" in kvm.params["kvm"]
    if kvm.param("tdp_mmu") is not None:
        assert kvm.tdp_mmu in (True, False)
    mask = kvm.supported_quirks
    assert kvm.supports("SLOT_ZAP_ALL") == bool(mask & k.KVM_X86_QUIRK_SLOT_ZAP_ALL)
    assert ("SLOT_ZAP_ALL" in kvm.quirk_names(mask)) == kvm.supports("SLOT_ZAP_ALL")
    assert KvmSystem.quirk_names(1 << 40) == ["bit40"]
    with pytest.raises(KeyError):
        kvm.supports("NO_SUCH_THING")


# --- guest execution ----------------------------------------------------------


def test_guest_runs_natively_with_pass_timestamps(kvm: KvmSystem) -> None:
    size = 4 * MiB
    pages = size // PAGE_SIZE_4K
    with make_vm(kvm, size, vcpus=2, thp=False) as vm:
        before = vm.stats()["pages_4k"]
        half = D + size // 2
        threads = [
            VcpuThread(vm.vcpus[0]),
            VcpuThread(vm.vcpus[1]),
        ]
        vm.vcpus[0].set_touch(D, half, passes=3)
        vm.vcpus[1].set_touch(half, D + size, passes=3)
        for t in threads:
            t.start()
        assert [t.join(20) for t in threads] == [3, 3]
        for t in threads:
            durations = t.pass_durations_ns()
            assert len(durations) == 3 and all(0 < d < 10 * 10**9 for d in durations)
            assert t.done_ns >= t.pass_ns[-1]
        vstats = vm.vcpu_stats_sum()
        assert vstats["pf_fixed"] >= pages
        assert vstats["insn_emulation"] < 100, "guest code should run natively"
        grown = vm.stats()["pages_4k"] - before
        assert pages <= grown <= pages + 64
        # Every page holds the last pass index: the guest really wrote it.
        words = vm.memslots[1].view(np.uint64)[:: PAGE_SIZE_4K // 8]
        assert (words == 2).all()

        # A read pass over populated memory faults nothing in.
        pf0 = vm.vcpu_stats_sum()["pf_fixed"]
        assert touch(vm, D, D + size, write=False) == 1
        assert vm.vcpu_stats_sum()["pf_fixed"] - pf0 < 16


def test_warm_page_tables_let_the_shadow_mmu_prefetch(kvm: KvmSystem) -> None:
    """Preset A/D gptes + host pages present: one fault maps several sptes."""
    size = 2 * MiB
    pages = size // PAGE_SIZE_4K
    results = {}
    for accessed in (False, True):
        with kvm.create_vm() as vm:
            layout = GuestLayout()
            layout.map(D, size, accessed=accessed)
            img = layout.build()
            assert img.page_tables.lookup(D) == (D, PAGE_SIZE_4K)
            vm.load_system_image(img)
            vm.add_memslot(1, D, size, thp=False, prefault=True)
            vm.create_vcpu().setup_cpl3()
            touch(vm, D, D + size)
            results[accessed] = vm.vcpus[0].stats()["pf_fixed"]
            assert vm.stats()["pages_4k"] >= pages
    assert results[False] >= pages
    assert results[True] < pages // 2


def test_io_callback_sees_every_pass(kvm: KvmSystem) -> None:
    with make_vm(kvm, 1 * MiB) as vm:
        v = vm.vcpus[0]
        v.set_touch(D, D + MiB, passes=4)
        seen: list[tuple[int, int]] = []
        assert v.run(lambda port, val, ns: seen.append((port, val))) == 4
        assert seen == [
            (PASS_PORT, 0),
            (PASS_PORT, 1),
            (PASS_PORT, 2),
            (PASS_PORT, 3),
            (DONE_PORT, 4),
        ]


def test_2m_guest_pages_on_thp_give_2m_sptes(kvm: KvmSystem) -> None:
    size = 8 * MiB
    with make_vm(kvm, size, page_size=PAGE_SIZE_2M, thp=True) as vm:
        assert touch(vm, D, D + size, passes=2) == 2
        st = vm.stats()
        assert st["pages_2m"] == size // PAGE_SIZE_2M
        assert st["pages_4k"] < 64  # just the system slot


@pytest.mark.parametrize("quirk", ["on", "off"])
def test_slot_delete_zaps_all_only_with_quirk(kvm: KvmSystem, quirk: str) -> None:
    if quirk == "off" and not kvm.supports("SLOT_ZAP_ALL"):
        pytest.skip("KVM_X86_QUIRK_SLOT_ZAP_ALL cannot be disabled on this kernel")
    size = 8 * MiB
    mask = k.KVM_X86_QUIRK_SLOT_ZAP_ALL if quirk == "off" else 0
    with make_vm(kvm, size, quirks_off=mask) as vm:
        vm.add_memslot(2, D + 256 * MiB, 128 * 1024)
        touch(vm, D, D + size)
        before = vm.stats()
        pf0 = vm.vcpu_stats_sum()["pf_fixed"]
        ns = vm.delete_memslot(2)
        after = vm.stats()
        touch(vm, D, D + size)
        refaults = vm.vcpu_stats_sum()["pf_fixed"] - pf0
        assert 0 < ns < 5 * 10**9
        assert 2 not in vm.memslots
        if quirk == "off":
            assert after["pages_4k"] >= before["pages_4k"] - 8
            assert refaults < 16
        else:
            assert after["pages_4k"] < before["pages_4k"] // 10
            assert after["mmu_shadow_zapped"] > before["mmu_shadow_zapped"]
            assert refaults > 0


def test_dirty_log_reports_exactly_the_written_pages(kvm: KvmSystem) -> None:
    size = 2 * MiB
    with make_vm(kvm, size) as vm:
        touch(vm, D, D + size)  # populate first, so logging has sptes to protect
        with pytest.raises(OSError) as ei:
            vm.get_dirty_log(1)  # KVM has no bitmap for a slot that is not logging
        assert ei.value.errno == errno.ENOENT and "KVM_GET_DIRTY_LOG" in str(ei.value)
        assert vm.set_dirty_logging(1, True) > 0
        lo, hi = 37, 301  # pages, deliberately not 64-aligned
        touch(vm, D + lo * PAGE_SIZE_4K, D + hi * PAGE_SIZE_4K)
        bm = vm.get_dirty_log(1)
        assert bm.dtype == np.uint64 and bm.size == size // PAGE_SIZE_4K // 64
        assert bitmap_popcount(bm) == hi - lo
        assert (bitmap_pages(bm) == np.arange(lo, hi)).all()
        hva = vm.memslots[1].gpa_to_hva(D + lo * PAGE_SIZE_4K)
        assert ctypes.c_uint64.from_address(hva).value == 0  # pass 0 wrote its index
        with pytest.raises(ValueError):
            vm.memslots[1].gpa_to_hva(D + size)
        # Without manual protect GET_DIRTY_LOG cleared and re-protected.
        assert bitmap_popcount(vm.get_dirty_log(1)) == 0
        touch(vm, D, D + 10 * PAGE_SIZE_4K, write=False)
        assert bitmap_popcount(vm.get_dirty_log(1)) == 0  # reads dirty nothing
        vm.set_dirty_logging(1, False)


def test_manual_dirty_log_protect_and_clear(kvm: KvmSystem) -> None:
    size = 2 * MiB
    npages = size // PAGE_SIZE_4K
    with make_vm(kvm, size, manual_dirty=False, log_dirty=True) as vm:
        touch(vm, D, D + 128 * PAGE_SIZE_4K)
        assert bitmap_popcount(vm.get_dirty_log(1)) == 128
        assert bitmap_popcount(vm.get_dirty_log(1)) == 128  # GET no longer clears
        # Clear only pages 64..127 via an explicit bitmap.
        vm.clear_dirty_log(1, 64, 64, np.array([~np.uint64(0)], dtype=np.uint64))
        assert (bitmap_pages(vm.get_dirty_log(1)) == np.arange(64)).all()
        assert vm.clear_dirty_log(1) > 0  # everything
        assert bitmap_popcount(vm.get_dirty_log(1)) == 0
        touch(vm, D + 100 * PAGE_SIZE_4K, D + 110 * PAGE_SIZE_4K)
        assert (bitmap_pages(vm.get_dirty_log(1)) == np.arange(100, 110)).all()
        with pytest.raises(ValueError):
            vm.clear_dirty_log(1, 3, 64)
    with make_vm(kvm, size, manual_dirty=True, log_dirty=True) as vm:
        # KVM_DIRTY_LOG_INITIALLY_SET: the whole slot starts dirty.
        assert bitmap_popcount(vm.get_dirty_log(1)) == npages


def test_move_memslot(kvm: KvmSystem) -> None:
    size = 2 * MiB
    new = D + 64 * MiB
    with make_vm(kvm, size, extra_maps=((new, size),)) as vm:
        touch(vm, D, D + size)
        assert vm.move_memslot(1, new) > 0
        assert vm.memslots[1].gpa == new
        assert touch(vm, new, new + size, passes=2) == 2
        assert (vm.memslots[1].view(np.uint64)[::512] == 1).all()
        with pytest.raises(GuestExitError) as ei:
            touch(vm, D, D + size)  # old gpa: no memslot any more
        assert ei.value.reason == k.KVM_EXIT_MMIO and "no memslot" in str(ei.value)


def test_readonly_memslot_and_vm_caps(kvm: KvmSystem) -> None:
    with make_vm(kvm, 1 * MiB, extra_maps=((D + 8 * MiB, 64 * 1024),)) as vm:
        assert vm.check_extension("MANUAL_DIRTY_LOG_PROTECT2") & 1
        vm.enable_cap(k.KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, k.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        rom = vm.add_memslot(2, D + 8 * MiB, 64 * 1024, readonly=True)
        rom.write(0, (0x1234).to_bytes(8, "little"))
        assert touch(vm, rom.gpa, rom.gpa + rom.size, write=False) == 1  # reads are fine
        with pytest.raises(GuestExitError) as ei:
            touch(vm, rom.gpa, rom.gpa + rom.size)  # writes to a ROM slot exit to userspace
        assert ei.value.reason == k.KVM_EXIT_MMIO and "write of 8 bytes" in str(ei.value)
        assert rom.view(np.uint64)[0] == 0x1234


def test_faulting_guest_raises_shutdown_and_leaks_nothing(kvm: KvmSystem) -> None:
    gc.collect()
    fds, maps = fd_count(), maps_count()
    vm = make_vm(kvm, 1 * MiB, vcpus=2)
    try:
        vm.vcpus[1].set_touch(D + 32 * MiB, D + 33 * MiB)
        t = VcpuThread(vm.vcpus[1]).start()
        with pytest.raises(GuestExitError, match="KVM_EXIT_SHUTDOWN"):
            t.join(10)  # the thread's error is re-raised by join()
        with pytest.raises(GuestExitError) as ei:
            touch(vm, D + 16 * MiB, D + 17 * MiB)  # not in the guest page tables
        err = ei.value
        assert err.reason == k.KVM_EXIT_SHUTDOWN and err.reason_name == "KVM_EXIT_SHUTDOWN"
        assert err.rip == vm.image.entries["touch"] + 0x15  # the `mov [rbx], r9`
        assert "RIP=0x" in str(err)
        vm.stats()  # an open stats fd must not stop close() from releasing all
        vm.vcpus[0].stats()
    finally:
        vm.close()
    gc.collect()
    assert (fd_count(), maps_count()) == (fds, maps)


def test_stuck_guest_is_kicked_by_timeout_and_stop(kvm: KvmSystem) -> None:
    with make_vm(kvm, 1 * MiB, vcpus=2) as vm:
        for v in vm.vcpus:
            v.set_entry("spin")
        t = VcpuThread(vm.vcpus[0]).start()
        assert t.ident is not None
        with pytest.raises(VcpuTimeout, match="did not finish"):
            t.join(0.3)
        assert not t.is_alive() and t.stopped and t.result is None

        t2 = VcpuThread(vm.vcpus[1]).start()
        t2.stop()
        assert not t2.is_alive() and t2.stopped
        # The kicked vCPU is still usable: re-arming clears the stop request.
        vm.vcpus[1].set_touch(D, D + MiB)
        assert vm.vcpus[1].run() == 1


def test_stats_reader(kvm: KvmSystem) -> None:
    with make_vm(kvm, 1 * MiB) as vm:
        touch(vm, D, D + MiB)
        r = vm.vcpus[0].stats_reader
        raw = r.read()
        scaled = r.read_scaled()
        for name in ("pf_taken", "pf_fixed", "exits", "insn_emulation"):
            assert name in raw and scaled[name] == raw[name]
        hists = r.read_histograms()
        for name, buckets in hists.items():
            assert r.descs[name].is_histogram and raw[name] == int(buckets.sum())
        timed = [d for d in r.descs.values() if d.unit == "seconds"]
        for d in timed:
            assert scaled[d.name] == pytest.approx(raw[d.name] * 10.0**d.exponent)
        vs = vm.stats()
        for name in ("mmu_shadow_zapped", "mmu_cache_miss", "pages_4k", "remote_tlb_flush"):
            assert name in vs
        assert vm.stats_reader.id.startswith("kvm-")
        vm.close_stats()
        with pytest.raises(ValueError):
            r.read()
        # A standalone reader owns its fd and closes it on exit.
        with StatsReader(k.ioctl(vm.fd, k.KVM_GET_STATS_FD)) as own:
            assert own.read()["pages_4k"] == vs["pages_4k"]
        assert own.fd == -1


def test_close_releases_everything_and_times_teardown(kvm: KvmSystem) -> None:
    vm = make_vm(kvm, 2 * MiB)
    touch(vm, D, D + 2 * MiB)
    kept = vm.memslots[1]
    vm.delete_memslot(1, free=False)
    assert not kept.freed and kept.view(np.uint64)[0] == 0  # still readable
    maps = maps_count()
    with pytest.raises(k.KvmIoctlError) as ei:
        vm.add_memslot(3, 0, PAGE_SIZE_4K)  # overlaps the system slot
    assert ei.value.errno == errno.EEXIST
    assert 3 not in vm.memslots and maps_count() == maps  # refused memory freed at once
    ns = vm.close()
    assert 0 < ns < 10 * 10**9 and vm.closed and kept.freed
    assert vm.close() == ns  # idempotent


def test_no_leaks_over_200_vms(kvm: KvmSystem) -> None:
    def cycle(i: int) -> None:
        with make_vm(kvm, 256 * 1024) as vm:
            vm.add_memslot(2, D + 16 * MiB, 64 * 1024)
            vm.stats()
            if i % 50 == 0:
                t = VcpuThread(vm.vcpus[0])
                vm.vcpus[0].set_touch(D, D + 256 * 1024)
                assert t.start().join(10) == 1
            else:
                assert touch(vm, D, D + 256 * 1024) == 1
            vm.vcpus[0].stats()
            vm.delete_memslot(2)

    def abandoned() -> None:
        vm = make_vm(kvm, 256 * 1024)  # never closed: Vm.__del__ is the safety net
        touch(vm, D, D + 256 * 1024)

    cycle(0)  # warm up lazily allocated interpreter/thread state
    gc.collect()
    fds, maps = fd_count(), maps_count()
    for i in range(200):
        cycle(i)
    abandoned()
    gc.collect()
    assert fd_count() == fds
    assert maps_count() == maps
