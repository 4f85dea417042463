"""Presentation: a recording -> the JSON report contract, or terminal text.

JSON schema: docs/report-schema.md. Keys are only ever added.
"""

from __future__ import annotations

import json

from . import aggregate
from .recording import Recording

SCHEMA_VERSION = 1


def build(rec: Recording) -> dict:
    m = rec.meta
    events = rec.events()
    sleeps = rec.sleeps()
    if m.get("aggregate"):
        latency = aggregate.latency_from_hist(rec.hist(), m.get("totals", []))
        n_events = sum(r["count"] for r in latency if r["callback"] is None)
    else:
        latency = aggregate.latency(events)
        n_events = int(len(events))
    viol = aggregate.violations(sleeps)
    start, end = m.get("start_time"), m.get("end_time")
    drops = m.get("drops") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "kernel": {"release": m["kernel"]["release"], "arch": m["kernel"]["arch"]},
        "complete": rec.complete,
        "backend": m.get("backend"),
        "aggregate": bool(m.get("aggregate")),
        "duration_s": round(end - start, 3) if start and end else None,
        "events": n_events,
        "dropped": int(drops.get("total", 0)),
        "drops": drops,
        "latency": latency,
        "violations": [{k: v for k, v in r.items() if k not in ("first_ns", "last_ns", "pids")} |
                       {"first_ns": r["first_ns"], "last_ns": r["last_ns"], "pids": r["pids"]} for r in viol],
        "coverage": {
            "attached": sorted({a["symbol"] for a in m.get("attached", []) if a.get("status") == "attached"}),
            "skipped": [{"symbol": a["symbol"], "why": a["status"]} for a in m.get("attached", [])
                        if a.get("status") != "attached"],
        },
    }


def to_json(rep: dict) -> str:
    return json.dumps(rep, indent=2)


def _us(ns) -> str:
    return f"{ns / 1000:.1f}"


def to_text(rep: dict) -> str:
    out = []
    k = rep["kernel"]
    out.append(f"mmntrace report: kernel {k['release']} ({k['arch']}), backend {rep['backend']}"
               f"{', aggregated in kernel' if rep['aggregate'] else ''}")
    out.append(f"duration {rep['duration_s']} s, {rep['events']} hook invocations, {rep['dropped']} dropped"
               + ("" if rep["complete"] else "  [recording was cut short: metadata incomplete]"))
    out.append("")
    out.append("Latency (µs)")
    hdr = f"{'hook':<32} {'callback':<44} {'event':<16} {'count':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>9}"
    out.append(hdr)
    out.append("-" * len(hdr))
    for r in rep["latency"]:
        out.append(f"{r['hook']:<32} {(r['callback'] or '(hook)')[:44]:<44} {(r['event'] or '-'):<16} "
                   f"{r['count']:>8} {_us(r['p50_ns']):>8} {_us(r['p90_ns']):>8} {_us(r['p99_ns']):>8} "
                   f"{_us(r['max_ns']):>9}")
    out.append("")
    if rep["violations"]:
        out.append(f"Rule violations ({sum(v['count'] for v in rep['violations'])} callback invocations)")
        for v in rep["violations"]:
            out.append(f"  {v['rule']:<12} {v['hook']} -> {v['callback']} called {v['sleeper']}"
                       f"{' in atomic context' if v['atomic'] else ''}: {v['count']}x, pids {v['pids'][:5]}")
            for fr in v["stack"][:8]:
                out.append(f"      {fr}")
    else:
        out.append("Rule violations: none")
    skipped = rep["coverage"]["skipped"]
    out.append("")
    out.append(f"Coverage: {len(rep['coverage']['attached'])} probes attached, {len(skipped)} skipped")
    for s in skipped[:10]:
        out.append(f"  skipped {s['symbol']}: {s['why']}")
    return "\n".join(out) + "\n"
