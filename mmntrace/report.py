"""The report: a :class:`mmntrace.aggregate.Summary` -> the JSON report dict,
and a comparison of two. Rendering lives in :mod:`mmntrace.render` (text,
JSON, HTML) and :mod:`mmntrace.plot`; nothing here imports them.

JSON schema: docs/report-schema.md. Keys are only ever added.
"""

from __future__ import annotations


from . import aggregate, hooks
from .kernel import CONTEXT_SOURCES
from .errors import RecordingError
from .recording import Recording

SCHEMA_VERSION = 1
#: additions within schema_version 1 (docs/report-schema.md lists what each added)
SCHEMA_MINOR = 11

LAT_FIELDS = ["count", "rate_per_s", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]


def context_source(meta: dict) -> str:
    """``preempt_count``, ``preempt_rt`` or ``unknown`` (recordings made before
    it was kept read preempt_count() on x86: ``preempt_count``)."""
    v = meta.get("context_source")
    return v if v in CONTEXT_SOURCES else "preempt_count"


def build(rec, **kw) -> dict:
    """The JSON report of a recording (a :class:`Recording` or a path)."""
    return from_summary(aggregate.summarize(rec, **kw))


def require_data(s: aggregate.Summary) -> None:
    """One sentence instead of a report of nothing."""
    if s.empty:
        raise RecordingError(f"{s.path} holds no events, violations or histograms: nothing was recorded "
                             "(no MMU-notifier activity matched while it ran, or it was stopped at once)")


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _int(v) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def hook_symbols(meta: dict) -> dict:
    """Stable hook name -> the kernel's entry point it was traced at, from
    the metadata (:func:`mmntrace.recording.stable_meta` derives it for
    recordings made before it was written)."""
    hs = meta.get("hook_symbols")
    return {str(k): str(v) for k, v in sorted(hs.items(), key=lambda kv: hooks.order(kv[0]))} \
        if isinstance(hs, dict) else {}


