"""Vcpu and VcpuThread: one vCPU fd, its kvm_run page, and the thread that runs it.

A vCPU runs the CPL3 touch guest (guest.py) in KVM_RUN; guest faults there are what build
sptes.  Each VcpuThread is a Python thread (KVM_RUN releases the GIL, so vCPUs run in
parallel) and is stopped by a SIGUSR1 kick that makes KVM_RUN return EINTR.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import ioctls as k
from .errors import GuestExitError, KvmError, VcpuTimeout
from .guest import DONE_PORT, PAGE_SIZE_4K, SystemImage
from .stats import StatsFdOwner

if TYPE_CHECKING:
    from .vm import Vm

IoCallback = Callable[[int, int, int], None]  # (port, value, perf_counter_ns)

# Long-mode CPL3 register state (see guest.py for why CPL3).
CR0_PE_MP_ET_NE_WP_AM_PG = 0x80050033
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11
RFLAGS_IOPL3 = 0x3002  # IOPL=3 so CPL3 `out` exits to us instead of #GP
USER_CS = 0x33
USER_DS = 0x2B
TSS_SEL = 0x40


_kick_lock = threading.Lock()
_kick_installed = False


def _kick_handler(signum: int, frame: object) -> None:
    """No-op: the signal only exists to make KVM_RUN return EINTR."""


def install_kick_handler() -> None:
    """Install the SIGUSR1 no-op handler used to kick vCPUs (main thread only).

    Without a handler SIGUSR1 would kill the process; with SIG_IGN the kernel
    would drop it and KVM_RUN would never see it.  An existing Python
    handler is kept: any real handler works.
    """
    global _kick_installed
    with _kick_lock:
        if _kick_installed:
            return
        current = signal.getsignal(signal.SIGUSR1)
        if current in (signal.SIG_DFL, signal.SIG_IGN, None):
            if threading.current_thread() is not threading.main_thread():
                raise KvmError("install_kick_handler() must be called from the main thread first")
            signal.signal(signal.SIGUSR1, _kick_handler)
        _kick_installed = True


def _segment(selector: int, type_: int, dpl: int, *, code: bool) -> k.kvm_segment:
    return k.kvm_segment(
        base=0,
        limit=0xFFFFFFFF,
        selector=selector,
        type=type_,
        present=1,
        dpl=dpl,
        db=0 if code else 1,
        s=1,
        l=1 if code else 0,
        g=1,
    )


class Vcpu(StatsFdOwner):
    """A vCPU fd, its mmap()ed kvm_run, and a KVM_RUN loop for the touch guest."""

    def __init__(self, vm: Vm, vcpu_id: int) -> None:
        self.vm = vm
        self.id = vcpu_id
        self.fd = k.ioctl(vm.fd, k.KVM_CREATE_VCPU, vcpu_id)
        self._run_size = vm.system.vcpu_mmap_size
        try:
            self._run_addr = k.mmap_fd(self.fd, self._run_size)
        except BaseException:
            os.close(self.fd)
            raise
        self._run: k.kvm_run | None = k.kvm_run.from_address(self._run_addr)
        self.stop_requested = False
        self._running_ident: int | None = None
        self._idle = threading.Event()
        self._idle.set()
        self.image: SystemImage | None = None
        # with drop_mmio_writes, KVM_EXIT_MMIO writes (to a gpa no memslot backs) are
        # dropped and the guest goes on, as a VMM with nothing mapped there does (the
        # backend's choice, as the model's); otherwise they end run() with an error
        self.drop_mmio_writes = False
        self.mmio_writes = 0

    # register state

    def get_regs(self) -> k.kvm_regs:
        r = k.kvm_regs()
        k.ioctl(self.fd, k.KVM_GET_REGS, r)
        return r

    def set_regs(self, regs: k.kvm_regs) -> None:
        k.ioctl(self.fd, k.KVM_SET_REGS, regs)

    def get_sregs(self) -> k.kvm_sregs:
        s = k.kvm_sregs()
        k.ioctl(self.fd, k.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, sregs: k.kvm_sregs) -> None:
        k.ioctl(self.fd, k.KVM_SET_SREGS, sregs)

    def set_cpuid(self, cpuid: ctypes.Structure) -> None:
        k.ioctl(self.fd, k.KVM_SET_CPUID2, cpuid)

    def setup_cpl3(self, image: SystemImage | None = None) -> None:
        """CPUID + 64-bit CPL3 segments/control registers for the touch guest.

        No GDT/IDT: segment caches are loaded straight from SET_SREGS; TR
        only has to look like a busy 64-bit TSS for the entry checks.  Any
        guest exception therefore ends in a triple fault (KVM_EXIT_SHUTDOWN).
        """
        image = image or self.vm.image
        if image is None:
            raise KvmError("no system image: call Vm.load_system_image() first")
        self.image = image
        self.set_cpuid(self.vm.system.supported_cpuid())
        s = self.get_sregs()
        s.cs = _segment(USER_CS, 11, 3, code=True)  # execute/read, accessed
        data = _segment(USER_DS, 3, 3, code=False)  # read/write, accessed
        s.ds = s.es = s.fs = s.gs = s.ss = data
        s.tr = k.kvm_segment(base=0, limit=0x67, selector=TSS_SEL, type=11, present=1)
        s.ldt = k.kvm_segment(selector=0, type=2, present=0, unusable=1)
        s.gdt = k.kvm_dtable(base=0, limit=0xFFFF)
        s.idt = k.kvm_dtable(base=0, limit=0)
        s.cr0 = CR0_PE_MP_ET_NE_WP_AM_PG
        s.cr3 = image.cr3
        s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
        s.efer = EFER_LME | EFER_LMA | EFER_NXE
        self.set_sregs(s)
        self.set_entry("spin")

    def _frame(self, entry: str) -> k.kvm_regs:
        """Fresh CPL3 registers at an entry; re-arming also clears a past stop."""
        if self.image is None:
            raise KvmError(f"vCPU {self.id}: call setup_cpl3() first")
        self.stop_requested = False
        r = k.kvm_regs()
        r.rip = self.image.entries[entry]
        r.rsp = self.image.stack_top
        r.rflags = RFLAGS_IOPL3
        return r

    def set_entry(self, entry: str) -> None:
        """Point RIP at an entry of the code blob with a fresh CPL3 frame."""
        self.set_regs(self._frame(entry))

    def set_touch(
        self,
        start: int,
        end: int,
        *,
        stride: int = PAGE_SIZE_4K,
        passes: int = 1,
        write: bool = True,
    ) -> None:
        """Arm the touch loop: `passes` passes over [start, end), one qword per stride."""
        r = self._frame("touch")
        r.rdi, r.rsi, r.rdx, r.rcx, r.r8 = start, end, stride, passes, int(write)
        self.set_regs(r)

    # running

    def claim_thread(self) -> int:
        """Run KVM_RUN once with immediate_exit so the per-thread pid switch
        (a synchronize_rcu() in KVM) is paid before anything is timed; ns."""
        t0 = time.perf_counter_ns()
        self._run.immediate_exit = 1
        try:
            k.ioctl(self.fd, k.KVM_RUN)
        except OSError as e:
            if e.errno != errno.EINTR:
                raise
        finally:
            self._run.immediate_exit = 0
        return time.perf_counter_ns() - t0

    def request_stop(self) -> None:
        """Make run() return soon: flag + immediate_exit (the caller kicks)."""
        self.stop_requested = True
        if self._run is not None:
            self._run.immediate_exit = 1

    def run(self, on_io: IoCallback | None = None) -> int | None:
        """KVM_RUN until the guest writes DONE_PORT; returns the value written.

        Every KVM_EXIT_IO out calls on_io(port, value, perf_counter_ns) with
        the time taken right after KVM_RUN returned.  Returns None if stopped
        via request_stop() + a signal kick (EINTR).  Raises GuestExitError
        on SHUTDOWN / FAIL_ENTRY / INTERNAL_ERROR / MMIO / anything else; with
        ``drop_mmio_writes`` MMIO writes are counted in ``mmio_writes`` and the guest goes on.
        """
        if self._run is None:
            raise KvmError(f"vCPU {self.id} is closed")
        run = self._run
        self._idle.clear()
        self._running_ident = threading.get_ident()
        try:
            run.immediate_exit = 0
            while True:
                if self.stop_requested:
                    return None
                try:
                    k.ioctl(self.fd, k.KVM_RUN)
                except OSError as e:
                    if e.errno == errno.EINTR:
                        continue  # a kick; the loop head checks the stop flag
                    raise
                now = time.perf_counter_ns()
                reason = run.exit_reason
                if reason == k.KVM_EXIT_IO:
                    io = run.exit.io
                    if io.direction == k.KVM_EXIT_IO_OUT:
                        raw = ctypes.string_at(self._run_addr + io.data_offset, io.size)
                        value = int.from_bytes(raw, "little")
                    else:
                        value = 0
                    if on_io is not None:
                        on_io(io.port, value, now)
                    if io.port == DONE_PORT:
                        return value
                    continue
                if reason == k.KVM_EXIT_INTR:
                    continue
                if reason == k.KVM_EXIT_MMIO and self.drop_mmio_writes and run.exit.mmio.is_write:
                    self.mmio_writes += 1  # the next KVM_RUN completes the instruction
                    continue
                raise self._exit_error(reason)
        finally:
            self._running_ident = None
            self._idle.set()

    def _exit_error(self, reason: int) -> GuestExitError:
        run = self._run
        detail = ""
        if reason == k.KVM_EXIT_FAIL_ENTRY:
            fe = run.exit.fail_entry
            detail = f"hardware_entry_failure_reason={fe.hardware_entry_failure_reason:#x}"
        elif reason == k.KVM_EXIT_INTERNAL_ERROR:
            ie = run.exit.internal
            data = ", ".join(f"{ie.data[i]:#x}" for i in range(min(ie.ndata, 16)))
            detail = f"suberror={ie.suberror} data=[{data}]"
        elif reason == k.KVM_EXIT_MMIO:
            m = run.exit.mmio
            kind = "write" if m.is_write else "read"
            detail = f"{kind} of {m.len} bytes at gpa {m.phys_addr:#x} (no memslot there)"
        elif reason == k.KVM_EXIT_SHUTDOWN:
            detail = "guest triple fault (an exception with no IDT)"
        try:
            rip: int | None = self.get_regs().rip
        except OSError:
            rip = None
        return GuestExitError(self.id, reason, rip, detail)

    def kick(self) -> None:
        """Signal the thread inside run() (if any) so KVM_RUN returns EINTR."""
        ident = self._running_ident
        if ident is not None:
            with contextlib.suppress(ProcessLookupError):  # thread just ended
                signal.pthread_kill(ident, signal.SIGUSR1)

    def stop(self, timeout: float = 5.0) -> bool:
        """request_stop() and kick until run() has returned; False on timeout."""
        install_kick_handler()  # SIGUSR1 without a handler would kill the process
        self.request_stop()
        deadline = time.monotonic() + timeout
        while not self._idle.wait(0.01):
            self.kick()
            if time.monotonic() > deadline:
                return False
        return True

    # teardown

    def close(self) -> None:
        """Close stats fd, munmap kvm_run, close the vCPU fd (stops run() first)."""
        if self.fd < 0:
            return
        if not self._idle.is_set() and not self.stop():
            raise KvmError(f"vCPU {self.id} is stuck in KVM_RUN and cannot be closed")
        try:
            self.close_stats()
        finally:
            self._run = None
            try:
                k.munmap(self._run_addr, self._run_size)
            finally:
                fd, self.fd = self.fd, -1
                os.close(fd)


class VcpuThread:
    """Runs one vCPU in a Python thread and timestamps every pass boundary.

    KVM_RUN releases the GIL, so several VcpuThreads run guests in
    parallel.  pass_ns[i] is perf_counter_ns when pass i's exit reached
    userspace; start_ns is taken just before the first KVM_RUN.
    """

    def __init__(self, vcpu: Vcpu, name: str | None = None) -> None:
        install_kick_handler()
        self.vcpu = vcpu
        self.pass_ns: list[int] = []
        self.start_ns = 0
        self.done_ns = 0
        self.result: int | None = None
        self.error: BaseException | None = None
        self.stopped = False
        self._thread = threading.Thread(
            target=self._main, name=name or f"vcpu{vcpu.id}", daemon=True
        )

    def _on_io(self, port: int, value: int, now: int) -> None:
        if port != DONE_PORT:
            self.pass_ns.append(now)

    def _main(self) -> None:
        try:
            self.vcpu.claim_thread()
            self.start_ns = time.perf_counter_ns()
            self.result = self.vcpu.run(self._on_io)
            self.done_ns = time.perf_counter_ns()
            self.stopped = self.result is None
        except BaseException as e:  # re-raised in join()
            self.error = e

    def start(self) -> VcpuThread:
        self._thread.start()
        return self

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def pass_durations_ns(self) -> list[int]:
        """Duration of each pass (first one measured from start_ns)."""
        edges = [self.start_ns, *self.pass_ns]
        return [b - a for a, b in zip(edges, edges[1:], strict=False)]

    def stop(self, timeout: float = 5.0) -> None:
        """Kick the vCPU out of KVM_RUN and wait for the thread to end."""
        if not self.vcpu.stop(timeout):
            raise VcpuTimeout(f"vCPU {self.vcpu.id} ignored SIGUSR1 kicks for {timeout}s")
        self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> int | None:
        """Wait for the guest's done exit; on timeout stop it and raise VcpuTimeout.

        Re-raises any error from the vCPU thread (e.g. GuestExitError).
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop()
            try:
                rip = f"{self.vcpu.get_regs().rip:#x}"
            except OSError:
                rip = "?"
            raise VcpuTimeout(
                f"vCPU {self.vcpu.id} did not finish within {timeout}s "
                f"({len(self.pass_ns)} passes done, RIP={rip}); it was kicked out of KVM_RUN"
            )
        if self.error is not None:
            raise self.error
        return self.result
