"""KvmSystem: the /dev/kvm system fd, what the host's KVM offers before any VM exists.

Capabilities, disable-able quirks, module parameters (tdp_mmu, eager_page_split...) and
the supported CPUID are properties of the host, not of one VM: ``doctor`` reads them
without creating a guest, and every Vm is created from here (KVM_CREATE_VM).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from . import ioctls as k
from .errors import KvmError
from .vm import Vm


def module_params(module: str) -> dict[str, str]:
    """/sys/module/<module>/parameters as strings ({} if not loaded)."""
    out: dict[str, str] = {}
    pdir = Path("/sys/module") / module / "parameters"
    if not pdir.is_dir():
        return out
    for p in sorted(pdir.iterdir()):
        try:
            out[p.name] = p.read_text().strip()
        except OSError:
            continue  # write-only or permission-restricted parameter
    return out


def module_loaded(module: str) -> bool:
    return (Path("/sys/module") / module).exists()


def _yes(v: str | None) -> bool:
    return v in ("Y", "1")


def host_mmu(params: dict[str, dict[str, str]]) -> tuple[str, str]:
    """The arch that models this host's MMU, from its module parameters, and why.

    TDP hardware is ``kvm_intel.ept`` or ``kvm_amd.npt`` (``tdp_enabled``); the TDP MMU
    runs where it is on and ``kvm.tdp_mmu`` is too (``tdp_mmu_enabled = tdp_mmu_allowed &&
    tdp_enabled``), else the legacy MMU builds direct sps (x86-ept). Without TDP hardware
    (the parameter off, or a module without one, such as kvm_pvm) it is shadow paging."""
    hw = [(m, name) for m, name in (("kvm_intel", "ept"), ("kvm_amd", "npt")) if m in params]
    tdp_mmu = params.get("kvm", {}).get("tdp_mmu")
    for module, name in hw:
        value = params[module].get(name)
        if _yes(value):
            if _yes(tdp_mmu):
                return "x86-tdp", f"{module}.{name}=Y, kvm.tdp_mmu=Y: the TDP MMU"
            return (
                "x86-ept",
                f"{module}.{name}=Y, kvm.tdp_mmu={tdp_mmu}: the legacy MMU's direct sps",
            )
        if value is not None:
            return "x86-shadow", f"{module}.{name}={value}: shadow paging"
    others = [m for m in params if m != "kvm"] or ["no arch module"]
    return "x86-shadow", (
        f"{'+'.join(others)} has no ept/npt parameter, kvm.tdp_mmu={tdp_mmu}: shadow paging"
    )


class KvmSystem:
    """/dev/kvm: capabilities, module parameters, VM factory."""

    ARCH_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.api_version = k.ioctl(self.fd, k.KVM_GET_API_VERSION)
            if self.api_version != k.KVM_API_VERSION:
                raise KvmError(f"KVM API version {self.api_version}, expected 12")
            self.vcpu_mmap_size = k.ioctl(self.fd, k.KVM_GET_VCPU_MMAP_SIZE)
        except BaseException:
            os.close(self.fd)
            raise
        self._cpuid: ctypes.Structure | None = None

    def check_extension(self, cap: int | str) -> int:
        """KVM_CHECK_EXTENSION; cap may be a number or a name from ioctls.CAPS."""
        return k.check_extension(self.fd, cap)

    def supports(self, name: str) -> bool:
        """True if capability NAME (ioctls.CAPS) or quirk NAME (ioctls.QUIRKS) exists."""
        if name in k.CAPS:
            return self.check_extension(name) > 0
        if name in k.QUIRKS:
            return bool(self.supported_quirks & k.QUIRKS[name])
        raise KeyError(f"unknown capability/quirk {name!r}")

    @property
    def supported_quirks(self) -> int:
        """Mask of quirks KVM_CAP_DISABLE_QUIRKS2 can disable (0 if unsupported)."""
        return self.check_extension(k.KVM_CAP_DISABLE_QUIRKS2)

    @staticmethod
    def quirk_names(mask: int) -> list[str]:
        """Names of the quirk bits in mask; unknown bits show as "bitN"."""
        known = {bit: n for n, bit in k.QUIRKS.items()}
        return [known.get(1 << i, f"bit{i}") for i in range(64) if mask >> i & 1]

    @property
    def loaded_modules(self) -> dict[str, bool]:
        return {m: module_loaded(m) for m in ("kvm", *self.ARCH_MODULES)}

    @property
    def params(self) -> dict[str, dict[str, str]]:
        """Parameters of kvm and each loaded arch module (tdp_mmu, eager_page_split...)."""
        return {m: module_params(m) for m, on in self.loaded_modules.items() if on}

    def param(self, name: str) -> str | None:
        """One parameter, looked up in kvm then the arch modules."""
        for mod in self.params.values():
            if name in mod:
                return mod[name]
        return None

    @property
    def mmu(self) -> tuple[str, str]:
        """(arch, reason): ``host_mmu`` of this host's module parameters."""
        return host_mmu(self.params)

    @property
    def tdp_mmu(self) -> bool | None:
        v = self.param("tdp_mmu")
        return None if v is None else v in ("Y", "1")

    def supported_cpuid(self) -> ctypes.Structure:
        """KVM_GET_SUPPORTED_CPUID, grown until it fits (cached)."""
        if self._cpuid is None:
            nent = 64
            while True:
                c = k.make_cpuid2(nent)
                try:
                    k.ioctl(self.fd, k.KVM_GET_SUPPORTED_CPUID, c)
                    break
                except OSError as e:
                    if e.errno != errno.E2BIG or nent > 4096:
                        raise
                    nent *= 2
            self._cpuid = c
        return self._cpuid

    def create_vm(self, vm_type: int = 0) -> Vm:
        return Vm(self, vm_type)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> KvmSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
