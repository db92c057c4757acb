"""Byte sizes: parse "80GiB" / "24GB" and print GiB."""

from __future__ import annotations

import re

from ist_bench.errors import UsageError

GiB = 1 << 30
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str | None, what: str = "size", at_least: int = 0) -> int | None:
    """'80GiB' -> bytes. A unit is required: a bare 80 would silently mean 80 bytes. A whole number of
    bytes (`0.5B` is not one), and at least `at_least` (a memory of 0 bytes is no memory)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]+)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise UsageError(f"cannot read {text!r} as a size; write e.g. 80GiB, 24GB, 512MiB")
    size = float(m.group(1)) * _UNITS[unit]
    if not size < 2**63:   # 10**400 GiB is inf as a float
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise UsageError(f"size {shown!r} is beyond any memory; at most 8 EiB")
    if not size.is_integer():
        raise UsageError(f"{what} {text!r} is not a whole number of bytes")
    if size < at_least:
        raise UsageError(f"{what} {text!r} is below {at_least:,} bytes ({at_least >> 20} MiB)" if at_least >= 1 << 20
                         else f"{what} {text!r} must be at least {at_least} bytes")
    return int(size)


def gib(n: float | None, digits: int = 2) -> str:
    return "-" if n is None else f"{n / GiB:.{digits}f}"


def unit_for(values) -> tuple[str, int]:
    """One unit for a column of byte counts, chosen by the largest: a tiny model's numbers are not
    a column of 0.00 GiB."""
    top = max((abs(v) for v in values if v is not None), default=0)
    for name, size in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if top >= size:
            return name, size
    return "B", 1


def in_unit(n: float | None, size: int) -> str:
    if n is None:
        return ""
    return f"{n / size:.2f}" if size >= GiB else f"{n / size:.1f}" if size > 1 else f"{n:.0f}"


def human(n: float | None) -> str:
    """A byte count in its own unit: 27.64 GiB, 512.0 KiB."""
    if n is None:
        return "-"
    name, size = unit_for([n])
    return f"{in_unit(n, size)} {name}"
