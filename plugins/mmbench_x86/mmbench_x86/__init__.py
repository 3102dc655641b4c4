"""x86 arch backends for mmbench: ``x86-shadow`` (shadow paging), ``x86-ept`` (legacy MMU
with EPT), ``x86-tdp`` (TDP MMU)."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench_x86.ept import X86Ept
from mmbench_x86.shadow import X86Shadow
from mmbench_x86.tdp import X86Tdp


@hookimpl
def mmbench_register_archs(register: Callable[[type], None]) -> None:
    register(X86Shadow)
    register(X86Ept)
    register(X86Tdp)
