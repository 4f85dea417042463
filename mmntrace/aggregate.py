"""Aggregation: recordings -> latency, time, process, caller and violation tables.

No presentation here: :mod:`mmntrace.report` turns a :class:`Summary` into the
JSON report, and the text/HTML/plot modules render that. The notebooks use the
same functions.

Two levels:

- pure functions over DataFrames (``latency``, ``violations``, ``timeline``,
  ``processes``, ``mms``, ``secondary_tlb``, ``latency_from_hist``), for
  notebooks and for anyone holding a frame;
- :func:`summarize`, which streams a recording segment by segment, reading
  only the Parquet columns it needs with strings dictionary-encoded, and merges
  per-segment partial aggregates. The DataFrame functions are the same code
  fed one frame.

Exactness. Counts, sums, means, minima and maxima are always exact. Quantiles
use the lower value (numpy ``method="lower"``) and are exact while a recording
holds at most ``EXACT_LIMIT`` events: the durations (and, for hooks, a 2-byte
time bucket) are kept per group, about 4-10 bytes per event. Above that they
come from log-linear histograms of 128 sub-buckets per power of two: exact
below 256 ns, otherwise the bucket's lower bound, at most 0.8 % below the true
value (``quantile_method`` says which). ``--aggregate`` recordings hold only
the kernel's log2 histograms: quantiles there are the upper bound of the log2
slot (the true value is at most 2x smaller).

Log2 buckets. Bucket ``b`` holds durations in ``[2**(b-1), 2**b)`` ns
(bucket 0 holds 0 ns): this is bcc's ``bpf_log2l`` slot, so the kernel's
``--aggregate`` histograms and the ones computed here line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import hooks as hookmod
from . import latency as latmod
from .decode import bare_symbol  # noqa: F401  (re-exported: report and record name frames alike)
from .latency import N_LOG2, QUANTILES, RANGE_HOOKS, bucket_lo  # noqa: F401 (the module's API)

# the log2-histogram arithmetic, shared with the daemon's pandas-free windows
_hist_pairs, _rank, _hist_quantile, _row_sort = latmod.hist_pairs, latmod.rank, latmod.hist_quantile, latmod.row_sort

LATENCY_KEYS = ["hook", "callback", "event"]
# hook names by what the aggregation does with them (the stable names: mmntrace/hooks.py)
PAGE = 4096     # range sizes are counted in base pages
SECONDARY_HOOKS = hookmod.names_where("secondary_tlb")  # the callers table
RANGE_END_HOOKS = hookmod.names_where("range_end")      # 6.1: call the secondary-TLB ops themselves
HOOK_ORDER = hookmod.choices()                          # report order
CALLER_CLASSES = ["ptl_clear", "tlb_flush", "permission_upgrade", "range_end"]
FINE_SUB = 128          # log-linear sub-buckets per power of two (inexact quantiles)
N_FINE = N_LOG2 * FINE_SUB
EXACT_LIMIT = 50_000_000
TIME_BUCKETS = 60
TOP = 10
CDF_POINTS = 400

#: columns `summarize` reads from event and sleep segments
EVENT_COLUMNS = ["kind", "hook", "callback", "event", "dur_ns", "ts_ns", "pid", "comm", "mm", "caller",
                 "caller_class", "must_not_sleep", "via", "hook_seq", "blockable", "ret", "start", "end"]
EVENT_DICT = ["kind", "hook", "callback", "event", "comm", "caller", "caller_class", "via"]
SLEEP_COLUMNS = ["ts_ns", "seq", "tid", "pid", "comm", "hook", "callback", "rule", "sleeper", "atomic",
                 "irqs_off", "migration_disabled", "rcu_read_side", "stack"]
SLEEP_DICT = ["comm", "hook", "callback", "rule", "sleeper"]


def _none(v):
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    return v


# ---- buckets and quantiles -------------------------------------------------------

def log2_bucket(dur) -> np.ndarray:
    """Log2 bucket of each duration (ns): 0 for 0, else b with 2**(b-1) <= d < 2**b."""
    d = np.asarray(dur)
    if d.size == 0:
        return np.zeros(0, np.int64)
    return np.minimum(np.frexp(d.astype(np.float64))[1], N_LOG2 - 1).astype(np.int64)


def log2_hist(dur) -> np.ndarray:
    """Counts per log2 bucket (length N_LOG2)."""
    return np.bincount(log2_bucket(dur), minlength=N_LOG2)


def _fine_index(dur) -> np.ndarray:
    m, e = np.frexp(np.asarray(dur).astype(np.float64))
    e = np.minimum(e, N_LOG2 - 1).astype(np.int64)
    sub = np.where(e > 0, np.minimum(((2 * m - 1) * FINE_SUB).astype(np.int64), FINE_SUB - 1), 0)
    return e * FINE_SUB + sub


def _fine_lo(i: int) -> int:
    e, sub = divmod(int(i), FINE_SUB)
    return 0 if e == 0 else math.ceil((1 << (e - 1)) * (1 + sub / FINE_SUB))


def quantile(sorted_values: np.ndarray, q: float) -> int:
    """Exact quantile of sorted values, numpy method="lower"."""
    return int(sorted_values[_rank(len(sorted_values), q)])


# ---- the accumulator: segments in, tables out -------------------------------------

def _codes(s: pd.Series) -> tuple[np.ndarray, list]:
    """Integer codes (-1 for null) and the values they stand for."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return s.cat.codes.to_numpy().astype(np.int64), [str(c) for c in s.cat.categories]
    codes, uniq = pd.factorize(s, use_na_sentinel=True)
    return codes.astype(np.int64), [str(u) for u in uniq]