def from_summary(s: aggregate.Summary) -> dict:
    m = s.meta
    drops = m.get("drops") if isinstance(m.get("drops"), dict) else {}
    kern = m.get("kernel") if isinstance(m.get("kernel"), dict) else {}
    attached = [a for a in _list(m.get("attached")) if isinstance(a, dict)]
    by_kind: dict = {}
    # callbacks left unprobed by record --module/--callback: a choice, not a gap
    chosen_out = [a for a in attached if str(a.get("status", "")).startswith("not selected")]
    attached = [a for a in attached if not str(a.get("status", "")).startswith("not selected")]
    for a in attached:
        d = by_kind.setdefault(str(a.get("kind", "unknown")), {"attached": 0, "skipped": 0})
        d["attached" if a.get("status") == "attached" else "skipped"] += 1
    t0 = s.t0_ns
    ctx = context_source(m)
    viol = []
    for r in s.violations:
        viol.append({k: r[k] for k in ("rule", "hook", "callback", "sleeper", "atomic", "count", "stack")}
                    | {"atomic_count": r.get("atomic_count", r["count"] if r["atomic"] else 0),
                       "rt_lock_count": r.get("rt_lock_count", 0)}
                    | {"first_ns": r["first_ns"], "last_ns": r["last_ns"], "pids": r["pids"],
                       "comms": r.get("comms", []),
                       "first_s": round((r["first_ns"] - t0) / 1e9, 9) if t0 is not None else None,
                       "last_s": round((r["last_ns"] - t0) / 1e9, 9) if t0 is not None else None})
    rate_s = s.rate_s
    skipped = [{"symbol": a.get("symbol"), "why": a.get("status")} for a in attached
               if a.get("status") != "attached"] + \
        [{"symbol": "/".join(h.get("symbols") or [str(h.get("hook"))]), "why": f"hook {h.get('hook')}: {h.get('reason')}"}
         for h in _list(m.get("hooks_missing")) if isinstance(h, dict)] + \
        ([{"symbol": "interval notifiers",
           "why": f"the start-up sweep could not walk the interval trees of {_int(m.get('sweep_unfinished_mms'))} "
                  "mms to their end (more than 8192 interval notifiers each): subscribers found only there are "
                  "probed when they register, not before"}]
         if _int(m.get("sweep_unfinished_mms")) else [])
    verdict = {
        "violation_rules": len(viol),
        "violation_invocations": sum(v["count"] for v in viol),
        "atomic_violation_invocations": sum(v["atomic_count"] for v in viol),
        # PREEMPT_RT: under a spinlock_t (preempt_count() 0, migration disabled, RCU read-side)
        "rt_lock_violation_invocations": sum(v["rt_lock_count"] for v in viol),
        "context": ctx,
        "must_not_sleep_watched": s.watched_callbacks,
        # sleeps are always watched; calls that may sleep only with record --might-sleep
        # (recordings from before it was a choice probed them: true when absent)
        "might_sleep_watched": bool(m.get("might_sleep", True)),
        # how real sleeps were seen: "switch" (sched_switch: what slept, with its stack) or
        # "count" (the task's voluntary switches at the callback's return: no sleeper)
        "sleep_detect": m.get("sleep_detect") or "switch",
        "dropped": _int(drops.get("total")),
        "untimed": _int(drops.get("untimed")),
        "skipped_probes": len(skipped),
        "complete": s.complete,
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "schema_minor": SCHEMA_MINOR,
        "recording": s.path,
        "kernel": {"release": kern.get("release"), "arch": kern.get("arch")},
        # how each call's lock context was read (context_source()), and on
        # PREEMPT_RT what the probe itself adds to the task's counts
        "context": {"source": ctx, "how": CONTEXT_SOURCES[ctx],
                    "calibration_rt": m.get("calibration_rt")},
        "complete": s.complete,
        "backend": m.get("backend"),
        "probe_kinds": m.get("probe_kinds"),
        "aggregate": s.kernel_hist,
        # record --min-latency: the calls at least this long are events (timeline, processes,
        # mms, callers: slow_calls of them); latency counts every call, from the histograms
        "min_latency_ns": s.min_latency_ns,
        "slow_calls": s.records if s.min_latency_ns is not None else None,
        "duration_s": s.duration_s,
        "span_s": round(s.span_s, 6) if s.span_s is not None else None,
        "start_time": m.get("start_time"),
        "end_time": m.get("end_time"),
        "events": s.hook_invocations if s.kernel_hist else s.records,
        "hook_invocations": s.hook_invocations,
        "callback_invocations": s.callback_invocations,
        "events_per_s": round(s.hook_invocations / rate_s, 3) if rate_s else None,
        "rate_s": rate_s,
        "dropped": _int(drops.get("total")),
        "drops": drops,
        "quantile_method": s.quantile_method,
        "latency": s.latency,
        "timeline": s.timeline,
        "processes": s.processes,
        "mms": s.mms,
        "secondary_tlb": s.secondary_tlb,
        # callback calls by the hook whose invocation made them (via; null: none of ours)
        "via": s.via,
        "violations": viol,
        "violation_invocations": sum(v["count"] for v in viol),
        "sleep_records": s.sleep_records,
        "verdict": verdict,
        "coverage": {
            "attached": sorted({str(a.get("symbol")) for a in attached if a.get("status") == "attached"}),
            "skipped": skipped,
            "untimed": [{"callback": u.get("callback"), "count": _int(u.get("count"))}
                        for u in _list(m.get("untimed")) if isinstance(u, dict)],
            "by_kind": by_kind,
            "hooks": _list(m.get("hooks")),
            "hook_symbols": hook_symbols(m),
            "filters": m.get("filters"),
            "not_selected": sorted({str(a.get("symbol")) for a in chosen_out}),
        },
    }


# ---- comparison ------------------------------------------------------------------------

#: a latency (p50, p99, max) or a violation rate that changed by this factor or more, up or
#: down, is judged worse or better: the HTML colours it, the text counts it
NOTABLE = 1.10
#: the latency fields judged
JUDGED = ("p50_ns", "p99_ns", "max_ns")
#: the totals compared as rates, in the order shown
TOTALS = ("hook_invocations", "callback_invocations", "violation_invocations", "dropped")
QUANTILE_ERROR = {"exact": "exact", "loglinear": "up to 0.8% below the exact value",
                  "log2_upper": "log2 upper bounds, up to 2x above the true value"}


def _round_ratio(r: float) -> float:
    """Four decimals; a ratio too small for those keeps three significant
    digits, so that a ratio is 0 only where B's value is."""
    return round(r, 4) if r == 0 or abs(r) >= 0.001 else float(f"{r:.3g}")


def ratio(a, b):
    """B/A, or None where it means nothing (A missing or 0, B missing)."""
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0:
        return None
    return _round_ratio(b / a)


def rate_seconds(rep: dict) -> float | None:
    """The seconds a report's rates are per, its ``rate_s``
    (:attr:`aggregate.Summary.rate_s`: the wall duration, else the timestamp
    span): ``latency[].rate_per_s`` and ``events_per_s`` divide by it, and so
    does the comparison. None where neither is known."""
    return rep.get("rate_s") or None


