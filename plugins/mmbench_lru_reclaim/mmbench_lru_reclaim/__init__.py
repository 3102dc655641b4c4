"""Shadow-page reclaim at ``n_max_mmu_pages`` (seed 004, 2009): ``fifo`` (KVM then),
``skip-roots`` (the thread's first improvement) and ``lru-scan`` (the proposal).

Each policy is its own module and entry point; a run composes one of them with a memslot
policy (``--policy zap-slot+lru-scan``).
"""
