"""Latency rows from log2 histograms, with numpy alone.

The in-kernel histograms (--aggregate, the daemon's windows) count each
hook's and callback's calls per log2 bucket; a latency row is a group's
count, quantiles (a bucket's upper bound: at most 2x the true value), range
and, where the kernel summed the durations, exact mean and total. This
module holds that arithmetic without pandas, so that the daemon can
summarize a window without importing it (~75 MiB of its memory);
:mod:`mmntrace.aggregate` builds its groups from DataFrames and uses the same.
"""

from __future__ import annotations

import numpy as np

from . import hooks as hookmod

QUANTILES = {"p50_ns": 0.5, "p90_ns": 0.9, "p99_ns": 0.99, "p999_ns": 0.999}
N_LOG2 = 65             # log2 buckets: 0 ns, then [2**(b-1), 2**b) for b = 1..64
RANGE_HOOKS = hookmod.names_where("ranged")             # carry an event


def bucket_lo(b: int) -> int:
    """Smallest duration (ns) of log2 bucket b."""
    return 0 if b <= 0 else 1 << (b - 1)


def bucket_hi(b: int) -> int:
    """Largest duration (ns) of log2 bucket b: 2**b - 1."""
    return max((1 << int(b)) - 1, 0)


def hist_pairs(counts: np.ndarray) -> list[list[int]]:
    """Non-empty buckets as [lo_ns, count] pairs (the JSON form)."""
    return [[bucket_lo(int(b)), int(counts[b])] for b in np.flatnonzero(counts)]


def rank(n: int, q: float) -> int:
    """0-based index of numpy's method="lower" quantile among n sorted values."""
    return int(np.floor((n - 1) * q))


def hist_quantile(counts: np.ndarray, q: float, value_of) -> int:
    cum = np.cumsum(counts)
    b = int(np.searchsorted(cum, rank(int(cum[-1]), q), side="right"))
    return value_of(b)


def row_sort(r):
    """Report order: by hook, the hook's own row first, then callbacks and events by name."""
    return (hookmod.order(r["hook"]), r["callback"] is not None, r["callback"] or "", r["event"] is not None,
            r["event"] or "")


def key_of(hook, callback, event) -> tuple:
    """A histogram row's group: the hook's stable name, the callback (None for
    the hook itself) and the event, kept only for the hooks that carry one."""
    hook = hookmod.stable(hook)
    return hook, callback, event if hook in RANGE_HOOKS else None


def totals_by_key(totals) -> dict[tuple, tuple[int, int]]:
    """The kernel's (count, summed ns) per group, from its totals rows (dicts
    with hook, callback, event, count, sum_ns; anything else is skipped)."""
    tot: dict[tuple, tuple[int, int]] = {}
    for t in totals if isinstance(totals, list) else []:
        if not isinstance(t, dict):
            continue
        k = key_of(t.get("hook"), t.get("callback"), t.get("event"))
        c, s = tot.get(k, (0, 0))
        try:
            tot[k] = (c + int(t.get("count") or 0), s + int(t.get("sum_ns") or 0))
        except (TypeError, ValueError):
            continue
    return tot


def rows(groups: dict[tuple, np.ndarray], totals, duration_s: float | None = None):
    """Latency rows (report order) and each group's CDF points, from
    ``groups``: (hook, callback, event) -> counts per log2 bucket (length
    N_LOG2), in the order the groups were met."""
    tot = totals_by_key(totals)
    out, cdfs = [], {}
    for (hook, cb, ev), counts in groups.items():
        n = int(counts.sum())
        if not n:
            continue
        row = {"hook": hook, "callback": cb, "event": ev, "count": n}
        for k, q in QUANTILES.items():
            row[k] = hist_quantile(counts, q, bucket_hi)
        nz = np.flatnonzero(counts)
        row["max_ns"] = bucket_hi(nz[-1])
        row["min_ns"] = bucket_lo(int(nz[0]))
        c, s = tot.get((hook, cb, ev), (0, 0))
        row["mean_ns"] = round(s / c, 1) if c else None
        row["total_ns"] = s if c else None
        row["rate_per_s"] = round(n / duration_s, 3) if duration_s else None
        row["hist_log2"] = hist_pairs(counts)
        out.append(row)
        cdfs[(hook, cb, ev)] = (np.array([bucket_hi(b) for b in nz], np.float64), np.cumsum(counts[nz]) / n)
    out.sort(key=row_sort)
    return out, cdfs


def groups_from_rows(hist_rows) -> dict[tuple, np.ndarray]:
    """Histogram rows (dicts with hook, callback, event, slot, count: the
    daemon's window rows) -> counts per group, groups in first-met order."""
    groups: dict[tuple, np.ndarray] = {}
    for r in hist_rows:
        k = key_of(r["hook"], r["callback"], r["event"])
        counts = groups.get(k)
        if counts is None:
            counts = groups[k] = np.zeros(N_LOG2, np.int64)
        counts[min(int(r["slot"]), N_LOG2 - 1)] += int(r["count"])
    return groups
