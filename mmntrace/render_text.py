"""Terminal rendering of the JSON report dict (rich tables, plain text when not a terminal)."""

from __future__ import annotations

import io

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .aggregate import bucket_lo

BARS = " ▁▂▃▄▅▆▇█"


def us(ns) -> str:
    """ns -> µs with one decimal ('-' for None)."""
    return "-" if ns is None else f"{ns / 1000:.1f}"


def dur(ns) -> str:
    """A duration with a readable unit."""
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.3g} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.3g} ms"
    return f"{ns / 1e9:.3g} s"


def num(v, digits=1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if 0 < abs(v) < 1 and digits == 1:
            return f"{v:.2g}"          # a rate of one event in a minute is not 0.0
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def times(r) -> str:
    return "-" if r is None else f"{r:.2f}x"


def spark(values, lo=None, hi=None) -> str:
    """One character per value, height relative to the largest (None: blank)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return ""
    top = hi if hi is not None else max(vals)
    out = []
    for v in values:
        if v is None or v <= 0 or not top:
            out.append(" " if v is None else BARS[0] if not v else BARS[1])
        else:
            out.append(BARS[max(1, min(8, round(8 * v / top)))])
    return "".join(out)


def hist_span(rows) -> tuple[int, int] | None:
    """Common log2-bucket range of rows' hist_log2 ([lo_ns, count] pairs)."""
    bs = [lo.bit_length() for r in rows for lo, _c in r.get("hist_log2") or []]
    return (min(bs), max(bs)) if bs else None


def hist_spark(pairs, span) -> str:
    if not span:
        return ""
    counts = {lo.bit_length(): c for lo, c in pairs or []}
    vals = [counts.get(b, 0) for b in range(span[0], span[1] + 1)]
    return spark(vals)


class _Titled(Table):
    """A table whose title is printed on its own line above it (rich would wrap
    a title wider than the table)."""

    def __rich_console__(self, console, options):
        if self.heading:
            yield Text(self.heading, style="bold")
        yield from super().__rich_console__(console, options)


def _table(title=None, **kw) -> Table:
    t = _Titled(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, **kw)
    t.heading = title
    return t


def _cb(r) -> str:
    return r["callback"] or "(hook)"


def header(rep) -> list[str]:
    k = rep["kernel"]
    lines = [f"mmntrace report: {rep.get('recording') or ''}".rstrip(),
             f"kernel {k['release']} ({k['arch']}), backend {rep['backend']}"
             f"{', aggregated in kernel (--aggregate)' if rep['aggregate'] else ''}"]
    rate = f" ({rep['events_per_s']:,.1f}/s)" if rep.get("events_per_s") is not None else ""
    if rep["duration_s"] is not None:
        span = f"duration {rep['duration_s']} s"
    elif rep.get("span_s") is not None:
        span = f"{rep['span_s']:.3f} s from first to last record"
    else:
        span = "duration unknown"
    lines.append(f"{span}, {num(rep.get('hook_invocations', rep['events']))} hook invocations"
                 f"{rate}, {num(rep.get('callback_invocations', 0))} callback invocations, {num(rep['dropped'])} dropped"
                 + ("" if rep["complete"] else "  [recording was cut short: metadata incomplete]"))
    q = {"exact": "exact", "loglinear": "from log-linear histograms (within 0.8%)",
         "log2_upper": "upper bounds of log2 slots (within 2x)"}.get(rep.get("quantile_method"), "")
    if q:
        lines.append(f"quantiles: {q}")
    return lines


def latency_table(rep) -> Table:
    rows = rep["latency"]
    span = hist_span(rows)
    hist_hdr = f"log2 histogram {dur(bucket_lo(span[0])) if span else ''}..{dur(1 << span[1]) if span else ''}"
    t = _table("Latency (µs) by hook x callback x event")
    for name, just in (("hook", "left"), ("callback", "left"), ("event", "left"), ("count", "right"),
                       ("rate/s", "right"), ("p50", "right"), ("p90", "right"), ("p99", "right"),
                       ("p99.9", "right"), ("max", "right"), (hist_hdr, "left")):
        t.add_column(name, justify=just, no_wrap=name in ("hook", "callback"))
    prev = None
    for r in rows:
        t.add_row(r["hook"] if r["hook"] != prev else "", _cb(r), r["event"] or "-", num(r["count"]),
                  num(r.get("rate_per_s")), us(r["p50_ns"]), us(r["p90_ns"]), us(r["p99_ns"]),
                  us(r.get("p999_ns")), us(r["max_ns"]), hist_spark(r.get("hist_log2"), span))
        prev = r["hook"]
    return t


def timeline_table(rep) -> Table | None:
    tl = rep.get("timeline")
    if not tl or not tl["series"]:
        return None
    t = _table(f"Over time: {tl['buckets']} buckets of {tl['bucket_s']:g} s")
    for name in ("hook", "invocations", "mean/s", "peak/s", "rate through the recording", "p99 peak (µs)",
                 "p99 through the recording"):
        t.add_column(name, justify="right" if name in ("invocations", "mean/s", "peak/s", "p99 peak (µs)") else "left",
                     no_wrap=True)
    for s in tl["series"]:
        n = sum(s["count"])
        p99 = [v for v in s["p99_ns"] if v is not None]
        t.add_row(s["hook"], num(n), num(n / (tl["buckets"] * tl["bucket_s"])), num(max(s["rate_per_s"])),
                  spark(s["rate_per_s"]), us(max(p99)) if p99 else "-", spark(s["p99_ns"]))
    if any(tl.get("violations") or []):
        v = tl["violations"]
        t.add_row("violations", num(sum(v)), "", "", spark(v), "", "")
    return t


def process_tables(rep) -> list[Table]:
    out = []
    if rep.get("processes"):
        t = _table("Top processes (hook invocations)")
        for name in ("pid", "comm", "invocations", "share", "total time", "max"):
            t.add_column(name, justify="left" if name == "comm" else "right")
        for p in rep["processes"]:
            t.add_row(str(p["pid"]), p["comm"] or "?", num(p["count"]), pct(p["share"]), dur(p["total_ns"]),
                      dur(p["max_ns"]))
        out.append(t)
    if rep.get("mms"):
        t = _table("Top mms (hook invocations)")
        for name in ("mm", "invocations", "share", "total time", "max", "processes"):
            t.add_column(name, justify="left" if name in ("mm", "processes") else "right")
        for m in rep["mms"]:
            t.add_row(m["mm"], num(m["count"]), pct(m["share"]), dur(m["total_ns"]), dur(m["max_ns"]),
                      ", ".join(m["comms"][:4]) + f" (pids {', '.join(map(str, m['pids'][:5]))})")
        out.append(t)
    return out


def secondary_tables(rep) -> list[Table]:
    s = rep.get("secondary_tlb")
    if not s:
        return []
    t = _table(f"Callers of the secondary-TLB hook: {num(s['count'])} invocations")
    for name in ("caller class", "invocations", "share", "total time"):
        t.add_column(name, justify="left" if name == "caller class" else "right")
    for c in s["classes"]:
        t.add_row(c["caller_class"], num(c["count"]), pct(c["share"]), dur(c["total_ns"]))
    u = _table("Top callers of the secondary-TLB hook")
    for name in ("caller", "class", "invocations", "share"):
        u.add_column(name, justify="right" if name in ("invocations", "share") else "left")
    for c in s["callers"]:
        u.add_row(c["caller"] or "(no stack)", c["caller_class"] or "unknown", num(c["count"]), pct(c["share"]))
    return [t, u]


def violation_section(rep) -> list:
    v = rep["violations"]
    if not v:
        return [Text("Rule violations: none")]
    t = _table(f"Rule violations ({sum(x['count'] for x in v)} callback invocations)")
    for name in ("rule", "hook", "callback", "sleeper", "atomic", "count", "first (s)", "last (s)", "processes"):
        t.add_column(name, justify="right" if name in ("count", "first (s)", "last (s)") else "left")
    for x in v:
        procs = ", ".join(f"{c}" for c in x.get("comms", [])[:3])
        procs += f" (pids {', '.join(map(str, x['pids'][:5]))}{'...' if len(x['pids']) > 5 else ''})"
        ac = x.get("atomic_count", x["count"] if x["atomic"] else 0)
        t.add_row(x["rule"], x["hook"], x["callback"] or "(hook)", x["sleeper"] or "?",
                  f"{ac} of {x['count']}", num(x["count"]), num(x.get("first_s"), 3), num(x.get("last_s"), 3),
                  procs)
    out = [t]
    for i, x in enumerate(v):
        lines = [f"  example stack {i + 1}: {x['rule']} in {x['callback'] or x['hook']}"
                 f"{' in atomic context' if x['atomic'] else ''}"]
        lines += [f"      {fr}" for fr in x["stack"][:12]]
        if len(x["stack"]) > 12:
            lines.append(f"      ... {len(x['stack']) - 12} more frames")
        out.append(Text("\n".join(lines)))
    out.append(Text(""))
    return out


def verdict(rep) -> list[str]:
    """The first thing read: what broke the rules, against how much was watched,
    and what the recording could not see."""
    v = rep.get("verdict")
    if not v:
        return []
    w = v.get("must_not_sleep_watched")
    seen = (f"{num(w)} must-not-sleep callback calls watched" if w is not None
            else "must-not-sleep calls watched: not counted (--aggregate)")
    if v["violation_invocations"]:
        head = (f"VERDICT: {num(v['violation_invocations'])} callback calls broke the sleeping rules "
                f"({v['violation_rules']} distinct rule/callback/sleeper, "
                f"{num(v['atomic_violation_invocations'])} in atomic context); {seen}")
    else:
        head = f"VERDICT: no callback call broke the sleeping rules; {seen}"
    gaps = [f"{num(v['dropped'])} records dropped", f"{v['skipped_probes']} probes skipped"]
    if v.get("untimed"):
        gaps.insert(1, f"of which {num(v['untimed'])} callback calls counted but not timed (made before their "
                       "probe was attached)")
    if not v.get("complete", True):
        gaps.append("recording cut short")
    return [head, "  blind spots: " + ", ".join(gaps) + (" (details at the end)" if v["dropped"] or
                                                         v["skipped_probes"] else "")]


def drops_coverage(rep) -> list:
    out = []
    d = rep.get("drops") or {}
    nz = {k: v for k, v in d.items() if k != "total" and v}
    out.append(Text(f"Drops: {rep['dropped']} records lost"
                    + (f" ({', '.join(f'{k} {v}' for k, v in nz.items())})" if nz else "")))
    cov = rep["coverage"]
    skipped = cov["skipped"]
    out.append(Text(f"Coverage: {len(cov['attached'])} probes attached, {len(skipped)} skipped"))
    bk = cov.get("by_kind") or {}
    if bk:
        out.append(Text("  " + ", ".join(f"{k}: {v['attached']} attached"
                                          + (f", {v['skipped']} skipped" if v["skipped"] else "")
                                          for k, v in sorted(bk.items()))))
    for s in skipped[:10]:
        out.append(Text(f"  skipped {s['symbol']}: {s['why']}"))
    for u in cov.get("untimed") or []:
        out.append(Text(f"  untimed {u['callback']}: {num(u['count'])} calls made before its probe was attached "
                        "(counted, not timed)"))
    if len(skipped) > 10:
        out.append(Text(f"  ... {len(skipped) - 10} more skipped (see --format json)"))
    return out


def compare_section(rep) -> list:
    c = rep["compare"]
    out = [Text(f"Comparison: A = {c['a']}\n            B = {c['b']}", style="bold")]
    t = _table("Summary (B/A)")
    for name in ("", "A", "B", "B/A"):
        t.add_column(name, justify="left" if not name else "right")
    for r in c["summary"]:
        t.add_row(r["metric"], num(r["a"]), num(r["b"]), times(r["ratio"]))
    out.append(t)
    t = _table("Latency (µs), A vs B")
    for name in ("hook", "callback", "event", "count A", "count B", "B/A", "p50 A", "p50 B", "B/A", "p99 A",
                 "p99 B", "B/A", "max A", "max B", "B/A"):
        t.add_column(name, justify="left" if name in ("hook", "callback", "event") else "right",
                     no_wrap=name in ("hook", "callback"))
    prev = None
    for r in c["latency"]:
        a, b, q = r["a"] or {}, r["b"] or {}, r["ratio"]
        t.add_row(r["hook"] if r["hook"] != prev else "", r["callback"] or "(hook)", r["event"] or "-",
                  num(a.get("count")), num(b.get("count")), times(q["count"]),
                  us(a.get("p50_ns")), us(b.get("p50_ns")), times(q["p50_ns"]),
                  us(a.get("p99_ns")), us(b.get("p99_ns")), times(q["p99_ns"]),
                  us(a.get("max_ns")), us(b.get("max_ns")), times(q["max_ns"]))
        prev = r["hook"]
    out.append(t)
    if c["secondary_tlb"]:
        t = _table("Secondary-TLB callers, A vs B")
        for name in ("caller class", "A", "share A", "B", "share B", "B/A"):
            t.add_column(name, justify="left" if name == "caller class" else "right")
        for r in c["secondary_tlb"]:
            t.add_row(r["caller_class"], num(r["a_count"]), pct(r["a_share"]), num(r["b_count"]), pct(r["b_share"]),
                      times(r["ratio"]))
        out.append(t)
    if c["processes"]:
        t = _table("Processes (hook invocations by comm), A vs B")
        for name in ("comm", "A", "B", "B/A"):
            t.add_column(name, justify="left" if name == "comm" else "right")
        for r in c["processes"]:
            t.add_row(r["comm"] or "?", num(r["a_count"]), num(r["b_count"]), times(r["ratio"]))
        out.append(t)
    if c["violations"]:
        t = _table("Rule violations, A vs B")
        for name in ("rule", "hook", "callback", "sleeper", "atomic", "A", "B", "B/A"):
            t.add_column(name, justify="right" if name in ("A", "B", "B/A") else "left")
        for r in c["violations"]:
            t.add_row(r["rule"], r["hook"], r["callback"] or "(hook)", r["sleeper"] or "?",
                      "yes" if r["atomic"] else "no", num(r["a_count"]), num(r["b_count"]), times(r["ratio"]))
        out.append(t)
    else:
        out.append(Text("Rule violations: none in A or B"))
    return out


def render(rep: dict, *, width: int | None = None, color: bool = False) -> str:
    buf = io.StringIO()
    con = Console(file=buf, width=width or 220, color_system="standard" if color else None,
                  force_terminal=color, highlight=False, emoji=False, markup=False, soft_wrap=False, legacy_windows=False)
    for line in header(rep):
        con.print(Text(line))
    for line in verdict(rep):
        con.print(Text(line, style="bold" if line.startswith("VERDICT") else ""))
    con.print()
    parts: list = [latency_table(rep) if rep["latency"] else Text("Latency: no hook or callback invocations")]
    tl = timeline_table(rep)
    if tl is not None:
        parts.append(tl)
    elif rep["aggregate"]:
        parts.append(Text("Over time, processes, mms, callers: not available (--aggregate keeps only histograms)"))
    parts += process_tables(rep)
    parts += secondary_tables(rep)
    parts += violation_section(rep)
    parts += drops_coverage(rep)
    if rep.get("compare"):
        parts += [Text("")] + compare_section(rep)
    for p in parts:
        con.print(p)
        if isinstance(p, Table):
            con.print()
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