def per_s(n, secs) -> float | None:
    """``n`` per second of ``secs``, unrounded (so that ratios of rates are exact)."""
    return n / secs if isinstance(n, (int, float)) and secs else None


def presence(a, b) -> str:
    """Where a thing is: "both", "new" (only in B), "gone" (only in A) or
    "none"; a missing row and a count of 0 are both absence."""
    return {(True, True): "both", (False, True): "new", (True, False): "gone", (False, False): "none"}[
        (bool(a), bool(b))]


def judge(r, status: str, *, presence_counts: bool = False) -> str | None:
    """"worse" where B/A is :data:`NOTABLE` or more, "better" where it is
    1/NOTABLE (0.91) or less, else None. With ``presence_counts`` (violations, where
    any is a fault) appearing is worse and disappearing better."""
    if presence_counts and status in ("new", "gone"):
        return "worse" if status == "new" else "better"
    if status != "both" or r is None:
        return None
    # judged on the ratio as printed (two decimals): every "1.1x" is worse, no "1.09x" is
    r = round(r, 2)
    return "worse" if r >= NOTABLE else "better" if r <= round(1 / NOTABLE, 2) else None


def counted(a_n, b_n, a_s, b_s) -> dict:
    """One thing counted in A and in B: the counts, each as a rate per second
    of its own recording, the B/A ratio of the rates and where it is."""
    ra, rb = per_s(a_n or 0, a_s), per_s(b_n or 0, b_s)
    rnd = lambda v: None if v is None else float(f"{v:.6g}")  # noqa: E731
    return {"a_count": a_n or 0, "b_count": b_n or 0, "a_rate_per_s": rnd(ra), "b_rate_per_s": rnd(rb),
            "rate_ratio": ratio(ra, rb), "status": presence(a_n, b_n)}


def _join(rows_a, rows_b, key):
    a = {key(r): r for r in rows_a}
    b = {key(r): r for r in rows_b}
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k), b.get(k)) for k in keys]


def _hook_names(ra, rb) -> dict:
    """A joined row's hook: the stable name it was joined on, and each side's own."""
    hook = (ra or rb)["hook"]
    return {"hook": hook, "stable_hook": hooks.stable(hook), "a_hook": ra["hook"] if ra else None,
            "b_hook": rb["hook"] if rb else None}


def _latency(a: dict, b: dict, sa, sb) -> list[dict]:
    """Latency rows joined on (stable hook, callback, event): A's and B's
    numbers, B/A of each (the rate's from the exact rates) and the judgement
    of p50, p99 and max."""
    out = []
    key = lambda r: (hooks.stable(r["hook"]), r["callback"], r["event"])  # noqa: E731
    pick = lambda r: {f: r.get(f) for f in LAT_FIELDS} if r else None  # noqa: E731
    for (_h, cb, ev), ra, rb in _join(a["latency"], b["latency"], key):
        q = {f: ratio(ra and ra.get(f), rb and rb.get(f)) for f in LAT_FIELDS}
        q["rate_per_s"] = ratio(per_s(ra and ra["count"], sa), per_s(rb and rb["count"], sb))
        st = presence(ra, rb)
        out.append(_hook_names(ra, rb) | {"callback": cb, "event": ev, "a": pick(ra), "b": pick(rb), "ratio": q,
                                          "status": st, "judged": {f: judge(q[f], st) for f in JUDGED}})
    out.sort(key=aggregate._row_sort)
    return out


def _invocations(rep: dict) -> list[dict]:
    """Invocations per (hook, callback), summed over events."""
    out: dict = {}
    for r in rep["latency"]:
        k = (r["hook"], r["callback"])
        out[k] = out.get(k, 0) + r["count"]
    return [{"hook": h, "callback": cb, "count": n} for (h, cb), n in out.items()]


def _rates(a: dict, b: dict, sa, sb) -> list[dict]:
    """Invocations of each hook and callback (over all events) as rates."""
    key = lambda r: (hooks.stable(r["hook"]), r["callback"])  # noqa: E731
    rows = [_hook_names(ra, rb) | {"callback": cb, "event": None}
            | counted(ra and ra["count"], rb and rb["count"], sa, sb)
            for (_h, cb), ra, rb in _join(_invocations(a), _invocations(b), key)]
    rows.sort(key=aggregate._row_sort)
    for r in rows:
        del r["event"]
    return rows


