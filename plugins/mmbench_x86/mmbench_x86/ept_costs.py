"""Default cost table of the legacy MMU with EPT (``x86-ept``) on bare metal.

The work of a direct-map fault and of every zap is the shadow MMU's (sps, rmaps,
``kvm_mmu_prepare_zap_page``), so those costs are ``costs.py``'s, with its provenance:
- ``touch_page`` is derived from seed 001's zap-slot pass, and that 2019 host most likely
  ran EPT (PRIMER), so it fits this arch at least as well as shadow paging;
- ``fault_exit`` includes a guest page-table walk that an EPT violation does not make,
  but also ``gfn_to_pfn``, which dominates on a first touch; its stated range (0.8-3 us)
  covers both readings.
The one cost shadow paging lacks is the host mapping-level lookup of
``kvm_mmu_hugepage_adjust``; it is the TDP table's ``host_level_lookup`` (same walk of the
host page tables, ``host_pfn_mapping_level``), with that table's provenance and range.
"""

from mmbench.model.costs import CostTable
from mmbench_x86.costs import X86_SHADOW_BARE_METAL as _SHADOW
from mmbench_x86.tdp_costs import X86_TDP_BARE_METAL as _TDP

X86_EPT_BARE_METAL = CostTable(
    "x86-ept bare metal",
    {**{k: _SHADOW[k] for k in _SHADOW.costs}, "host_level_lookup": _TDP["host_level_lookup"]},
)
