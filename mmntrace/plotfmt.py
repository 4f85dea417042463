"""Axes as people read them, shared by :mod:`mmntrace.plot` and the notebooks.

- durations: :func:`fmt_duration` ('999 ns', '1 µs', '8.39 ms'), the text
  report's formatter, on every duration axis (log scale included) through
  :func:`duration_axis`; upper bounds (the top of a log2 bucket, all that an
  ``--aggregate`` recording keeps) as :func:`fmt_upper` ('≤ 8.2 µs');
- counts as plain numbers or 1k/10k/1M (:func:`fmt_count`), never '9×10⁻¹';
  fractions as percentages;
- time as seconds since the recording started: :func:`time_axis` maps the
  records' CLOCK_MONOTONIC timestamps onto [0, recording length].

Only :mod:`matplotlib.ticker` is imported: no backend is chosen here, so a
notebook's inline backend stays as it is.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator, PercentFormatter

from .units import _plain, _sig3, fmt_duration, fmt_upper

__all__ = ["fmt_duration", "fmt_upper", "fmt_count", "fmt_seconds", "duration_axis", "count_axis",
           "percent_axis", "seconds_axis", "count_colorbar", "wrap_name", "TimeAxis", "time_axis"]

#: records this long before the recording's start or after its end mean that
#: their clock is not the one start_ns/end_ns were read from (a hand-made or
#: converted recording): the axis then follows the records. Records do come a
#: little before start_ns: the probes attach before the recording begins.
CLOCK_SLACK_NS = 120 * 10 ** 9


def fmt_count(v) -> str:
    """A count: '0', '7', '950', '1k', '1.5k', '10k', '2.5M'; non-integers as
    '2.5'. Never an exponent."""
    if v is None or not math.isfinite(float(v)):
        return "-"
    v = float(v)
    sign, v = ("-", -v) if v < 0 else ("", v)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if _sig3(v) >= scale:
            return f"{sign}{_plain(_sig3(v / scale))}{unit}"
    return f"{sign}{_plain(_sig3(v))}"


def fmt_seconds(v) -> str:
    """Seconds on a time axis: '0', '2.5', '30', '3600' (no exponent, no offset)."""
    if v is None or not math.isfinite(float(v)):
        return "-"
    return f"{v:.6f}".rstrip("0").rstrip(".") if v != int(v) else f"{int(v)}"


def _axis(ax, which: str):
    return ax.xaxis if which == "x" else ax.yaxis


def _step125(v: float, up: bool) -> float:
    """The nearest 1, 2 or 5 x 10^k at or below v (``up``: at or above)."""
    k = math.floor(math.log10(v))
    steps = [d * 10.0 ** j for j in (k - 1, k, k + 1) for d in (1, 2, 5)]
    return min(x for x in steps if x >= v) if up else max(x for x in steps if x <= v)


def _log_limits(lo: float, hi: float) -> tuple[float, float]:
    """Limits of a log axis holding [lo, hi] with a margin and at least two
    labelled ticks: when the data span less than a power of ten (one value,
    say), out to the 1-2-5 values around them, which are ticks."""
    lo, hi = max(lo, 1e-3), max(hi, lo, 1e-3)
    if hi / lo < 10:
        return _step125(lo / 1.15, up=False), _step125(hi * 1.15, up=True)
    return lo / 1.25, hi * 1.25


def _log_subs(lo: float, hi: float) -> tuple[float, ...]:
    """Where in each power of ten to put labelled ticks on a log axis from
    lo to hi: 1 only over more than three powers of ten, 1-2-5 below that,
    every digit when 1-2-5 would leave fewer than two ticks (a factor of 2,
    such as one log2 bucket, may hold no 1-2-5 value at all)."""
    lo, hi = max(lo, 1e-9), max(hi, lo, 1e-9)
    if math.log10(hi / lo) > 3:
        return (1.0,)
    for subs in ((1.0, 2.0, 5.0), tuple(float(d) for d in range(1, 10))):
        k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        n = sum(1 for k in range(k0, k1 + 1) for d in subs if lo * (1 - 1e-9) <= d * 10.0 ** k <= hi * (1 + 1e-9))
        if n >= 2:
            return subs
    return subs


def duration_axis(ax, which: str = "x", values=None) -> None:
    """A log-scale duration axis (data in ns) labelled with :func:`fmt_duration`:
    ticks at 1-2-5 steps over up to three powers of ten, powers of ten beyond.
    ``values`` (the durations drawn) set the limits so that there are always
    labelled ticks, even for a single value."""
    axis = _axis(ax, which)
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    if values is not None:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v) & (v > 0)]
        if len(v):
            lo, hi = _log_limits(float(v.min()), float(v.max()))
            lo = max(lo, min(1.0, float(v.min())))          # durations are whole ns: no tick at 0.5 ns
            (ax.set_xlim if which == "x" else ax.set_ylim)(lo, hi)
    lo, hi = sorted((ax.get_xlim() if which == "x" else ax.get_ylim()))
    axis.set_major_locator(LogLocator(base=10, subs=_log_subs(lo, hi), numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt_duration(v)))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0, numticks=12))
    axis.set_minor_formatter(NullFormatter())


def count_axis(ax, which: str = "y") -> None:
    """Counts or rates labelled with :func:`fmt_count` (no '1e6' offset)."""
    _axis(ax, which).set_major_formatter(FuncFormatter(lambda v, _pos: fmt_count(v)))


def percent_axis(ax, which: str = "y") -> None:
    """Fractions (0..1) as percentages."""
    _axis(ax, which).set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))


def seconds_axis(ax, t: "TimeAxis", which: str = "x") -> None:
    """The recording's own time axis: [0, t.length_s], seconds since t's origin."""
    (ax.set_xlim if which == "x" else ax.set_ylim)(0, t.length_s)
    _axis(ax, which).set_major_formatter(FuncFormatter(lambda v, _pos: fmt_seconds(v)))
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(t.label)


def count_colorbar(cb, log: bool = True) -> None:
    """A colourbar of counts: 1, 2, 5, 10 ... 1k, never '9×10⁻¹'."""
    axis = cb.ax.yaxis if cb.orientation == "vertical" else cb.ax.xaxis
    if log:
        cb.set_ticks(LogLocator(base=10, subs=_log_subs(cb.norm.vmin, cb.norm.vmax)))
        axis.set_minor_locator(NullLocator())
    cb.formatter = FuncFormatter(lambda v, _pos: fmt_count(v))
    axis.set_major_formatter(cb.formatter)
    axis.set_minor_formatter(NullFormatter())


def wrap_name(name: str, width: int = 60) -> str:
    """A long callback name on several lines, broken at spaces only (before
    its ``[module]``): whole, never cut."""
    return textwrap.fill(name, width, break_long_words=False, break_on_hyphens=False) if len(name) > width \
        else name


# ---- the recording's own time axis ------------------------------------------------------------------

@dataclass(frozen=True)
class TimeAxis:
    """Where a recording's time axis starts (``origin_ns``, CLOCK_MONOTONIC
    like the records' ``ts_ns``) and how long it is; ``note`` says why it is
    not the recording's own start and end when it is not."""

    origin_ns: int
    length_s: float
    note: str | None = None

    @property
    def label(self) -> str:
        return "time since the first record (s)" if self.note and "first record" in self.note \
            else "time since the recording started (s)"

    def seconds(self, ts_ns) -> np.ndarray:
        """Timestamps (ns) as seconds on this axis."""
        return (np.asarray(ts_ns).astype(np.int64) - np.int64(self.origin_ns)) / 1e9

    def title(self, text: str) -> str:
        """A title with the note, if any, on a second line."""
        return text if not self.note else f"{text}\n({self.note})"


