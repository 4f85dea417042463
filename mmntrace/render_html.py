"""One self-contained HTML file: the report's tables plus its figures as embedded PNG.

No scripts, no external style sheets, fonts or images: the file can be mailed
or attached to a bug as is.
"""

from __future__ import annotations

import base64
from html import escape

from . import render_text as T
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
.up { color: #b00020; } .down { color: #0a7d32; }
details { margin: 4px 0 10px; }
.scroll { overflow-x: auto; max-width: 100%; }
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


def _ratio(r) -> _Raw:
    if r is None:
        return _Raw("-")
    cls = "up" if r > 1.1 else "down" if r < 0.9 else ""
    return _Raw(f'<span class="{cls}">{r:.2f}x</span>')


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
        return "<p>Not available: " + ("--aggregate recordings keep only histograms." if rep["aggregate"]
                                       else "no hook invocations.") + "</p>"
    rows = []
    for s in tl["series"]:
        n = sum(s["count"])
        p99 = [v for v in s["p99_ns"] if v is not None]
        rows.append([s["hook"], T.num(n), T.num(n / (tl["buckets"] * tl["bucket_s"])), T.num(max(s["rate_per_s"])),
                     _spark(T.spark(s["rate_per_s"])), T.us(max(p99)) if p99 else "-", _spark(T.spark(s["p99_ns"]))])
    return (f"<p>{tl['buckets']} buckets of {tl['bucket_s']:g} s.</p>"
            + _table(["hook", "invocations", "mean/s", "peak/s", "rate", "p99 peak µs", "p99"], rows,
                     left={0, 4, 6}))


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


def _violations(rep) -> str:
    v = rep["violations"]
    if not v:
        return "<p>None.</p>"
    rows = []
    for x in v:
        rows.append([x["rule"], x["hook"], x["callback"] or "(hook)", x["sleeper"] or "?",
                     "yes" if x["atomic"] else "no", T.num(x["count"]), T.num(x.get("first_s"), 3),
                     T.num(x.get("last_s"), 3), ", ".join(x.get("comms", [])[:3])
                     + f" (pids {', '.join(map(str, x['pids'][:6]))})"])
    stacks = "".join(f"<details><summary>Example stack {i + 1}: {_e(x['rule'])} in "
                     f"<code>{_e(x['callback'] or x['hook'])}</code> → <code>{_e(x['sleeper'])}</code></summary>"
                     f"<pre>{_e(chr(10).join(x['stack']))}</pre></details>" for i, x in enumerate(v))
    return (f"<p>{sum(x['count'] for x in v)} callback invocations broke a sleeping rule.</p>"
            + _table(["rule", "hook", "callback", "sleeper", "atomic", "count", "first (s)", "last (s)", "processes"],
                     rows, left={0, 1, 2, 3, 4, 8}) + stacks)


def _coverage(rep) -> str:
    cov = rep["coverage"]
    d = rep.get("drops") or {}
    out = [f"<p>{_e(rep['dropped'])} records dropped"
           + (": " + _e(", ".join(f"{k} {v}" for k, v in d.items() if k != "total" and v)) if any(
               v for k, v in d.items() if k != "total") else "") + ".</p>"]
    out.append(f"<p>{len(cov['attached'])} probes attached, {len(cov['skipped'])} skipped.</p>")
    if cov.get("by_kind"):
        out.append(_table(["probe kind", "attached", "skipped"],
                          [[k, v["attached"], v["skipped"]] for k, v in sorted(cov["by_kind"].items())], left={0}))
    if cov["skipped"]:
        out.append(_table(["skipped probe", "why"], [[s["symbol"], s["why"]] for s in cov["skipped"]], left={0, 1}))
    return "\n".join(out)


def _compare(rep, sa, sb) -> str:
    c = rep["compare"]
    out = [f"<p>A = <code>{_e(c['a'])}</code><br>B = <code>{_e(c['b'])}</code></p>"]
    out.append(_table(["", "A", "B", "B/A"], [[r["metric"], T.num(r["a"]), T.num(r["b"]), _ratio(r["ratio"])]
                                            for r in c["summary"]], left={0}))
    rows, prev = [], None
    for r in c["latency"]:
        a, b, q = r["a"] or {}, r["b"] or {}, r["ratio"]
        rows.append(("hookrow" if r["hook"] != prev else "", [
            r["hook"] if r["hook"] != prev else "", r["callback"] or "(hook)", r["event"] or "-",
            T.num(a.get("count")), T.num(b.get("count")), _ratio(q["count"]),
            T.us(a.get("p50_ns")), T.us(b.get("p50_ns")), _ratio(q["p50_ns"]),
            T.us(a.get("p99_ns")), T.us(b.get("p99_ns")), _ratio(q["p99_ns"]),
            T.us(a.get("max_ns")), T.us(b.get("max_ns")), _ratio(q["max_ns"])]))
        prev = r["hook"]
    out.append("<h3>Latency (µs)</h3>" + _table(
        ["hook", "callback", "event", "count A", "count B", "B/A", "p50 A", "p50 B", "B/A", "p99 A", "p99 B", "B/A",
         "max A", "max B", "B/A"], rows, left={0, 1, 2}))
    if sa is not None and sb is not None:
        from .plot import fig_cdf
        out.append(_img(fig_cdf(sa, sb), "latency CDF, A solid, B dashed"))
    if c["secondary_tlb"]:
        out.append("<h3>Secondary-TLB callers</h3>" + _table(
            ["caller class", "A", "share A", "B", "share B", "B/A"],
            [[r["caller_class"], T.num(r["a_count"]), T.pct(r["a_share"]), T.num(r["b_count"]), T.pct(r["b_share"]),
              _ratio(r["ratio"])] for r in c["secondary_tlb"]], left={0}))
    if c["processes"]:
        out.append("<h3>Processes (by comm)</h3>" + _table(
            ["comm", "A", "B", "B/A"], [[r["comm"] or "?", T.num(r["a_count"]), T.num(r["b_count"]), _ratio(r["ratio"])]
                                        for r in c["processes"]], left={0}))
    out.append("<h3>Rule violations</h3>" + (_table(
        ["rule", "hook", "callback", "sleeper", "atomic", "A", "B", "B/A"],
        [[r["rule"], r["hook"], r["callback"] or "(hook)", r["sleeper"] or "?", "yes" if r["atomic"] else "no",
          T.num(r["a_count"]), T.num(r["b_count"]), _ratio(r["ratio"])] for r in c["violations"]],
        left={0, 1, 2, 3, 4}) if c["violations"] else "<p>None in A or B.</p>"))
    return "\n".join(out)


def render(rep: dict, summary: Summary | None = None, summary_b: Summary | None = None) -> str:
    from . import plot
    figs = plot.figures(summary) if summary is not None else {}
    sec = [
        ("Latency by hook × callback × event", _latency(rep) + _img(figs.get("latency-cdf"), "latency CDF")),
        ("Over time", _timeline(rep) + _img(figs.get("rate-timeline"), "rate and p99 over time")
         + _img(figs.get("latency-heatmap"), "latency heatmap")),
        ("Processes and mms", _processes(rep)),
        ("Callers of the secondary-TLB hook", _secondary(rep)),
        ("Sleeping-rule violations", _violations(rep) + (_img(figs.get("violations-timeline"), "violation timeline")
                                                         if rep["violations"] else "")),
        ("Drops and coverage", _coverage(rep)),
    ]
    if rep.get("compare"):
        sec.append(("Comparison (B/A)", _compare(rep, summary, summary_b)))
    body = "\n".join(f"<h2>{_e(t)}</h2>\n{h}" for t, h in sec)
    title = f"mmntrace report: {rep.get('recording') or ''}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="generator" content="mmntrace report schema {rep["schema_version"]}.{rep.get("schema_minor", 0)}">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n{_header(rep)}\n{body}\n"
            f"</body></html>\n")
