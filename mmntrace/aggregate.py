"""Aggregation: recording DataFrames -> latency and violation tables.

Pure functions over pandas; no I/O, no presentation. The notebooks and the
report use the same functions.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LATENCY_KEYS = ["hook", "callback", "event"]
QUANTILES = {"p50_ns": 0.5, "p90_ns": 0.9, "p99_ns": 0.99}
RANGE_HOOKS = {"invalidate_range_start", "invalidate_range_end", "interval_invalidate"}


def _none(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else v


def latency(events: pd.DataFrame) -> list[dict]:
    """One row per (hook, callback, event): count and duration quantiles.

    ``callback`` is None for the hook as a whole; ``event`` is None where the
    hook has no event type (the secondary-TLB, young, release and change_pte ops).
    """
    if events.empty:
        return []
    df = events[["kind", "hook", "callback", "event", "dur_ns"]].copy()
    df["hook"] = df["hook"].astype(str)
    df.loc[df["kind"] == "hook", "callback"] = None
    df.loc[~df["hook"].isin(RANGE_HOOKS), "event"] = None
    df["callback"] = df["callback"].astype(object)
    df["event"] = df["event"].astype(object)
    rows = []
    for (hook, cb, ev), g in df.groupby(["hook", "callback", "event"], sort=True, dropna=False):
        d = g["dur_ns"].to_numpy(dtype=np.float64)
        row = {"hook": hook, "callback": _none(cb), "event": _none(ev), "count": int(len(d))}
        for k, q in QUANTILES.items():
            row[k] = int(np.percentile(d, q * 100, method="lower"))
        row["max_ns"] = int(d.max())
        rows.append(row)
    return rows


def latency_from_hist(hist: pd.DataFrame, totals: list[dict]) -> list[dict]:
    """--aggregate recordings: quantiles from in-kernel log2 histograms (upper
    bound of the slot, i.e. within a factor of 2), counts exact."""
    if hist.empty:
        return []
    h = hist.copy()
    h["callback"] = h["callback"].astype(object)
    h["event"] = h["event"].astype(object).where(h["hook"].isin(RANGE_HOOKS), None)
    rows = []
    for (hook, cb, ev), g in h.groupby(["hook", "callback", "event"], sort=True, dropna=False):
        g = g.sort_values("slot")
        counts = g["count"].to_numpy()
        upper = (2 ** (g["slot"].to_numpy().astype(np.float64) + 1)).astype(np.int64)
        cum = np.cumsum(counts)
        n = int(cum[-1])
        row = {"hook": hook, "callback": _none(cb), "event": _none(ev), "count": n}
        for k, q in QUANTILES.items():
            row[k] = int(upper[np.searchsorted(cum, q * n)])
        row["max_ns"] = int(upper[-1])
        rows.append(row)
    return rows


def violations(sleeps: pd.DataFrame) -> list[dict]:
    """One row per (rule, hook, callback, sleeper).

    Records are grouped by callback invocation (``seq``): an invocation that
    was scheduled out is one ``sleep`` violation, otherwise one ``might_sleep``.
    ``sleeper`` is the first might-sleep function the invocation called; for a
    sleep with none recorded, the frame just below the callback on its stack.
    """
    if sleeps.empty:
        return []
    rows = {}
    s = sleeps.sort_values("ts_ns")
    for (_seq, _tid), g in s.groupby(["seq", "tid"], sort=False):
        slept = (g["rule"] == "sleep").any()
        might = g[g["rule"] == "might_sleep"]
        first = g.iloc[0]
        cb = _none(first["callback"])
        if len(might):
            sleeper = might.iloc[0]["sleeper"]
            stack = list(might.iloc[0]["stack"])
        else:
            stack = list(g.iloc[0]["stack"])
            sleeper = _frame_below(stack, cb or str(first["hook"]))
        rule = "sleep" if slept else "might_sleep"
        if slept:
            stack = list(g[g["rule"] == "sleep"].iloc[0]["stack"])
        key = (rule, str(first["hook"]), cb, bare_symbol(sleeper) if sleeper else None)
        r = rows.setdefault(key, {"rule": rule, "hook": key[1], "callback": cb, "sleeper": key[3],
                                  "atomic": False, "count": 0, "stack": stack,
                                  "first_ns": int(first["ts_ns"]), "last_ns": int(first["ts_ns"]),
                                  "pids": set()})
        r["count"] += 1
        r["atomic"] = r["atomic"] or bool(g["atomic"].any() or g["irqs_off"].any())
        r["last_ns"] = int(g["ts_ns"].max())
        r["pids"].add(int(first["pid"]))
    out = []
    for r in rows.values():
        r["pids"] = sorted(r["pids"])
        out.append(r)
    return sorted(out, key=lambda r: (-r["count"], r["rule"], r["hook"]))


def bare_symbol(sym: str) -> str:
    """"name+0x10 [module]" -> "name"."""
    return sym.split("+", 1)[0].split(" ", 1)[0]


def _frame_below(stack: list[str], callback: str) -> str | None:
    names = [bare_symbol(f) for f in stack]
    cb = bare_symbol(callback)
    if cb in names:
        i = names.index(cb)
        return names[i - 1] if i > 0 else None
    return names[0] if names else None
