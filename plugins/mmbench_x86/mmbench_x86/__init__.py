"""x86 arch backends for mmbench: ``x86-shadow`` (shadow paging)."""

from mmbench.hookspecs import hookimpl
from mmbench_x86.shadow import X86Shadow


@hookimpl
def mmbench_register_archs(register):
    register(X86Shadow)
