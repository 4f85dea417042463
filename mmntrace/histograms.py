"""The in-kernel histograms of --aggregate and --min-latency, read from user space.

The BPF side (bpf/hist.h) adds each timed hook and callback call to per-CPU
log2 histograms, indexed by series x event index x slot: series 0 to
NR_HOOKS - 1 are the hooks themselves; each probed callback gets its own
series as it is probed (:meth:`InKernelHistograms.series_for`), kept across
windows and re-probes. ``totals`` holds (count, sum of ns) per series and
event; ``via`` the calls per callback series by the hook whose invocation
made them. The arrays are memory-mapped (mmntrace/transport.py) and summed
over CPUs at each snapshot.
"""

from __future__ import annotations

import numpy as np

from . import kernel
from .layout import header
from .transport import MappedArray

#: series x event index x log2 slot (bpf/mmntrace.bpf.c)
NR_SERIES, NR_EVIDX, NR_SLOTS = 128, 16, header().defines["MMNT_NR_SLOTS"]


class InKernelHistograms:
    """The three arrays, once mapped (:meth:`map`), and the series of each callback."""

    def __init__(self):
        self.arrays: dict[str, MappedArray] = {}
        self.series: dict[int, tuple[int, int]] = {}    # series -> (callback address, hook)
        self.series_of: dict[int, int] = {}             # callback address -> its series

    def map(self, bpf) -> None:
        """Map the arrays of a loaded program (bcc's BPF object)."""
        if not self.arrays:
            self.arrays["hist"] = MappedArray(bpf[b"hist"], (NR_SERIES, NR_EVIDX, NR_SLOTS), np.uint64)
            self.arrays["totals"] = MappedArray(bpf[b"totals"], (NR_SERIES, NR_EVIDX, 2), np.uint64)
            self.arrays["via"] = MappedArray(bpf[b"via"], (NR_SERIES, kernel.NR_HOOKS + 1), np.uint64)

    def series_for(self, func: int, hook: int) -> int:
        """The series of callback ``func`` (a new one the first time)."""
        s = self.series_of.get(func)
        if s is None:
            s = kernel.NR_HOOKS + len(self.series)
            self.series_of[func] = s
            self.series[s] = (func, hook)
        return s

    def key(self, series: int) -> tuple[int, int] | None:
        """(callback address or 0 for the hook itself, hook) of a series."""
        if series < kernel.NR_HOOKS:
            return 0, series
        return self.series.get(series)

    def histograms(self) -> list[tuple]:
        """(func, hook, event, slot, count) of the aggregated durations (func 0: the hook)."""
        if "hist" not in self.arrays:
            return []
        h = self.arrays["hist"].snapshot()
        out = []
        for series, ev, slot in zip(*np.nonzero(h)):
            key = self.key(int(series))
            if key is not None:
                out.append((key[0], key[1], int(ev) - 1, int(slot), int(h[series, ev, slot])))
        return sorted(out)

    def totals(self) -> list[tuple]:
        """(func, hook, event, count, sum_ns) of the aggregated durations."""
        if "totals" not in self.arrays:
            return []
        t = self.arrays["totals"].snapshot()
        out = []
        for series, ev in zip(*np.nonzero(t[:, :, 0])):
            key = self.key(int(series))
            if key is not None:
                out.append((key[0], key[1], int(ev) - 1, int(t[series, ev, 0]), int(t[series, ev, 1])))
        return sorted(out)

    def via(self) -> list[tuple]:
        """(func, hook, via, count) of the timed callback calls in the
        histograms: via is the hook whose invocation made them (None: none of
        ours was running). Before 6.6 invalidate_range_end calls the
        secondary-TLB ops itself: (func, secondary_tlb, invalidate_range_end, n)."""
        if "via" not in self.arrays:
            return []
        v = self.arrays["via"].snapshot()
        out = []
        for series, h in zip(*np.nonzero(v)):
            key = self.key(int(series))
            if key is not None and key[0]:
                out.append((key[0], key[1], int(h) if h < kernel.NR_HOOKS else None, int(v[series, h])))
        return sorted(out, key=lambda r: (r[0], r[1], -1 if r[2] is None else r[2]))

    def zero(self) -> None:
        for a in self.arrays.values():
            a.zero()

    def close(self) -> None:
        """Unmap (the series stay: a program loaded again numbers callbacks the same)."""
        for a in self.arrays.values():
            a.close()
        self.arrays.clear()
