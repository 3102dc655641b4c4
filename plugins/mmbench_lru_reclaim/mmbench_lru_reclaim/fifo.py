"""Policy ``fifo``: zap the oldest shadow page, as KVM did in 2009."""

from mmbench import hookimpl


class Fifo:
    """FIFO reclaim: zap the oldest sp, as KVM did in 2009 (seed 004).

    ``__kvm_mmu_free_some_pages()`` before the "smarter shadow page reclaim" RFC.

    Zap the tail of ``active_mmu_pages`` (the oldest sp) until ``KVM_REFILL_PAGES`` are
    free, whatever it is: a hot leaf, a directory, or a root a vCPU is running on (which
    is only made invalid and forces every vCPU to reload). This is also the arch's default.
    """

    name = "fifo"
    year = 2007  # KVM's reclaim from the start
    archs = ("x86-shadow",)
    options: dict = {}

    @hookimpl
    def mmbench_reclaim(self, kvm, nr_to_zap):
        return kvm.mmu.oldest_mmu_pages(nr_to_zap)


@hookimpl
def mmbench_register_policies(register):
    register(Fifo)