def _ns(v) -> int | None:
    """A CLOCK_MONOTONIC reading from metadata, or None if it is not one."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    v = int(v)
    return v if 0 < v < 2 ** 63 else None


def time_axis(s) -> TimeAxis:
    """The time axis of a :class:`mmntrace.aggregate.Summary`: from the
    recording's start to its end (metadata ``start_ns``/``end_ns``, else the
    length ``end_time - start_time``), so that an idle start or end shows as
    idle; extended back to the first record if it came while the probes were
    attaching. Without a start on the records' clock (a recording made before
    ``start_ns`` existed), or whose records lie outside it, the axis runs from
    the first to the last record; without an end (cut short), to the last
    record; the note says which."""
    meta = s.meta if isinstance(s.meta, dict) else {}
    first = s.t0_ns
    last = first + int(round((s.span_s or 0.0) * 1e9)) if first is not None else None
    start = _ns(meta.get("start_ns"))
    end = _ns(meta.get("end_ns"))
    if start is not None and (end is None or end <= start) and s.duration_s:
        end = start + int(s.duration_s * 1e9)
    if start is not None and first is not None and not (
            first >= start - CLOCK_SLACK_NS and (end is None or last <= end + CLOCK_SLACK_NS)):
        return _records_axis(first, last, "the records' clock does not match the recording's start and end: "
                                          "time since the first record")
    if start is None:
        if first is None:
            return TimeAxis(0, max(float(s.duration_s or 1.0), 1e-3))
        return _records_axis(first, last, "no start time on the records' clock in this recording: "
                                          "time since the first record")
    origin = min(start, first) if first is not None else start
    if end is None:
        stop = max(last, origin) if last is not None else origin
        return TimeAxis(origin, max((stop - origin) / 1e9, 1e-3),
                        "no end time: the recording was cut short, the axis ends at its last record")
    return TimeAxis(origin, max((max(end, last or end) - origin) / 1e9, 1e-3))


def _records_axis(first: int, last: int, note: str) -> TimeAxis:
    return TimeAxis(first, max((last - first) / 1e9, 1e-3), note)
