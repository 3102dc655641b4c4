"""Guest sizes as a KVM developer types them: ``4T``, ``64G``, ``512M`` or bytes."""

from __future__ import annotations

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
REGION = 2 * MiB
_UNITS = {"K": 1 << 10, "M": MiB, "G": GiB, "T": TiB}


def parse_size(text: str) -> int:
    """``4T`` / ``4TiB`` / ``64G`` / ``4096M`` / plain bytes; ValueError otherwise."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in _UNITS:
        return int(float(t[:-1]) * _UNITS[t[-1]])
    return int(t, 0)


def fmt_size(n: int) -> str:
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n / GiB:.3f} GiB"
