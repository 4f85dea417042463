"""One self-contained HTML file: the report's tables plus its figures as embedded PNG.

No scripts, no external style sheets, fonts or images: the file can be mailed
or attached to a bug as is.
"""

from __future__ import annotations

import base64
from html import escape

from . import render_compare as C, render_text as T
from .aggregate import Summary

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 24px 32px;
       max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd;
       padding-bottom: 3px; }
.meta { color: #555; margin: 2px 0; }
.warn { color: #a40000; font-weight: 600; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { padding: 3px 9px; border-bottom: 1px solid #eee; text-align: right; white-space: nowrap; }
th { background: #f4f4f6; position: sticky; top: 0; }
td.l, th.l { text-align: left; }
tr.hookrow td { border-top: 2px solid #ccc; }
code, pre, td.mono { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
pre { background: #f7f7f9; padding: 8px 12px; border-radius: 4px; overflow-x: auto; }
.spark { font-family: "DejaVu Sans Mono", monospace; letter-spacing: -1px; color: #2a6ebb; }
img { max-width: 100%; border: 1px solid #e4e4e4; margin: 6px 0; }
details { margin: 4px 0 10px; }
.scroll { overflow-x: auto; max-width: 100%; }
/* the comparison: fits 1280 px, names wrap anywhere, numbers never; colour only on judged ratios */
table.cmp { width: 100%; }
table.cmp th { position: static; }
table.cmp th.grp { text-align: center; border-bottom: 1px solid #ccc; }
td.name, th.name { white-space: normal; overflow-wrap: anywhere; word-break: break-word; }
.worse { color: #b00020; font-weight: 600; } .better { color: #0a7d32; font-weight: 600; }
.warnbox { border-left: 4px solid #c77700; background: #fff7e6; padding: 2px 12px; margin: 8px 0; }
.warnbox ul { margin: 4px 0 8px; padding-left: 20px; }
.changes { font-weight: 600; } .sub { color: #555; }
"""


def _e(v) -> str:
    return escape("" if v is None else str(v))


def _table(headers, rows, left=()) -> str:
    h = "".join(f'<th class="{"l" if i in left else ""}">{_e(x)}</th>' for i, x in enumerate(headers))
    body = []
    for r in rows:
        cls, cells = (r[0], r[1]) if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], list) else ("", r)
        tds = "".join(f'<td class="{"l" if i in left else ""}">{c if isinstance(c, _Raw) else _e(c)}</td>'
                      for i, c in enumerate(cells))
        body.append(f'<tr class="{cls}">{tds}</tr>')
    return f'<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


class _Raw(str):
    """HTML that must not be escaped."""


def _spark(s: str) -> _Raw:
    return _Raw(f'<span class="spark">{escape(s)}</span>')


def _img(fig, alt: str) -> str:
    if fig is None:
        return ""
    from .plot import png_bytes
    data = base64.b64encode(png_bytes(fig)).decode()
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _header(rep) -> str:
    lines = T.header(rep)
    out = [f"<h1>mmntrace report</h1>", f'<p class="meta"><code>{_e(rep.get("recording"))}</code></p>']
    for ln in lines[1:]:
        cls = "warn" if "cut short" in ln else "meta"
        out.append(f'<p class="{cls}">{_e(ln)}</p>')
    ctx = rep.get("context") or {}
    if ctx.get("source", "preempt_count") != "preempt_count":
        out.append(f'<p class="meta">lock context: {_e(ctx.get("how") or ctx.get("source"))}</p>')
    return "\n".join(out)


def _latency(rep) -> str:
    rows = rep["latency"]
    if not rows:
        return "<p>No hook or callback invocations.</p>"
    span = T.hist_span(rows)
    hist_hdr = _Raw(f"log2 histogram<br><small>{_e(T.dur(1 << (span[0] - 1)) if span and span[0] else '0 ns')} … "
                    f"{_e(T.dur(1 << span[1]) if span else '')}</small>")
    headers = ["callback", "event", "count", "rate/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", hist_hdr]
    body, prev = [], None
    for r in rows:
        if r["hook"] != prev:
            body.append(f'<tr class="hookrow"><td class="l" colspan="{len(headers)}"><b>{_e(r["hook"])}</b></td></tr>')
            prev = r["hook"]
        cells = [T._cb(r), r["event"] or "-", T.num(r["count"]), T.num(r.get("rate_per_s")), T.us(r["p50_ns"]),
                 T.us(r["p90_ns"]), T.us(r["p99_ns"]), T.us(r.get("p999_ns")), T.us(r["max_ns"]),
                 _spark(T.hist_spark(r.get("hist_log2"), span))]
        body.append("<tr>" + "".join(f'<td class="{"l" if i in (0, 1, 9) else ""}">'
                                     f'{c if isinstance(c, _Raw) else _e(c)}</td>' for i, c in enumerate(cells))
                    + "</tr>")
    h = "".join(f'<th class="{"l" if i in (0, 1, 9) else ""}">{x if isinstance(x, _Raw) else _e(x)}</th>'
                for i, x in enumerate(headers))
    return f'<div class="scroll"><table><thead><tr>{h}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _timeline(rep) -> str:
    tl = rep.get("timeline")
    if not tl or not tl["series"]:
        why = (f"no call took {T.fmt_duration(rep['min_latency_ns'])} or more (--min-latency)."
               if rep.get("min_latency_ns") else
               "--aggregate recordings keep only histograms." if rep["aggregate"] else "no hook invocations.")
        return f"<p>Not available: {_e(why)}</p>"
    rows = []
    for s in tl["series"]:
        n = sum(s["count"])
        p99 = [v for v in s["p99_ns"] if v is not None]
        rows.append([s["hook"], T.num(n), T.num(n / T.rate_span_s(rep, tl)), T.num(max(s["rate_per_s"])),
                     _spark(T.spark(s["rate_per_s"])), T.us(max(p99)) if p99 else "-", _spark(T.spark(s["p99_ns"]))])
    return (f"<p>{tl['buckets']} buckets of {tl['bucket_s']:g} s.</p>"
            + _table(["hook", "invocations", "rate/s", "peak/s", "rate", "p99 peak µs", "p99"], rows,
                     left={0, 4, 6}))


def _ranges(rep) -> str:
    rows = [[r["hook"], r["callback"] or "(hook)", T.num(r["count"]), T.num(r["range"]["non_blockable"]),
             T.num(r["range"]["failed"]),
             "-" if r["range"]["pages_mean"] is None else f"{r['range']['pages_mean']:,.1f}",
             T.num(r["range"]["pages_max"])] for r in T.range_rows(rep)]
    if not rows:
        return "<p>Not available (no range hook invocations, or an --aggregate recording).</p>"
    return _table(["hook", "callback", "calls", "non-blockable", "failed", "pages mean", "pages max"], rows,
                  left={0, 1})


def _processes(rep) -> str:
    out = []
    if rep.get("processes"):
        out.append("<h3>Top processes</h3>" + _table(
            ["pid", "comm", "hook invocations", "share", "total time", "max"],
            [[p["pid"], p["comm"] or "?", T.num(p["count"]), T.pct(p["share"]), T.dur(p["total_ns"]),
              T.dur(p["max_ns"])] for p in rep["processes"]], left={1}))
    if rep.get("mms"):
        out.append("<h3>Top mms</h3>" + _table(
            ["mm", "hook invocations", "share", "total time", "max", "processes"],
            [[m["mm"], T.num(m["count"]), T.pct(m["share"]), T.dur(m["total_ns"]), T.dur(m["max_ns"]),
              ", ".join(m["comms"][:4]) + f" (pids {', '.join(map(str, m['pids'][:6]))})"] for m in rep["mms"]],
            left={0, 5}))
    return "\n".join(out) or "<p>Not available.</p>"


def _secondary(rep) -> str:
    s = rep.get("secondary_tlb")
    if not s:
        return "<p>No invocations of the secondary-TLB hook.</p>"
    return (f"<p>{T.num(s['count'])} invocations of {_e(', '.join(s['hooks']))}.</p>"
            + _table(["caller class", "invocations", "share", "total time"],
                     [[c["caller_class"], T.num(c["count"]), T.pct(c["share"]), T.dur(c["total_ns"])]
                      for c in s["classes"]], left={0})
            + _table(["top caller", "class", "invocations", "share"],
                     [[c["caller"] or "(no stack)", c["caller_class"] or "unknown", T.num(c["count"]), T.pct(c["share"])]
                      for c in s["callers"]], left={0, 1}))


def _via(rep) -> str:
    rows = [r for r in rep.get("via") or [] if r["via"] != r["hook"]]
    if not rows:
        return ""
    return ("<h3>Callbacks called from another entry point than their hook</h3>"
            + _table(["hook", "callback", "made by", "calls", "share of its calls"],
                     [[r["hook"], r["callback"], r["via"] or "(no traced hook)", T.num(r["count"]), T.pct(r["share"])]
                      for r in rows], left={0, 1, 2}))


def _violations(rep) -> str:
    v = rep["violations"]
    if not v:
        return "<p>None.</p>"
    rt = (rep.get("context") or {}).get("source") == "preempt_rt"
    rows = []
    for x in v:
        ac = x.get("atomic_count", x["count"] if x["atomic"] else 0)
        rows.append([x["rule"], x["hook"], x["callback"] or "(hook)", x["sleeper"] or "?",
                     f"{ac} of {x['count']}", *([f"{x.get('rt_lock_count', 0)} of {x['count']}"] if rt else []),
                     T.num(x["count"]), T.num(x.get("first_s"), 3),
                     T.num(x.get("last_s"), 3), ", ".join(x.get("comms", [])[:3])
                     + f" (pids {', '.join(map(str, x['pids'][:6]))})"])
    stacks = "".join(f"<details><summary>Example stack {i + 1}: {_e(x['rule'])} in "
                     f"<code>{_e(x['callback'] or x['hook'])}</code> → <code>{_e(x['sleeper'])}</code></summary>"
                     f"<pre>{_e(chr(10).join(x['stack']))}</pre></details>" for i, x in enumerate(v))
    rt_n = sum(x.get("rt_lock_count", 0) for x in v)
    return (f"<p>{sum(x['count'] for x in v)} callback invocations broke a sleeping rule"
            + (f" ({rt_n} under a PREEMPT_RT spinlock)" if rt else "") + ".</p>"
            + _table(["rule", "hook", "callback", "sleeper", "atomic", *(["rt lock"] if rt else []), "count",
                      "first (s)", "last (s)", "processes"],
                     rows, left={0, 1, 2, 3, 4, 9 if rt else 8}) + stacks)


def _coverage(rep) -> str:
    cov = rep["coverage"]
    d = rep.get("drops") or {}
    out = [f"<p>{_e(rep['dropped'])} records dropped"
           + (": " + _e(", ".join(f"{k} {v}" for k, v in d.items() if k != "total" and v)) if any(
               v for k, v in d.items() if k != "total") else "") + ".</p>"]
    out.append(f"<p>{len(cov['attached'])} probes attached, {len(cov['skipped'])} skipped.</p>")
    sym = T.hook_symbols_line(cov)
    if sym:
        out.append(f"<p>{_e(sym[0].upper() + sym[1:])}.</p>")
    if cov.get("by_kind"):
        out.append(_table(["probe kind", "attached", "skipped"],
                          [[k, v["attached"], v["skipped"]] for k, v in sorted(cov["by_kind"].items())], left={0}))
    if cov["skipped"]:
        out.append(_table(["skipped probe", "why"], [[s["symbol"], s["why"]] for s in cov["skipped"]], left={0, 1}))
    return "\n".join(out)


# ---- comparison ---------------------------------------------------------------------------

def _judged(text: str, verdict: str | None) -> _Raw:
    """A ratio, red where the latency or violation got worse, green where
    better; counts and rates are never judged, so never coloured."""
    cls = f' class="{verdict}"' if verdict in ("worse", "better") else ""
    return _Raw(f"<span{cls}>{_e(text)}</span>")


def _cmp_table(keys: list[str], groups: list[tuple[str, list[str]]], rows: list) -> str:
    """A comparison table: key columns (names, which wrap), then groups of
    number columns under one heading (p50: before, after, ratio). ``rows``
    holds lists of cells, or a str: a row of its own across the table (a hook)."""
    n = len(keys) + sum(len(sub) for _g, sub in groups)
    top = "".join(f'<th class="l name" rowspan="2">{_e(k)}</th>' for k in keys) + "".join(
        f'<th colspan="{len(sub)}" class="grp">{_e(g)}</th>' for g, sub in groups)
    sub = "".join(f"<th>{_e(x)}</th>" for _g, xs in groups for x in xs)
    body = []
    for r in rows:
        if isinstance(r, str):
            body.append(f'<tr class="hookrow"><td class="l" colspan="{n}"><b>{_e(r)}</b></td></tr>')
            continue
        body.append("<tr>" + "".join(
            f'<td class="{"l name" if i < len(keys) else ""}">{c if isinstance(c, _Raw) else _e(c)}</td>'
            for i, c in enumerate(r)) + "</tr>")
    return (f'<div class="scroll"><table class="cmp"><thead><tr>{top}</tr><tr>{sub}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


BA = ["before", "after"]


def _cmp_header(rep) -> str:
    """The two recordings, how they are compared, the warnings and the changes."""
    c = rep["compare"]
    out = ["<h1>mmntrace comparison: before → after</h1>"]
    for name, path, r in (("before", c["a"], rep), ("after", c["b"], c["report_b"])):
        out.append(f'<p class="meta">{name}: <code>{_e(path)}</code><br><span class="sub">{_e(C.side_line(r))}</span></p>')
    out.append(f'<p class="meta">{_e(C.HOW)}</p>')
    if c["warnings"]:
        out.append('<div class="warnbox"><p class="warn">The recordings differ in more than the workload:</p><ul>'
                   + "".join(f"<li>{_e(w['text'])}</li>" for w in c["warnings"]) + "</ul></div>")
    out.append(f'<p class="changes">{_e(C.changes_line(c))}</p>')
    return "\n".join(out)


def _cmp_totals(c) -> str:
    """Totals: counts and rates, never coloured."""
    rows = [[C.TOTAL_NAMES.get(r["metric"], r["metric"]), T.num(r["a_count"]), T.num(r["b_count"]),
             T.num(r["a_rate_per_s"]), T.num(r["b_rate_per_s"]), C.ratio_text(r["rate_ratio"], r["status"])]
            for r in c["totals"]]
    return _cmp_table([""], [("count", BA), ("per second", BA + ["ratio"])], rows)


def _by_hook(rows, cells_of, keys_of) -> list:
    """Rows under a spanning row per hook (its stable name)."""
    out, prev = [], None
    for r in rows:
        h = C._hook(r)
        if h != prev:
            out.append(h)
            prev = h
        out.append(keys_of(r) + cells_of(r))
    return out


def _cmp_rates(c) -> str:
    """Invocations per hook and callback: counts and rates, never coloured."""
    def cells(r):
        a, b = r["a_count"] > 0, r["b_count"] > 0
        return [C.side(r["a_count"], a), C.side(r["b_count"], b), C.side(r["a_rate_per_s"], a),
                C.side(r["b_rate_per_s"], b), C.ratio_text(r["rate_ratio"], r["status"])]
    return _cmp_table(["callback"], [("invocations", BA), ("per second", BA + ["ratio"])],
                      _by_hook(c["rates"], cells, lambda r: [r["callback"] or "(hook)"]))


def _cmp_latency(c) -> str:
    """p50, p99, max before and after, the ratio coloured where judged."""
    def cells(r):
        out = []
        for f in ("p50_ns", "p99_ns", "max_ns"):
            out += [T.us((r["a"] or {}).get(f)), T.us((r["b"] or {}).get(f)),
                    _judged(C.ratio_text(r["ratio"][f], r["status"]), r["judged"][f])]
        return out
    prev = [None]

    def keys(r):
        # the callback where it changes, as the text's tree has it: its events under it
        cb = r["callback"] or "(hook)"
        same, prev[0] = prev[0] == (C._hook(r), cb), (C._hook(r), cb)
        return ["" if same else cb, r["event"] or "-"]
    return _cmp_table(["callback", "event"], [(f"{m} (µs)", BA + ["ratio"]) for m in ("p50", "p99", "max")],
                      _by_hook(c["latency"], cells, keys))


def _cmp_violations(c) -> str:
    """Violations: counts and rates, the ratio coloured where judged; new ones' stacks."""
    v = c["violations"]
    if not v:
        return "<p>None before or after.</p>"
    rows = [[r["rule"], C._hook(r), r["callback"] or "(hook)", r["sleeper"] or "?", "yes" if r["atomic"] else "no",
             T.num(r["a_count"]), T.num(r["b_count"]), C.side(r["a_rate_per_s"], r["a_count"] > 0),
             C.side(r["b_rate_per_s"], r["b_count"] > 0),
             _judged(C.ratio_text(r["rate_ratio"], r["status"]), r["judged"])] for r in v]
    stacks = "".join(
        f"<details><summary>New after: {_e(r['rule'])} in <code>{_e(r['callback'] or r['hook'])}</code>, "
        f"example stack</summary><pre>{_e(chr(10).join(r.get('stack') or []))}</pre></details>"
        for r in v if r["status"] == "new")
    return _cmp_table(["rule", "hook", "callback", "sleeper", "atomic"],
                      [("calls", BA), ("per second", BA + ["ratio"])], rows) + stacks


def _cmp_secondary(c) -> str:
    """Caller classes of the secondary-TLB hook: shares and rates."""
    rows = [[r["caller_class"], C.side(r["a_share"], r["a_share"] is not None, T.pct),
             C.side(r["b_share"], r["b_share"] is not None, T.pct), C.side(r["a_rate_per_s"], r["a_count"] > 0),
             C.side(r["b_rate_per_s"], r["b_count"] > 0), C.ratio_text(r["rate_ratio"], r["status"])]
            for r in c["secondary_tlb"]]
    return _cmp_table(["caller class"], [("share", BA), ("per second", BA + ["ratio"])], rows)


def _cmp_processes(c) -> str:
    """Top processes by comm: counts and rates."""
    rows = [[r["comm"] or "?", C.side(r["a_count"], bool(r["a_count"])), C.side(r["b_count"], bool(r["b_count"])),
             C.side(r["a_rate_per_s"], bool(r["a_count"])), C.side(r["b_rate_per_s"], bool(r["b_count"])),
             C.ratio_text(r["rate_ratio"])] for r in c["processes"]]      # top N each: missing is not absent
    return _cmp_table(["comm"], [("hook invocations", BA), ("per second", BA + ["ratio"])], rows)


def render_compare(rep: dict, sa: Summary | None, sb: Summary | None) -> str:
    """The comparison alone, as the text has it: header, warnings, changes,
    then the tables; the two full reports are a command away each."""
    c = rep["compare"]
    cdf = ""
    if sa is not None and sb is not None:
        from .plot import fig_cdf
        cdf = _img(fig_cdf(sa, sb, labels=("before", "after")), "latency CDF, before solid, after dashed")
    sec = [("Totals", _cmp_totals(c)),
           ("Invocations per hook and callback", _cmp_rates(c) if c["rates"] else "<p>None.</p>"),
           ("Latency", (_cmp_latency(c) if c["latency"] else "<p>No hook or callback invocations.</p>") + cdf),
           ("Sleeping-rule violations", _cmp_violations(c))]
    if c["secondary_tlb"]:
        sec.append(("Callers of the secondary-TLB hook", _cmp_secondary(c)))
    if c["processes"]:
        sec.append(("Top processes (joined by comm; - : not in that recording's top)", _cmp_processes(c)))
    body = "\n".join(f"<h2>{_e(t)}</h2>\n{h}" for t, h in sec)
    note = "<br>".join(_e(x) for x in C.closing(c))
    return _page(f"mmntrace comparison: {c['a']} → {c['b']}", rep,
                 f'{_cmp_header(rep)}\n{body}\n<p class="meta">{note}</p>')


def _page(title: str, rep: dict, body: str) -> str:
    """The whole self-contained file around ``body``."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" '
            f'content="mmntrace report schema {rep["schema_version"]}.{rep.get("schema_minor", 0)}">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def render(rep: dict, summary: Summary | None = None, summary_b: Summary | None = None) -> str:
    """The report as one HTML file; with a ``compare`` object, the comparison alone."""
    if rep.get("compare"):
        return render_compare(rep, summary, summary_b)
    from . import plot
    figs = plot.figures(summary) if summary is not None else {}
    only = f" (invocations{T.slow_only(rep)} only)" if rep.get("min_latency_ns") else ""
    sec = [
        ("Latency by hook × callback × event", _latency(rep) + _img(figs.get("latency-cdf"), "latency CDF")),
        ("Ranges: blockable, failures, size (4 KiB pages)", _ranges(rep)),
        ("Over time" + only, _timeline(rep) + _img(figs.get("rate-timeline"), "rate and p99 over time")
         + _img(figs.get("latency-heatmap"), "latency heatmap")),
        ("Processes and mms" + only, _processes(rep)),
        ("Callers of the secondary-TLB hook" + only, _secondary(rep) + _via(rep)),
        ("Sleeping-rule violations", _violations(rep) + (_img(figs.get("violations-timeline"), "violation timeline")
                                                         if rep["violations"] else "")),
        ("Drops and coverage", _coverage(rep)),
    ]
    body = "\n".join(f"<h2>{_e(t)}</h2>\n{h}" for t, h in sec)
    return _page(f"mmntrace report: {rep.get('recording') or ''}", rep, f"{_header(rep)}\n{body}")