def _col(df: pd.DataFrame, name: str, n: int, fill=None) -> pd.Series:
    if name in df:
        return df[name]
    return pd.Series([fill] * n, dtype=object)


def _u64(s: pd.Series) -> np.ndarray:
    return s.to_numpy().astype(np.uint64, copy=False)


def _nice_bucket_ns(span_ns: int, buckets: int) -> int:
    """A round bucket width (1, 2 or 5 x 10^k ns, at least 1 ms) giving at most `buckets` buckets."""
    target = max(span_ns / buckets, 1e6)
    k = 10 ** math.floor(math.log10(target))
    for m in (1, 2, 5, 10):
        if m * k >= target:
            return int(m * k)
    return int(10 * k)


def _hook_sort(h):
    return hookmod.order(h)


class _EventAcc:
    """Partial aggregates of event segments, merged as segments arrive."""

    def __init__(self, t0_ns=None, t1_ns=None, buckets=TIME_BUCKETS, exact=True):
        self.exact = exact
        self.keys: dict[tuple, int] = {}
        self.dur: list[list] = []           # exact: per group, duration chunks
        self.tb: list[list] = []            # exact: per hook-level group, time-bucket chunks
        self.fine: list = []                # inexact: per group log-linear counts
        self.n: list[int] = []
        self.rng: list[list[int]] = []      # range hooks: [non-blockable, failed (ret < 0), pages total, pages max, sized]
        self.sum: list[int] = []
        self.min: list[int] = []
        self.max: list[int] = []
        self.t0 = t0_ns
        self.nb = 0
        if t0_ns is not None and t1_ns is not None:
            self.bucket_ns = _nice_bucket_ns(t1_ns - t0_ns, buckets)
            self.nb = (t1_ns - t0_ns) // self.bucket_ns + 1
        self.tfine: dict[str, np.ndarray] = {}  # inexact: hook -> (time bucket x fine bucket) counts
        self.parts: list[pd.DataFrame] = []     # (mm, pid, comm) -> count, total, max   (hook level)
        self.callers: list[pd.DataFrame] = []   # (hook, caller, caller_class) -> count, total
        self._direct: set[int] = set()          # range_end invocations seen calling secondary-TLB ops
        self.via_parts: list[pd.DataFrame] = [] # (hook, callback, via) -> callback calls
        self.records = 0
        self.watched: int | None = None         # callback invocations that must not sleep (the rules' reach)

    def _gid(self, key: tuple) -> int:
        g = self.keys.get(key)
        if g is None:
            g = self.keys[key] = len(self.keys)
            self.dur.append([])
            self.tb.append([])
            self.fine.append(np.zeros(N_FINE, np.int64) if not self.exact else None)
            self.n.append(0)
            self.rng.append([0, 0, 0, 0, 0])
            self.sum.append(0)
            self.min.append(None)
            self.max.append(0)
        return g

    def add(self, df: pd.DataFrame) -> None:
        n = len(df)
        if n == 0:
            return
        self.records += n
        df = hookmod.stable_frame(df)         # a frame of an older recording, made by hand
        if not isinstance(df.index, pd.RangeIndex) or df.index.start != 0:
            df = df.reset_index(drop=True)      # columns made here are positional
        hc, hv = _codes(df["hook"])
        cc, cv = _codes(_col(df, "callback", n))
        ec, ev = _codes(_col(df, "event", n))
        is_hook = (df["kind"] == "hook").to_numpy(dtype=bool) if "kind" in df else cc < 0
        cc = np.where(is_hook, -1, cc)
        if "must_not_sleep" in df:
            mns = df["must_not_sleep"].to_numpy(dtype=bool)
            self.watched = (self.watched or 0) + int((mns & ~is_hook).sum())
        # via: recordings made before it have none (a segment without one is not counted)
        if "via" in df and df.loc[~is_hook, "via"].notna().any():
            cb = df.loc[~is_hook, ["hook", "callback", "via"]].astype(object)
            self.via_parts.append(cb.where(cb.notna(), "").value_counts().rename("count").reset_index())
        rng = np.array([v in RANGE_HOOKS for v in hv] + [False])
        ec = np.where(rng[hc], ec, -1)
        ncb, nev = len(cv) + 1, len(ev) + 1
        key = ((hc + 1) * ncb + (cc + 1)) * nev + (ec + 1)
        uk, inv = np.unique(key, return_inverse=True)
        gmap = np.empty(len(uk), np.int64)
        for i, k in enumerate(uk.tolist()):
            k, e = divmod(k, nev)
            h, c = divmod(k, ncb)
            gmap[i] = self._gid((hv[h - 1] if h else "unknown", cv[c - 1] if c else None, ev[e - 1] if e else None))
        gidx = gmap[inv.reshape(-1)]
        dur = _u64(df["dur_ns"])
        tb = None
        if self.nb and "ts_ns" in df:
            t = df["ts_ns"].to_numpy().astype(np.int64) - self.t0
            tb = np.clip(t // self.bucket_ns, 0, self.nb - 1).astype(np.uint16)
        order = np.argsort(gidx, kind="stable")
        counts = np.bincount(gidx, minlength=len(self.keys))
        ends = np.cumsum(counts)
        on_rng = rng[hc]
        facts = None
        if on_rng.any() and {"blockable", "start", "end"} <= set(df.columns):
            nonblock = on_rng & ~df["blockable"].to_numpy(dtype=bool)
            failed = on_rng & (df["ret"].to_numpy().astype(np.int64) < 0) if "ret" in df else np.zeros(n, bool)
            # a range over the whole address space (end ULONG_MAX: the exit path) has no size worth averaging
            st, en = _u64(df["start"]), _u64(df["end"])
            sized = on_rng & (en >= st) & (en < np.uint64(1 << 63))
            pages = np.where(sized, (en - np.minimum(st, en)) // np.uint64(PAGE), 0).astype(np.int64)
            facts = (np.bincount(gidx, nonblock, len(self.keys)), np.bincount(gidx, failed, len(self.keys)),
                     np.bincount(gidx, pages, len(self.keys)), np.bincount(gidx, sized, len(self.keys)))
        fi = _fine_index(dur) if not self.exact else None
        for g in np.flatnonzero(counts):
            sel = order[ends[g] - counts[g]:ends[g]]
            d = dur[sel]
            hook_level = self._is_hook_key(g)
            self.n[g] += len(d)
            if facts is not None:
                r = self.rng[g]
                r[0] += int(facts[0][g])
                r[1] += int(facts[1][g])
                r[2] += int(facts[2][g])
                r[3] = max(r[3], int(pages[sel].max()))
                r[4] += int(facts[3][g])
            self.sum[g] += int(d.sum(dtype=np.uint64))
            dmin, dmax = int(d.min()), int(d.max())
            self.min[g] = dmin if self.min[g] is None else min(self.min[g], dmin)
            self.max[g] = max(self.max[g], dmax)
            if self.exact:
                self.dur[g].append(d.astype(np.uint32) if dmax < 2 ** 32 else d)
                if hook_level and tb is not None:
                    self.tb[g].append(tb[sel])
            else:
                self.fine[g] += np.bincount(fi[sel], minlength=N_FINE)
                if hook_level and tb is not None:
                    hook = self._key_of(g)[0]
                    tf = self.tfine.setdefault(hook, np.zeros(self.nb * N_FINE, np.int64))
                    tf += np.bincount(tb[sel].astype(np.int64) * N_FINE + fi[sel], minlength=self.nb * N_FINE)
        on_sec = np.array([v in SECONDARY_HOOKS for v in hv] + [False])[hc]   # rows of the secondary-TLB hook
        self._add_parts(df, is_hook, dur, on_sec)
        self._add_direct_secondary(df, on_sec & ~is_hook, dur)

    def _add_direct_secondary(self, df, sec, dur) -> None:
        """Before 6.6, __mmu_notifier_invalidate_range_end calls each subscriber's
        invalidate_range op itself, not through the secondary-TLB hook: count each
        such range_end invocation (its seq, from its callbacks' hook_seq) once as
        a secondary-TLB invocation of class range_end, so the callers table
        covers every secondary-TLB call the subscribers got. ``sec``: the
        callback rows of secondary-TLB ops."""
        if "via" not in df or "hook_seq" not in df or not sec.any():
            return
        sel = sec & df["via"].astype(object).isin(RANGE_END_HOOKS).to_numpy()
        if not sel.any():
            return
        c = pd.DataFrame({"hook": df["hook"].astype(object)[sel].to_numpy(),
                          "seq": df["hook_seq"][sel].to_numpy().astype(np.uint64), "dur": dur[sel]})
        per = c.groupby(["hook", "seq"], sort=False)["dur"].sum().reset_index()
        new = ~per["seq"].isin(self._direct)    # one invocation's calls may span two segments
        self._direct.update(int(x) for x in per["seq"])
        per = per[new]
        if len(per):
            self.callers.append(per.assign(caller="__mmu_notifier_invalidate_range_end", caller_class="range_end")
                                .groupby(["hook", "caller", "caller_class"], sort=False)["dur"]
                                .agg(["size", "sum"]).reset_index())

    def _key_of(self, g: int) -> tuple:
        if not hasattr(self, "_rev") or len(self._rev) != len(self.keys):
            self._rev = {v: k for k, v in self.keys.items()}
        return self._rev[g]

    def _is_hook_key(self, g: int) -> bool:
        return self._key_of(g)[1] is None

    def _add_parts(self, df, is_hook, dur, on_sec) -> None:
        if not is_hook.any():
            return
        n = len(df)
        sub = pd.DataFrame({
            "mm": _u64(_col(df, "mm", n, 0).fillna(0)) if "mm" in df else np.zeros(n, np.uint64),
            "pid": _col(df, "pid", n, 0).to_numpy().astype(np.int64),
            "comm": _col(df, "comm", n),
            "dur": dur,
        })[is_hook]
        p = sub.groupby(["mm", "pid", "comm"], observed=True, sort=False, dropna=False)["dur"].agg(
            ["size", "sum", "max"]).reset_index()
        p["comm"] = p["comm"].astype(object)
        self.parts.append(p)
        if sum(len(x) for x in self.parts) > 200_000:
            self.parts = [_merge_parts(self.parts)]
        sec = on_sec & is_hook
        if sec.any():
            c = pd.DataFrame({"hook": df["hook"].astype(object), "caller": _col(df, "caller", n).astype(object),
                              "caller_class": _col(df, "caller_class", n).astype(object), "dur": dur})[sec]
            self.callers.append(c.groupby(["hook", "caller", "caller_class"], dropna=False, sort=False)["dur"]
                                .agg(["size", "sum"]).reset_index())

    # -- results --

    def latency(self, duration_s=None) -> tuple[list[dict], dict]:
        """Latency rows and, per row key, CDF points (values_ns, fractions) for plots."""
        rows, cdfs = [], {}
        for key, g in sorted(self.keys.items(), key=lambda kv: _row_sort(
                {"hook": kv[0][0], "callback": kv[0][1], "event": kv[0][2]})):
            n = self.n[g]
            if not n:
                continue
            row = {"hook": key[0], "callback": key[1], "event": key[2], "count": n}
            if self.exact:
                d = np.concatenate(self.dur[g]) if len(self.dur[g]) > 1 else self.dur[g][0]
                d = np.sort(d)
                for k, q in QUANTILES.items():
                    row[k] = quantile(d, q)
                hist = log2_hist(d)
                idx = np.unique(np.linspace(0, n - 1, min(n, CDF_POINTS)).astype(np.int64))
                cdfs[key] = (d[idx].astype(np.float64), (idx + 1) / n)
            else:
                f = self.fine[g]
                for k, q in QUANTILES.items():
                    row[k] = min(max(_hist_quantile(f, q, _fine_lo), self.min[g]), self.max[g])
                hist = f.reshape(N_LOG2, FINE_SUB).sum(axis=1)
                nz = np.flatnonzero(f)
                cdfs[key] = (np.array([max(_fine_lo(i), self.min[g]) for i in nz], np.float64),
                             np.cumsum(f[nz]) / n)
            row["max_ns"] = self.max[g]
            row["min_ns"] = self.min[g]
            row["mean_ns"] = round(self.sum[g] / n, 1)
            row["total_ns"] = self.sum[g]
            row["rate_per_s"] = round(n / duration_s, 3) if duration_s else None
            row["hist_log2"] = _hist_pairs(hist)
            if key[0] in RANGE_HOOKS:
                nb_, failed, pages, pmax, sized = self.rng[g]
                row["range"] = {"non_blockable": nb_, "failed": failed, "sized": sized,
                                "pages_mean": round(pages / sized, 1) if sized else None, "pages_max": pmax}
            rows.append(row)
        return rows, cdfs

    def via(self) -> list[dict]:
        """Callback calls per (hook, callback, via): via is the hook whose
        invocation made them (None: none of ours was running)."""
        if not self.via_parts:
            return []
        d = pd.concat(self.via_parts).groupby(["hook", "callback", "via"], sort=False)["count"].sum()
        return via_rows((h, c or None, v or None, n) for (h, c, v), n in d.items())

    def timeline(self) -> tuple[dict | None, dict]:
        """Per hook (hook-level invocations): count and latency per time bucket,
        and the (time bucket x log2 bucket) heatmap counts."""
        if not self.nb:
            return None, {}
        hooks = sorted({k[0] for k in self.keys if k[1] is None}, key=_hook_sort)
        series, heat = [], {}
        w_s = self.bucket_ns / 1e9
        for hook in hooks:
            gs = [g for k, g in self.keys.items() if k[0] == hook and k[1] is None]
            cnt = np.zeros(self.nb, np.int64)
            p50 = [None] * self.nb
            p99 = [None] * self.nb
            mx = [None] * self.nb
            if self.exact:
                parts = [(d, t) for g in gs if len(self.dur[g]) == len(self.tb[g])
                         for d, t in zip(self.dur[g], self.tb[g])]
                if not parts:
                    continue
                d = np.concatenate([p[0] for p in parts]).astype(np.uint64)
                tb = np.concatenate([p[1] for p in parts]).astype(np.int64)
                cnt = np.bincount(tb, minlength=self.nb)
                heat[hook] = np.bincount(tb * N_LOG2 + log2_bucket(d), minlength=self.nb * N_LOG2
                                         ).reshape(self.nb, N_LOG2)
                ds = d[np.argsort(tb, kind="stable")]
                ends = np.cumsum(cnt)
                for b in np.flatnonzero(cnt):
                    seg = ds[ends[b] - cnt[b]:ends[b]]
                    m = len(seg)
                    k50, k99 = _rank(m, 0.5), _rank(m, 0.99)
                    part = np.partition(seg, sorted({k50, k99}))
                    p50[b], p99[b], mx[b] = int(part[k50]), int(part[k99]), int(seg.max())
            else:
                tf = self.tfine.get(hook)
                if tf is None:
                    continue
                tf = tf.reshape(self.nb, N_FINE)
                cnt = tf.sum(axis=1)
                heat[hook] = tf.reshape(self.nb, N_LOG2, FINE_SUB).sum(axis=2)
                for b in np.flatnonzero(cnt):
                    p50[b] = _hist_quantile(tf[b], 0.5, _fine_lo)
                    p99[b] = _hist_quantile(tf[b], 0.99, _fine_lo)
                    mx[b] = _fine_lo(int(np.flatnonzero(tf[b])[-1]))
            series.append({"hook": hook, "count": cnt.astype(int).tolist(),
                           "rate_per_s": [round(c / w_s, 3) for c in cnt.tolist()],
                           "p50_ns": p50, "p99_ns": p99, "max_ns": mx})
        return ({"start_ns": int(self.t0), "bucket_ns": int(self.bucket_ns), "bucket_s": w_s,
                 "buckets": int(self.nb), "series": series}, heat)

    def hook_invocations(self) -> int:
        return sum(self.n[g] for k, g in self.keys.items() if k[1] is None)

    def processes(self, top=TOP) -> tuple[list[dict], list[dict]]:
        if not self.parts:
            return [], []
        p = _merge_parts(self.parts)
        total = int(p["size"].sum())
        p["comm"] = p["comm"].map(lambda c: _none(c))
        procs = (p.groupby(["pid", "comm"], dropna=False, sort=False)
                 .agg(count=("size", "sum"), total_ns=("sum", "sum"), max_ns=("max", "max")).reset_index()
                 .sort_values(["count", "total_ns", "pid"], ascending=[False, False, True], kind="stable")
                 .head(top))
        proc_rows = [{"pid": int(r.pid), "comm": _none(r.comm), "count": int(r.count),
                      "share": round(r.count / total, 6), "total_ns": int(r.total_ns), "max_ns": int(r.max_ns)}
                     for r in procs.itertuples()]
        mm = (p.groupby("mm", sort=False).agg(count=("size", "sum"), total_ns=("sum", "sum"), max_ns=("max", "max"))
              .reset_index().sort_values(["count", "total_ns", "mm"], ascending=[False, False, True], kind="stable")
              .head(top))
        mm_rows = []
        for r in mm.itertuples():
            who = p[p["mm"] == r.mm].sort_values("size", ascending=False, kind="stable")
            mm_rows.append({"mm": f"{int(r.mm):#x}", "count": int(r.count), "share": round(r.count / total, 6),
                            "total_ns": int(r.total_ns), "max_ns": int(r.max_ns),
                            "pids": sorted({int(x) for x in who["pid"]})[:top],
                            "comms": list(dict.fromkeys(c for c in who["comm"] if c is not None))[:top]})
        return proc_rows, mm_rows

    def secondary_tlb(self, top=TOP) -> dict | None:
        if not self.callers:
            return None
        c = pd.concat(self.callers, ignore_index=True)
        for k in ("caller", "caller_class"):
            c[k] = c[k].map(_none)
        c = c.groupby(["hook", "caller", "caller_class"], dropna=False, sort=False)[["size", "sum"]].sum().reset_index()
        n = int(c["size"].sum())
        classes = []
        cls = c.assign(caller_class=[x if x is not None and not pd.isna(x) else "unknown" for x in c["caller_class"]]
                       ).groupby("caller_class")[["size", "sum"]].sum()
        for name in CALLER_CLASSES + sorted(set(cls.index) - set(CALLER_CLASSES)):
            cnt = int(cls["size"].get(name, 0))
            classes.append({"caller_class": name, "count": cnt, "share": round(cnt / n, 6),
                            "total_ns": int(cls["sum"].get(name, 0))})
        callers = (c.groupby(["caller", "caller_class"], dropna=False, sort=False)[["size", "sum"]].sum()
                   .reset_index().sort_values(["size", "caller"], ascending=[False, True], kind="stable").head(top))
        return {"hooks": sorted({str(h) for h in c["hook"]}, key=_hook_sort), "count": n, "classes": classes,
                "callers": [{"caller": _none(r.caller), "caller_class": _none(r.caller_class), "count": int(r.size),
                             "share": round(r.size / n, 6), "total_ns": int(r.sum)} for r in callers.itertuples()]}


def _merge_parts(parts: list[pd.DataFrame]) -> pd.DataFrame:
    p = pd.concat(parts, ignore_index=True)
    return p.groupby(["mm", "pid", "comm"], dropna=False, sort=False).agg(
        size=("size", "sum"), sum=("sum", "sum"), max=("max", "max")).reset_index()


def _frame_range(df: pd.DataFrame):
    if df is None or df.empty or "ts_ns" not in df:
        return None
    ts = df["ts_ns"].to_numpy()
    return int(ts.min()), int(ts.max())


def _acc_of(events: pd.DataFrame, buckets=TIME_BUCKETS, exact=True) -> _EventAcc:
    r = _frame_range(events)
    acc = _EventAcc(*(r or (None, None)), buckets=buckets, exact=exact)
    acc.add(events)
    return acc


# ---- DataFrame-level functions --------------------------------------------------------

def latency(events: pd.DataFrame, duration_s: float | None = None, *, exact: bool = True) -> list[dict]:
    """One row per (hook, callback, event): count, rate, quantiles, log2 histogram.

    ``callback`` is None for the hook as a whole; ``event`` is None where the
    hook has no event type (the secondary-TLB, young, release and change_pte
    ops). ``rate_per_s`` is None without ``duration_s``.
    """
    if events.empty:
        return []
    return _acc_of(events, exact=exact).latency(duration_s)[0]


def timeline(events: pd.DataFrame, buckets: int = TIME_BUCKETS) -> dict | None:
    """Hook invocations through the recording: per hook, count, rate and
    p50/p99/max latency in time buckets of a round width (at most ``buckets``)."""
    if events.empty:
        return None
    return _acc_of(events, buckets).timeline()[0]


def heatmap(events: pd.DataFrame, buckets: int = TIME_BUCKETS) -> dict:
    """hook -> counts array of shape (time buckets, N_LOG2 log2 latency buckets)."""
    if events.empty:
        return {}
    return _acc_of(events, buckets).timeline()[1]


def processes(events: pd.DataFrame, top: int = TOP) -> list[dict]:
    """Processes by hook invocations: pid, comm, count, share, total and max ns."""
    return [] if events.empty else _acc_of(events).processes(top)[0]


def mms(events: pd.DataFrame, top: int = TOP) -> list[dict]:
    """mm_structs by hook invocations, with the processes seen on each."""
    return [] if events.empty else _acc_of(events).processes(top)[1]


def secondary_tlb(events: pd.DataFrame, top: int = TOP) -> dict | None:
    """Who invoked the secondary-TLB hook: share of each caller_class and the top caller functions."""
    return None if events.empty else _acc_of(events).secondary_tlb(top)


def _norm_hist(hist: pd.DataFrame) -> pd.DataFrame:
    h = hist.copy()
    h["hook"] = h["hook"].astype(str).map(hookmod.stable)
    h["callback"] = h["callback"].astype(object).map(_none)
    h["event"] = h["event"].astype(object).map(_none).where(h["hook"].isin(RANGE_HOOKS), None)
    return h


def latency_from_hist(hist: pd.DataFrame, totals: list[dict], duration_s: float | None = None) -> list[dict]:
    """--aggregate recordings: quantiles from the in-kernel log2 histograms (the
    upper bound of the slot, 2**slot - 1: at most 2x the true value); counts
    exact; mean and total exact where the kernel's totals are there."""
    return _hist_latency(hist, totals, duration_s)[0]


def _hist_latency(hist: pd.DataFrame, totals: list[dict], duration_s=None):
    if hist.empty:
        return [], {}
    h = _norm_hist(hist)
    groups = {}
    for (hook, cb, ev), g in h.groupby(["hook", "callback", "event"], sort=False, dropna=False):
        k = (hook, _none(cb), _none(ev))
        groups[k] = groups.get(k, 0) + np.bincount(
            np.minimum(g["slot"].to_numpy().astype(np.int64), N_LOG2 - 1), weights=g["count"].to_numpy(),
            minlength=N_LOG2).astype(np.int64)
    return latmod.rows(groups, totals, duration_s)


# ---- violations -------------------------------------------------------------------------

def _stack_codes(sleeps: pd.DataFrame) -> tuple[np.ndarray, list[list[str]]]:
    if "stack_key" in sleeps:
        return sleeps["stack_key"].to_numpy().astype(np.int64), sleeps.attrs["stacks"]
    keys = ["\n".join(str(f) for f in s) if s is not None and not (isinstance(s, float) and np.isnan(s)) else ""
            for s in sleeps["stack"]] if "stack" in sleeps else [""] * len(sleeps)
    codes, uniq = pd.factorize(pd.Series(keys, dtype=object))
    return codes.astype(np.int64), [u.split("\n") if u else [] for u in uniq]


def violations(sleeps: pd.DataFrame) -> list[dict]:
    """One row per (rule, hook, callback, sleeper).

    Records are grouped by callback invocation (``seq``, ``tid``): an
    invocation that was scheduled out is one ``sleep`` violation, otherwise one
    ``might_sleep``. ``sleeper`` is the first might-sleep function the
    invocation called; for a sleep with none recorded, the frame just below the
    callback on its stack. Rows carry count, atomic, an example stack,
    first/last time (ns, CLOCK_MONOTONIC), the pids and the comms.
    """
    return violation_detail(sleeps)[0]


def violation_detail(sleeps: pd.DataFrame) -> tuple[list[dict], pd.DataFrame]:
    """``violations`` and one row per violating invocation (``ts_ns``, ``row``:
    index into the violation rows, ``atomic``, ``pid``), for timelines."""
    empty = pd.DataFrame({"ts_ns": np.zeros(0, np.uint64), "row": np.zeros(0, np.int64),
                          "atomic": np.zeros(0, bool), "pid": np.zeros(0, np.int64)})
    if sleeps.empty:
        return [], empty
    codes, stacks = _stack_codes(sleeps)
    sleeps = hookmod.stable_frame(sleeps)
    n = len(sleeps)
    order = np.argsort(sleeps["ts_ns"].to_numpy(), kind="stable")
    s = sleeps.iloc[order].reset_index(drop=True)
    codes = codes[order]
    inv = s.groupby(["seq", "tid"], sort=False).ngroup().to_numpy()
    ninv = int(inv.max()) + 1
    _, first = np.unique(inv, return_index=True)
    _, rev = np.unique(inv[::-1], return_index=True)
    last = n - 1 - rev
    rule = s["rule"].astype(object).to_numpy()
    is_sleep = rule == "sleep"
    is_might = rule == "might_sleep"

    def first_where(mask):
        out = np.full(ninv, -1, np.int64)
        idx = np.flatnonzero(mask)
        u, pos = np.unique(inv[idx], return_index=True)
        out[u] = idx[pos]
        return out

    fm, fs = first_where(is_might), first_where(is_sleep)
    slept = fs >= 0
    atomic = s["atomic"].to_numpy(dtype=bool) | s["irqs_off"].to_numpy(dtype=bool) if "irqs_off" in s else \
        s["atomic"].to_numpy(dtype=bool)
    atomic_inv = np.bincount(inv, weights=atomic, minlength=ninv) > 0
    # PREEMPT_RT: preempt_count() stays 0 under a spinlock_t; holding one disables
    # migration and enters an RCU read-side section (recordings before: never)
    rt = (_col(s, "migration_disabled", n, False).to_numpy(dtype=bool)
          & _col(s, "rcu_read_side", n, False).to_numpy(dtype=bool))
    rt_inv = np.bincount(inv, weights=rt, minlength=ninv) > 0
    hooks = s["hook"].astype(object).to_numpy()
    cbs = s["callback"].astype(object).to_numpy()
    sleepers = _col(s, "sleeper", n).astype(object).to_numpy()
    comms = _col(s, "comm", n).astype(object).to_numpy()
    ts = s["ts_ns"].to_numpy().astype(np.uint64)
    pids = s["pid"].to_numpy().astype(np.int64)
    below_cache: dict = {}
    inv_rows = []
    for i in range(ninv):
        f = first[i]
        cb = _none(cbs[f])
        hook = str(hooks[f])
        if fm[i] >= 0:
            sl = _none(sleepers[fm[i]])
            ex = fm[i]
        else:
            k = (codes[f], cb or hook)
            if k not in below_cache:
                below_cache[k] = _frame_below(stacks[codes[f]], cb or hook)
            sl = below_cache[k]
            ex = f
        if slept[i]:
            ex = fs[i]
        inv_rows.append(("sleep" if slept[i] else "might_sleep", hook, cb, bare_symbol(sl) if sl else None, ex))
    iv = pd.DataFrame(inv_rows, columns=["rule", "hook", "callback", "sleeper", "ex"])
    iv["inv"] = np.arange(ninv)
    iv["first"] = ts[first]
    iv["last"] = ts[last]
    iv["atomic"] = atomic_inv
    iv["rt_lock"] = rt_inv
    iv["pid"] = pids[first]
    iv["comm"] = comms[first]
    rows = []
    gi = np.zeros(ninv, np.int64)
    for key, g in iv.groupby(["rule", "hook", "callback", "sleeper"], sort=False, dropna=False):
        rows.append((key, g))
    out = []
    for (rule_, hook, cb, sl), g in rows:
        out.append({"rule": rule_, "hook": hook, "callback": _none(cb), "sleeper": _none(sl),
                    "atomic": bool(g["atomic"].any()), "atomic_count": int(g["atomic"].sum()), "count": int(len(g)),
                    "rt_lock_count": int(g["rt_lock"].sum()),
                    "stack": [str(x) for x in stacks[codes[int(g["ex"].iloc[0])]]],
                    "first_ns": int(g["first"].min()), "last_ns": int(g["last"].max()),
                    "pids": sorted({int(p) for p in g["pid"]}),
                    "comms": list(dict.fromkeys(str(c) for c in g["comm"] if _none(c) is not None)),
                    "_inv": g["inv"].to_numpy()})
    out.sort(key=lambda r: (-r["count"], r["rule"], r["hook"], r["callback"] or "", r["sleeper"] or ""))
    for j, r in enumerate(out):
        gi[r.pop("_inv")] = j
    detail = pd.DataFrame({"ts_ns": ts[first], "row": gi, "atomic": atomic_inv, "pid": pids[first]})
    return out, detail


def _frame_below(stack: list[str], callback: str) -> str | None:
    names = [bare_symbol(f) for f in stack]
    cb = bare_symbol(callback)
    if cb in names:
        i = names.index(cb)
        return names[i - 1] if i > 0 else None
    return names[0] if names else None


# ---- a whole recording ---------------------------------------------------------------------

@dataclass
class Summary:
    """Everything the report, the plots and the notebooks show about one recording."""

    path: str
    meta: dict
    complete: bool
    kernel_hist: bool                   # --aggregate or --min-latency: latency from the log2 histograms
    quantile_method: str                # exact | loglinear | log2_upper
    duration_s: float | None            # wall time from metadata (None if cut short)
    span_s: float | None                # first to last timestamp
    t0_ns: int | None                   # first timestamp (CLOCK_MONOTONIC), events and sleeps
    records: int                        # event records (hooks + callbacks)
    hook_invocations: int
    callback_invocations: int
    latency: list[dict]
    cdf: dict = field(default_factory=dict)         # (hook, callback, event) -> (values_ns, fractions)
    timeline: dict | None = None
    heatmap: dict = field(default_factory=dict)     # hook -> (time bucket x log2 bucket) counts
    processes: list[dict] = field(default_factory=list)
    mms: list[dict] = field(default_factory=list)
    secondary_tlb: dict | None = None
    violations: list[dict] = field(default_factory=list)
    violation_times: pd.DataFrame | None = None     # one row per violating invocation
    sleep_records: int = 0
    watched_callbacks: int | None = None            # must-not-sleep callback invocations (None: unknown)
    min_latency_ns: int | None = None               # record --min-latency: events are the calls this long only
    via: list[dict] = field(default_factory=list)   # callback calls by the hook whose invocation made them

    @property
    def rate_s(self) -> float | None:
        """Seconds that rates are per: the wall duration, else the timestamp span."""
        return self.duration_s or self.span_s or None

    @property
    def empty(self) -> bool:
        return not self.records and not self.sleep_records and not self.latency


def via_rows(rows) -> list[dict]:
    """(hook, callback, via, count) -> the report's rows, each with the
    callback's share of its calls made so; sorted by hook, callback, count."""
    rows = [(str(h), c, v, int(n)) for h, c, v, n in rows if c and n]
    tot: dict = {}
    for h, c, _v, n in rows:
        tot[(h, c)] = tot.get((h, c), 0) + n
    out = [{"hook": h, "callback": c, "via": v, "count": n, "share": round(n / tot[(h, c)], 4)}
           for h, c, v, n in rows]
    out.sort(key=lambda r: (_hook_sort(r["hook"]), r["callback"], -r["count"]))
    return out


def _read_sleeps(rec) -> pd.DataFrame:
    """All sleep segments, only the columns violations need; stacks as codes
    into a shared list (``.attrs["stacks"]``) instead of Python lists per row."""
    import pyarrow.compute as pc
    from .store import typed
    frames, stacks, index = [], [], {}
    for t in rec.tables("sleeps", SLEEP_COLUMNS, SLEEP_DICT):
        if "stack" in t.column_names:
            t = typed(t)        # a segment whose stacks are all empty (--sleep-detect count): list<null>
            joined = pc.fill_null(pc.binary_join(t.column("stack"), "\n"), "").combine_chunks().dictionary_encode()
            local = np.array([index.setdefault(v, len(index)) for v in joined.dictionary.to_pylist()], np.int64)
            key = local[joined.indices.to_numpy(zero_copy_only=False)] if len(local) else np.zeros(len(t), np.int64)
            t = t.drop_columns(["stack"])
        else:
            key = np.full(len(t), index.setdefault("", len(index)), np.int64)
        df = t.to_pandas()
        df["stack_key"] = key
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    for k in index:
        stacks.append(k.split("\n") if k else [])
    out = pd.concat([f.astype({c: object for c in f.columns if isinstance(f[c].dtype, pd.CategoricalDtype)})
                     for f in frames], ignore_index=True) if len(frames) > 1 else frames[0]
    out.attrs["stacks"] = stacks
    return out


def summarize(rec, *, buckets: int = TIME_BUCKETS, top: int = TOP, exact_limit: int = EXACT_LIMIT) -> Summary:
    """Stream a recording (a :class:`mmntrace.Recording` or a path) into a :class:`Summary`.

    Reads only the columns it needs, one segment at a time; memory is a few
    bytes per event while quantiles are exact (see the module docstring).
    """
    from .recording import Recording
    if not isinstance(rec, Recording):
        rec = Recording(rec)
    m = rec.meta
    start, end = m.get("start_time"), m.get("end_time")
    duration_s = None
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v for v in (start, end)):
        d = float(end) - float(start)
        duration_s = round(d, 3) if math.isfinite(d) and d > 0 else None
    rng_e = rec.column_range("events", "ts_ns")
    rng_s = rec.column_range("sleeps", "ts_ns")
    ends = [r for r in (rng_e, rng_s) if r]
    t0 = min(r[0] for r in ends) if ends else None
    t1 = max(r[1] for r in ends) if ends else None
    span_s = (t1 - t0) / 1e9 if ends else None
    rate_s = duration_s or span_s or None
    n_rows = rec.rows("events")
    exact = n_rows <= exact_limit
    acc = _EventAcc(t0, t1, buckets=buckets, exact=exact)
    for t in rec.tables("events", EVENT_COLUMNS, EVENT_DICT):
        acc.add(t.to_pandas())
    sleeps = _read_sleeps(rec)
    viol, vt = violation_detail(sleeps)
    min_lat = m.get("min_latency_ns")
    min_lat = int(min_lat) if isinstance(min_lat, int) and not isinstance(min_lat, bool) and min_lat > 0 else None
    kernel_hist = bool(m.get("aggregate")) or min_lat is not None
    if kernel_hist:
        lat, cdf = _hist_latency(rec.hist(), m.get("totals", []), rate_s)
        hooks_n = sum(r["count"] for r in lat if r["callback"] is None)
        cbs_n = sum(r["count"] for r in lat if r["callback"] is not None)
        method = "log2_upper"
    else:
        lat, cdf = acc.latency(rate_s)
        hooks_n = acc.hook_invocations()
        cbs_n = acc.records - hooks_n
        method = "exact" if exact else "loglinear"
    tl, heat = acc.timeline() if acc.records else (None, {})
    if tl is not None and len(vt):
        vb = np.clip((vt["ts_ns"].to_numpy().astype(np.int64) - tl["start_ns"]) // tl["bucket_ns"], 0,
                     tl["buckets"] - 1)
        tl["violations"] = np.bincount(vb, minlength=tl["buckets"]).astype(int).tolist()
    elif tl is not None:
        tl["violations"] = [0] * tl["buckets"]
    procs, mm_rows = acc.processes(top)
    return Summary(path=str(rec.dir), meta=m, complete=rec.complete, kernel_hist=kernel_hist,
                   quantile_method=method, duration_s=duration_s, span_s=span_s, t0_ns=t0,
                   records=acc.records, hook_invocations=hooks_n, callback_invocations=cbs_n,
                   latency=lat, cdf=cdf, timeline=tl, heatmap=heat, processes=procs, mms=mm_rows,
                   secondary_tlb=acc.secondary_tlb(top), violations=viol, violation_times=vt,
                   sleep_records=len(sleeps), watched_callbacks=None if kernel_hist else acc.watched,
                   min_latency_ns=min_lat,
                   via=(via_rows((r.get("hook"), r.get("callback"), r.get("via"), r.get("count", 0))
                                 for r in m.get("via") or [] if isinstance(r, dict))
                        if kernel_hist else acc.via()))