def _violations(a: dict, b: dict, sa, sb) -> list[dict]:
    """Violation rows joined on (rule, stable hook, callback, sleeper); a
    violation that appears is worse, one that disappears better."""
    key = lambda r: (r["rule"], hooks.stable(r["hook"]), r["callback"], r["sleeper"])  # noqa: E731
    out = []
    for (rule, _h, cb, sleeper), ra, rb in _join(a["violations"], b["violations"], key):
        c = counted(ra and ra["count"], rb and rb["count"], sa, sb)
        out.append({"rule": rule} | _hook_names(ra, rb) | {
            "callback": cb, "sleeper": sleeper, "atomic": bool((ra or {}).get("atomic") or (rb or {}).get("atomic")),
            "ratio": ratio(c["a_count"], c["b_count"])} | c
            | {"judged": judge(c["rate_ratio"], c["status"], presence_counts=True),
               "stack": (rb or ra).get("stack") or []})
    return out


def _processes(a: dict, b: dict, sa, sb) -> list[dict]:
    """Hook invocations of the top processes, joined by comm (pids differ
    from one recording to the next). Each side lists only its top ones, so a
    comm missing from one side has no ratio: it may only have ranked lower."""
    def by_comm(rep):
        out: dict = {}
        for p in rep.get("processes") or []:
            out[p["comm"]] = out.get(p["comm"], 0) + p["count"]
        return [{"comm": c, "count": n} for c, n in out.items()]
    rows = []
    for k, ra, rb in _join(by_comm(a), by_comm(b), lambda r: r["comm"]):
        c = counted(ra and ra["count"], rb and rb["count"], sa, sb)
        rows.append({"comm": k, "a_count": ra["count"] if ra else None, "b_count": rb["count"] if rb else None,
                     "ratio": ratio(ra and ra["count"], rb and rb["count"])}
                    | {k2: v for k2, v in c.items() if k2 not in ("a_count", "b_count")}
                    | {"rate_ratio": c["rate_ratio"] if ra and rb else None})
    return rows


def _secondary(a: dict, b: dict, sa, sb) -> list[dict]:
    """The secondary-TLB hook's caller classes: shares and rates."""
    ca, cb = (a.get("secondary_tlb") or {}).get("classes", []), (b.get("secondary_tlb") or {}).get("classes", [])
    return [{"caller_class": k, "a_share": ra["share"] if ra else None, "b_share": rb["share"] if rb else None,
             "ratio": ratio(ra["count"] if ra else 0, rb["count"] if rb else 0)}
            | counted(ra and ra["count"], rb and rb["count"], sa, sb)
            for k, ra, rb in _join(ca, cb, lambda r: r["caller_class"])]


def _recorded_hooks(rep: dict) -> dict[str, set]:
    """Stable hook name -> the names this recording gives it."""
    names = [r["hook"] for r in rep["latency"]] + [v["hook"] for v in rep["violations"]] \
        + [h for h in (rep.get("coverage") or {}).get("hooks") or [] if isinstance(h, str)]
    out: dict[str, set] = {}
    for n in names:
        out.setdefault(hooks.stable(n), set()).add(n)
    return out


def hook_names(a: dict, b: dict) -> list[dict]:
    """The hooks the two reports name differently, compared under their
    stable name: none since recordings name every hook by it (older ones
    are mapped as they are read); kept for the schema."""
    ha, hb = _recorded_hooks(a), _recorded_hooks(b)
    return [{"hook": h, "a": sorted(ha[h]), "b": sorted(hb[h])} for h in ha if h in hb and ha[h] != hb[h]]


def hook_symbol_changes(a: dict, b: dict) -> list[dict]:
    """The hooks both recordings traced at different kernel symbols (the
    kernel renamed its entry point: the secondary-TLB hook is
    __mmu_notifier_invalidate_range before 6.6), in report order."""
    sa, sb = ((r.get("coverage") or {}).get("hook_symbols") or {} for r in (a, b))
    return [{"hook": h, "a": sa[h], "b": sb[h]} for h in sorted(set(sa) & set(sb), key=hooks.order)
            if sa[h] != sb[h]]


def _kernel_text(a: dict, b: dict, ka, kb) -> str:
    """Kernels differ: what it means, which hooks only one has, which are named apart."""
    ha, hb = set(_recorded_hooks(a)), set(_recorded_hooks(b))
    text = (f"kernels differ ({ka} before, {kb} after): the notifier code, the hooks it has and the drivers' "
            "callbacks may differ, so a change may be the kernel's")
    if ha - hb:
        text += f"; only before has {', '.join(sorted(ha - hb))}"
    if hb - ha:
        text += f"; only after has {', '.join(sorted(hb - ha))}"
    for h in hook_names(a, b):
        text += (f"; {h['hook']} is {'/'.join(h['a'])} before and {'/'.join(h['b'])} after, "
                 f"compared as {h['hook']}")
    for h in hook_symbol_changes(a, b):
        text += f"; {h['hook']} is the kernel's {h['a']} before and {h['b']} after"
    return text


