"""The report: a :class:`mmntrace.aggregate.Summary` -> the JSON report dict,
and a comparison of two. Rendering lives in :mod:`mmntrace.render_text`,
:mod:`mmntrace.render_html` and :mod:`mmntrace.plot`.

JSON schema: docs/report-schema.md. Keys are only ever added.
"""

from __future__ import annotations

import json

from . import aggregate
from .errors import RecordingError
from .recording import Recording

SCHEMA_VERSION = 1
#: additions within schema_version 1 (docs/report-schema.md lists what each added)
SCHEMA_MINOR = 2

LAT_FIELDS = ["count", "rate_per_s", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]


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


def from_summary(s: aggregate.Summary) -> dict:
    m = s.meta
    drops = m.get("drops") if isinstance(m.get("drops"), dict) else {}
    kern = m.get("kernel") if isinstance(m.get("kernel"), dict) else {}
    attached = [a for a in _list(m.get("attached")) if isinstance(a, dict)]
    by_kind: dict = {}
    for a in attached:
        d = by_kind.setdefault(str(a.get("kind", "unknown")), {"attached": 0, "skipped": 0})
        d["attached" if a.get("status") == "attached" else "skipped"] += 1
    t0 = s.t0_ns
    viol = []
    for r in s.violations:
        viol.append({k: r[k] for k in ("rule", "hook", "callback", "sleeper", "atomic", "count", "stack")}
                    | {"atomic_count": r.get("atomic_count", r["count"] if r["atomic"] else 0)}
                    | {"first_ns": r["first_ns"], "last_ns": r["last_ns"], "pids": r["pids"],
                       "comms": r.get("comms", []),
                       "first_s": round((r["first_ns"] - t0) / 1e9, 9) if t0 is not None else None,
                       "last_s": round((r["last_ns"] - t0) / 1e9, 9) if t0 is not None else None})
    rate_s = s.rate_s
    skipped = [{"symbol": a.get("symbol"), "why": a.get("status")} for a in attached
               if a.get("status") != "attached"] + \
        [{"symbol": "/".join(h.get("symbols") or [str(h.get("hook"))]), "why": f"hook {h.get('hook')}: {h.get('reason')}"}
         for h in _list(m.get("hooks_missing")) if isinstance(h, dict)]
    verdict = {
        "violation_rules": len(viol),
        "violation_invocations": sum(v["count"] for v in viol),
        "atomic_violation_invocations": sum(v["atomic_count"] for v in viol),
        "must_not_sleep_watched": s.watched_callbacks,
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
        "complete": s.complete,
        "backend": m.get("backend"),
        "aggregate": s.kernel_hist,
        "duration_s": s.duration_s,
        "span_s": round(s.span_s, 6) if s.span_s is not None else None,
        "start_time": m.get("start_time"),
        "end_time": m.get("end_time"),
        "events": s.hook_invocations if s.kernel_hist else s.records,
        "hook_invocations": s.hook_invocations,
        "callback_invocations": s.callback_invocations,
        "events_per_s": round(s.hook_invocations / rate_s, 3) if rate_s else None,
        "dropped": _int(drops.get("total")),
        "drops": drops,
        "quantile_method": s.quantile_method,
        "latency": s.latency,
        "timeline": s.timeline,
        "processes": s.processes,
        "mms": s.mms,
        "secondary_tlb": s.secondary_tlb,
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
            "filters": m.get("filters"),
        },
    }


# ---- comparison ------------------------------------------------------------------------

def ratio(a, b):
    """B/A, or None where it means nothing (A missing or 0, B missing)."""
    if a is None or b is None or not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or a == 0:
        return None
    return round(b / a, 4)


def _join(rows_a, rows_b, key):
    a = {key(r): r for r in rows_a}
    b = {key(r): r for r in rows_b}
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k), b.get(k)) for k in keys]


