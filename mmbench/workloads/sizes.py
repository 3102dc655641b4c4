"""Guest sizes as a KVM developer types them (``4T``, ``64G``, ``512M``, bytes) and reads
them back in messages: the same units both ways."""

from __future__ import annotations

import re

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
PiB = 1 << 50
REGION = 2 * MiB
_UNITS = {"K": KiB, "M": MiB, "G": GiB, "T": TiB, "P": PiB}
UNITS_HELP = "a size like 4T, 64G, 512M, 4096K or bytes (units K, M, G, T, P; KiB and KB alike)"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP])(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4T`` / ``4TiB`` / ``64G`` / ``4096M`` / plain bytes (decimal or 0x); ValueError
    naming the accepted forms otherwise. A fraction must come to whole bytes."""
    m = _SIZE_RE.match(text)
    if m:
        whole, _, frac = m.group(1).partition(".")
        scale = _UNITS[m.group(2).upper()]
        num = int(whole) * scale
        if frac:  # exact: 1.5G is 1610612736, no float rounding
            num += int(frac) * scale // 10 ** len(frac)
            if int(frac) * scale % 10 ** len(frac):
                raise ValueError(f"{text!r} is not a whole number of bytes")
        return num
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise ValueError(f"{text!r}: expected {UNITS_HELP}") from None


def size_text(n: int) -> str:
    """``4T``, ``64G``, ``2M``: the largest unit that divides ``n``; bytes otherwise."""
    for unit in ("P", "T", "G", "M", "K"):
        scale = _UNITS[unit]
        if n and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def fmt_size(n: int) -> str:
    """A size for tables and titles: ``4 TiB``, ``1.500 GiB``."""
    for unit, scale in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n / GiB:.3f} GiB"