def mode_text(rep: dict) -> str:
    """How a recording was made, as its record flags say it."""
    if rep.get("min_latency_ns"):
        from .units import fmt_duration
        return f"--min-latency {fmt_duration(rep['min_latency_ns'])}"
    return "--aggregate" if rep.get("aggregate") else "per-event"




def warnings(a: dict, b: dict) -> list[dict]:
    """What differs between the recordings beyond the workload, each with what
    it means for the comparison: kernel, architecture, backend, recording
    mode, quantile method."""
    out = []

    def differ(key: str, va, vb, text: str) -> None:
        if va != vb:
            out.append({"key": key, "a": va, "b": vb, "text": text})
    ka, kb = a.get("kernel") or {}, b.get("kernel") or {}
    differ("kernel", ka.get("release"), kb.get("release"), _kernel_text(a, b, ka.get("release"), kb.get("release")))
    differ("arch", ka.get("arch"), kb.get("arch"),
           f"architectures differ ({ka.get('arch')} before, {kb.get('arch')} after): the TLB code that calls the "
           "hooks differs, so compare the shape of the numbers rather than their size")
    differ("backend", a.get("backend"), b.get("backend"),
           f"backends differ ({a.get('backend')} before, {b.get('backend')} after): kprobes cost more per probed "
           "call than fentry trampolines, so part of a latency change may be the probes' own")
    differ("aggregate", bool(a.get("aggregate")), bool(b.get("aggregate")),
           f"recording modes differ ({mode_text(a)} before, {mode_text(b)} after): --aggregate and --min-latency "
           "quantiles are log2 upper bounds, up to 2x above the true value, so latency ratios say little; counts "
           "and rates are exact in both; processes and callers exist only per-event (--min-latency: for the "
           "slow calls)")
    if bool(a.get("aggregate")) == bool(b.get("aggregate")):      # else the line above said it
        qa, qb = a.get("quantile_method"), b.get("quantile_method")
        differ("quantile_method", qa, qb,
               f"quantile methods differ ({qa} before, {qb} after): {qa} is {QUANTILE_ERROR.get(qa, 'unknown')}, "
               f"{qb} {QUANTILE_ERROR.get(qb, 'unknown')}, so latency ratios within that error are noise")
    return out


def compare(a: dict, b: dict) -> dict:
    """The ``compare`` object: A (before) and B (after) joined row by row on
    stable hook names, counts as rates per second of each recording, B/A
    ratios, judgements of latency and violations, and the warnings."""
    sa, sb = rate_seconds(a), rate_seconds(b)
    summary = [{"metric": k, "a": a.get(k), "b": b.get(k), "ratio": ratio(a.get(k), b.get(k))}
               for k in ("duration_s", "events", "hook_invocations", "callback_invocations", "events_per_s",
                         "dropped", "violation_invocations")]
    dk = [k for k in dict.fromkeys(list(a.get("drops") or {}) + list(b.get("drops") or {}))]
    drops = [{"type": k, "a": (a.get("drops") or {}).get(k), "b": (b.get("drops") or {}).get(k),
              "ratio": ratio((a.get("drops") or {}).get(k), (b.get("drops") or {}).get(k))} for k in dk]
    return {"a": a.get("recording"), "b": b.get("recording"), "rate_s": {"a": sa, "b": sb},
            "warnings": warnings(a, b), "hook_names": hook_names(a, b),
            "hook_symbols": hook_symbol_changes(a, b), "notable": NOTABLE,
            "summary": summary, "totals": [{"metric": k} | counted(a.get(k), b.get(k), sa, sb) for k in TOTALS],
            "rates": _rates(a, b, sa, sb), "latency": _latency(a, b, sa, sb),
            "violations": _violations(a, b, sa, sb), "processes": _processes(a, b, sa, sb),
            "secondary_tlb": _secondary(a, b, sa, sb), "drops": drops, "report_b": b}


def with_compare(a: dict, b: dict) -> dict:
    """A's report with the ``compare`` object added (the JSON of `report --compare`)."""
    return a | {"compare": compare(a, b)}


def load_summary(path) -> aggregate.Summary:
    """Summarize a recording for the CLI: refuses one that holds nothing."""
    s = aggregate.summarize(Recording(path))
    require_data(s)
    return s