def compare(a: dict, b: dict) -> dict:
    """The ``compare`` object: A's and B's tables joined side by side, with B/A ratios."""
    lat_key = lambda r: (r["hook"], r["callback"], r["event"])
    lat = []
    for (hook, cb, ev), ra, rb in _join(a["latency"], b["latency"], lat_key):
        pick = lambda r: {f: r.get(f) for f in LAT_FIELDS} if r else None
        lat.append({"hook": hook, "callback": cb, "event": ev, "a": pick(ra), "b": pick(rb),
                    "ratio": {f: ratio(ra and ra.get(f), rb and rb.get(f)) for f in LAT_FIELDS}})
    lat.sort(key=aggregate._row_sort)
    v_key = lambda r: (r["rule"], r["hook"], r["callback"], r["sleeper"])
    viol = [{"rule": k[0], "hook": k[1], "callback": k[2], "sleeper": k[3],
             "atomic": bool((ra or {}).get("atomic") or (rb or {}).get("atomic")),
             "a_count": ra["count"] if ra else 0, "b_count": rb["count"] if rb else 0,
             "ratio": ratio(ra["count"] if ra else 0, rb["count"] if rb else 0)}
            for k, ra, rb in _join(a["violations"], b["violations"], v_key)]

    def by_comm(rep):
        out: dict = {}
        for p in rep.get("processes") or []:
            out[p["comm"]] = out.get(p["comm"], 0) + p["count"]
        return [{"comm": c, "count": n} for c, n in out.items()]
    procs = [{"comm": k, "a_count": ra["count"] if ra else None, "b_count": rb["count"] if rb else None,
              "ratio": ratio(ra and ra["count"], rb and rb["count"])}
             for k, ra, rb in _join(by_comm(a), by_comm(b), lambda r: r["comm"])]
    sec = []
    sa, sb = a.get("secondary_tlb") or {}, b.get("secondary_tlb") or {}
    for k, ra, rb in _join(sa.get("classes", []), sb.get("classes", []), lambda r: r["caller_class"]):
        sec.append({"caller_class": k, "a_count": ra["count"] if ra else 0, "b_count": rb["count"] if rb else 0,
                    "a_share": ra["share"] if ra else None, "b_share": rb["share"] if rb else None,
                    "ratio": ratio(ra["count"] if ra else 0, rb["count"] if rb else 0)})
    summary = [{"metric": k, "a": a.get(k), "b": b.get(k), "ratio": ratio(a.get(k), b.get(k))}
               for k in ("duration_s", "events", "hook_invocations", "callback_invocations", "events_per_s",
                         "dropped", "violation_invocations")]
    dk = [k for k in dict.fromkeys(list(a.get("drops") or {}) + list(b.get("drops") or {}))]
    drops = [{"type": k, "a": (a.get("drops") or {}).get(k), "b": (b.get("drops") or {}).get(k),
              "ratio": ratio((a.get("drops") or {}).get(k), (b.get("drops") or {}).get(k))} for k in dk]
    return {"a": a.get("recording"), "b": b.get("recording"), "summary": summary, "latency": lat,
            "violations": viol, "processes": procs, "secondary_tlb": sec, "drops": drops, "report_b": b}


def with_compare(a: dict, b: dict) -> dict:
    """A's report with the ``compare`` object added (the JSON of `report --compare`)."""
    return a | {"compare": compare(a, b)}


# ---- renderers ---------------------------------------------------------------------------

def to_json(rep: dict) -> str:
    return json.dumps(rep, indent=2)


def to_text(rep: dict, *, width: int | None = None, color: bool = False) -> str:
    from .render_text import render
    return render(rep, width=width, color=color)


def to_html(rep: dict, summary: aggregate.Summary | None = None,
            summary_b: aggregate.Summary | None = None) -> str:
    from .render_html import render
    return render(rep, summary, summary_b)


def load_summary(path) -> aggregate.Summary:
    """Summarize a recording for the CLI: refuses one that holds nothing."""
    s = aggregate.summarize(Recording(path))
    require_data(s)
    return s
