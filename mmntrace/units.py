"""Durations and sizes as people type them: 30s, 10m, 500M. No heavy imports."""

from __future__ import annotations

import math
import re

from .errors import UsageError

DAY = 86400


def parse_duration(s) -> float:
    """'30s', '10m', '2h', '1d', '250ms', '1.5' (seconds) -> seconds."""
    if isinstance(s, (int, float)):
        v = float(s)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d)?\s*", str(s))
        if not m:
            raise UsageError(f"cannot read {s!r} as a duration: use e.g. 30s, 10m, 2h or 1d")
        v = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": DAY, None: 1}[m.group(2)]
    if v <= 0 or not math.isfinite(v):
        raise UsageError(f"duration {s!r} must be positive")
    return v


def parse_size(s) -> int:
    """'500M', '2G', '1024' (bytes) -> bytes."""
    if isinstance(s, int) and s > 0:
        return s
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*", str(s), re.I)
    if not m:
        raise UsageError(f"cannot read {s!r} as a size: use e.g. 500M or 2G")
    unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
    v = int(float(m.group(1)) * 1024 ** " KMGT".index(unit or " "))
    if v <= 0:
        raise UsageError(f"size {s!r} must be positive")
    return v
