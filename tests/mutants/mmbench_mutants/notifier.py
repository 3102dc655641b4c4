"""Broken MMU-notifier policies (``kvm_unmap_gfn_range``) and a fault path that ignores
``mmu_invalidate_seq``, on x86-shadow, x86-tdp and arm64."""

from __future__ import annotations

from collections.abc import Callable

from mmbench import hookimpl
from mmbench.model.kvm import Kvm
from mmbench.model.notifier import KvmGfnRange


class NotifierForgetsFlush:
    """Zaps the range but tells ``kvm_handle_hva_range`` no flush is owed: the host frees
    pages that vCPUs' TLBs still map."""

    name = "notifier-forgets-flush"
    archs = ("x86-shadow", "x86-tdp")
    options: dict = {}

    @hookimpl
    def mmbench_unmap_gfn_range(self, kvm: Kvm, range: KvmGfnRange) -> bool:
        kvm.mmu.kvm_unmap_gfn_range(range.start, range.end, range.may_block)
        return False


class NotifierOffByOne:
    """Zaps ``[start, end - 1)``: the last page (region) of each range stays mapped."""

    name = "notifier-off-by-one"
    archs = ("x86-shadow", "x86-tdp")
    options: dict = {}

    @hookimpl
    def mmbench_unmap_gfn_range(self, kvm: Kvm, range: KvmGfnRange) -> bool:
        end = range.end - (1 if kvm.arch.name == "x86-shadow" else 512)
        return kvm.mmu.kvm_unmap_gfn_range(range.start, end, range.may_block)


class IgnoresMmuSeq:
    """The right zap, but the fault path never retries: ``mmu_invalidate_retry_gfn``
    (and its unlocked twin) always say go, so a fault racing the invalidation maps the
    page the host is freeing. A plugin that patches the model, as a broken kernel
    would behave."""

    name = "ignores-mmu-seq"
    archs = ("x86-shadow", "x86-tdp", "arm64")
    options: dict = {}

    @hookimpl
    def mmbench_vm_created(self, kvm: Kvm) -> None:
        mn = kvm.notifier
        mn.retry_gfn = lambda mmu_seq, gfn0, gfn1: False
        mn.in_range = lambda gfn0, gfn1: False

    @hookimpl
    def mmbench_unmap_gfn_range(self, kvm: Kvm, range: KvmGfnRange) -> bool:
        arm = kvm.arch.name == "arm64"
        return kvm.mmu.kvm_unmap_gfn_range(
            range.start,
            range.end,
            range.may_block,
            **({"cmo": True, "tlbi_per_ipa": True} if arm else {}),
        )


class ElidesEveryCmoAndTlbi:
    """s2-elide taken too far: no CMO and no per-IPA TLBI on any notifier event, and no
    flush owed: stale stage-2 TLB entries survive the unmap."""

    name = "s2-elides-tlbi"
    archs = ("arm64",)
    options: dict = {}

    @hookimpl
    def mmbench_unmap_gfn_range(self, kvm: Kvm, range: KvmGfnRange) -> bool:
        kvm.mmu.kvm_unmap_gfn_range(range.start, range.end, range.may_block)
        return False


MUTANTS = (NotifierForgetsFlush, NotifierOffByOne, IgnoresMmuSeq, ElidesEveryCmoAndTlbi)


@hookimpl
def mmbench_register_policies(register: Callable[[type], None]) -> None:
    for cls in MUTANTS:
        register(cls)
