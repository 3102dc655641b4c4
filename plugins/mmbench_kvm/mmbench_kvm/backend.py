"""Backend ``kvm`` (the host's KVM through /dev/kvm): its registration.

Every ``mmbench`` process discovers this plugin, so this module imports nothing heavy:
the driver (ctypes, ioctls, the VM and vCPU code, ``kvm_vm.py``) is imported by the
methods that open /dev/kvm. The VM API on the kernel, and how a workload's VmSpec maps
onto the driver, are in ``kvm_vm.py``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from mmbench import hookimpl
from mmbench.errors import ConfigError

if TYPE_CHECKING:
    import pluggy

    from .kvm_vm import KvmVm


class KvmBackend:
    """The real kernel through /dev/kvm: a CPL3 guest, kernel knobs for policies."""

    name = "kvm"
    description = "the host's KVM through /dev/kvm (real time; policies = kernel knobs)"
    exclusive = True  # timings: policies run one after another, never in parallel
    traces = True  # --trace: the kernel's kvmmmu tracepoints (tracing.py)

    def available(self) -> tuple[bool, str]:
        if not os.path.exists("/dev/kvm"):
            return False, "/dev/kvm does not exist (no KVM module loaded, or not a KVM host)"
        from .errors import KvmError
        from .system import KvmSystem

        try:
            with KvmSystem() as s:
                tdp = s.tdp_mmu
        except OSError as exc:
            return False, f"cannot open /dev/kvm: {exc.strerror}"
        except KvmError as exc:
            return False, str(exc)
        mmu = "TDP MMU (tdp_mmu=Y)" if tdp else "shadow MMU (tdp_mmu=N)"
        return True, f"/dev/kvm usable, {mmu}"

    def default_arch(self) -> str:
        """The arch this kernel runs: its MMU (``system.host_mmu``), not a workload's
        modelled default."""
        from .system import KvmSystem

        with KvmSystem() as s:
            return s.mmu[0]

    def supported_policies(self, names: list[str], paths: tuple[str, ...] = ()) -> list[str]:
        """Of ``names``, those this kernel has a knob for on ``paths`` (the defaults)."""
        from . import knobs
        from .system import KvmSystem

        with KvmSystem() as s:
            tdp = s.mmu[0] == "x86-tdp"
            ok = {p.name for p in knobs.supported(s.supported_quirks, tdp, paths)}
        return [n for n in names if n in ok]

    def check_policies(self, names: list[str], arch: str, paths: tuple[str, ...] = ()) -> None:
        """Refuse, before anything runs, what this kernel cannot do."""
        from . import knobs
        from .system import KvmSystem

        with KvmSystem() as s:
            mask = s.supported_quirks
            here, why = s.mmu
        tdp = here == "x86-tdp"
        if arch != here:
            need = {
                "x86-tdp": "kvm_intel.ept=Y (or kvm_amd.npt=Y) and kvm.tdp_mmu=Y",
                "x86-ept": "kvm_intel.ept=Y (or kvm_amd.npt=Y) and kvm.tdp_mmu=N",
                "x86-shadow": "no TDP hardware (kvm_intel.ept=N, kvm_amd.npt=N)",
            }.get(arch, "an x86 host")
            raise ConfigError(
                "--arch",
                f"backend kvm runs this host's MMU, {here} ({why}); {arch} needs {need}",
            )
        for n in names:
            knobs.resolve(n, mask, tdp, paths)

    def create_vm(self, hook: pluggy.HookRelay, arch: Any, costs: Any, kernel: Any = None) -> KvmVm:
        """``kernel`` (the model's configuration) does not apply: the VM records the
        running kernel's own (``hostkernel.host_kernel``)."""
        from . import knobs
        from .kvm_vm import KvmVm, run_monitors, run_policy_name
        from .system import KvmSystem

        monitors = run_monitors(hook)
        if monitors:
            raise ConfigError(
                "--check",
                f"monitor {', '.join(monitors)} inspects the model's MMU state, which the"
                " kernel does not expose; use it with --backend sim",
            )
        system = KvmSystem()
        try:
            tdp = system.mmu[0] == "x86-tdp"
            name = run_policy_name(hook) or ("fast-zap" if tdp else "fast-invalidate")
            policy = knobs.resolve(name, system.supported_quirks, tdp)
        except BaseException:
            system.close()
            raise
        return KvmVm(arch, policy, system)


@hookimpl
def mmbench_register_backends(register):
    register(KvmBackend)
