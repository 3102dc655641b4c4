"""The x86 shadow MMU (and the legacy MMU of ``tdp_mmu=N``): ``mmu.ShadowMmu``, built from
one module per concept (sp table, zap, reclaim, fault path, invariants, guest tables)."""
