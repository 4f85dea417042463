"""Durations and sizes as people type them (30s, 10m, 500M) and durations as
people read them (8.39 ms). No heavy imports: the report, the plots and the
notebooks share :func:`fmt_duration`."""

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


_LAT_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def parse_latency(s) -> int:
    """'100us', '100µs', '2ms', '500ns', '0.5s' -> nanoseconds. A unit is
    required: a bare number reads as seconds to some tools and as
    milliseconds or microseconds to others."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ns|us|µs|ms|s)?\s*", str(s))
    if not m:
        raise UsageError(f"cannot read {s!r} as a latency: use e.g. 100us, 2ms or 500ns")
    if m.group(2) is None:
        raise UsageError(f"latency {s!r} needs a unit: 100us, 2ms, 500ns")
    v = float(m.group(1)) * _LAT_UNITS[m.group(2)]
    if not math.isfinite(v) or round(v) <= 0:
        raise UsageError(f"latency {s!r} must be at least 1ns")
    return int(round(v))


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


#: (unit, ns per unit), smallest first
_UNITS = (("ns", 1), ("µs", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000))


def _sig3(v: float, up: bool = False) -> float:
    """v rounded to 3 significant digits (``up``: towards +infinity)."""
    if v == 0:
        return 0.0
    digits = 2 - math.floor(math.log10(abs(v)))
    if not up:
        return round(v, digits)
    q = 10.0 ** digits
    r = math.ceil(v * q - 1e-9) / q        # 1e-9: 8.19 stays 8.19 through float noise
    return r


def _plain(v: float) -> str:
    """A number without exponent: '8.39', '999', '1230'."""
    text = f"{v:.3g}"
    return f"{v:.0f}" if "e" in text else text


def fmt_duration(ns, *, up: bool = False) -> str:
    """A duration in ns as ns, µs, ms or s with at most 3 significant digits:
    '999 ns', '1 µs', '8.39 ms', '1.5 s'. The unit is chosen after rounding, so
    999.9 µs reads '1 ms' (never '1e+03 µs' or '1000 µs'); nanoseconds are whole.
    ``up`` rounds up, for upper bounds (:func:`fmt_upper`). None or NaN: '-'."""
    if ns is None or isinstance(ns, bool):
        return "-"
    try:
        v = float(ns)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(v):
        return "-"
    sign, v = ("-", -v) if v < 0 else ("", v)
    whole_ns = math.ceil(v - 1e-9) if up else round(v)
    if whole_ns < 1000:
        return f"{sign}{whole_ns} ns"
    for unit, scale in _UNITS[1:]:
        r = _sig3(v / scale, up)
        if r < 1000 or unit == "s":
            return f"{sign}{_plain(r)} {unit}"
    raise AssertionError("unreachable")


def fmt_upper(ns) -> str:
    """An upper bound, such as the top of a log2 bucket (--aggregate
    recordings): '≤ 8.2 µs', rounded up so that it stays a bound."""
    text = fmt_duration(ns, up=True)
    return text if text == "-" else f"≤ {text}"
