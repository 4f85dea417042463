"""Terminal rendering of the JSON report dict (rich tables, plain text when not a terminal).

Each section describes its tables as :class:`mmntrace.textfit.Grid` s, which
:mod:`mmntrace.textfit` lays out for the width: numbers are never cut, names
wrap, and columns stack or split when the width is short."""

from __future__ import annotations

import io
import textwrap

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .aggregate import bucket_lo
from .textfit import Col, Grid, Line, fits, shrunk, tables, to_table
from .units import fmt_duration

BARS = " ▁▂▃▄▅▆▇█"


def us(ns) -> str:
    """ns -> µs with one decimal ('-' for None)."""
    return "-" if ns is None else f"{ns / 1000:.1f}"


def dur(ns) -> str:
    """A duration with a readable unit: the formatter the plots and notebooks use."""
    return fmt_duration(ns)


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


def _cb(r) -> str:
    return r["callback"] or "(hook)"


def _kinds(rep) -> str:
    """" (hooks by kprobe, ...)": the kinds of probe that are not the backend's."""
    pk = rep.get("probe_kinds") if isinstance(rep.get("probe_kinds"), dict) else {}
    names = {"hooks": "hooks", "callbacks": "driver callbacks", "might_sleep": "might-sleep functions"}
    other = [f"{names[k]} by {v}" for k, v in pk.items() if k in names and v and v != rep.get("backend")]
    return f" ({', '.join(other)})" if other else ""


def header(rep) -> list[str]:
    k = rep["kernel"]
    ml = rep.get("min_latency_ns")
    mode = (f", calls of at least {fmt_duration(ml)} recorded (--min-latency)" if ml else
            ", aggregated in kernel (--aggregate)" if rep["aggregate"] else "")
    lines = [f"mmntrace report: {rep.get('recording') or ''}".rstrip(),
             f"kernel {k['release']} ({k['arch']}), backend {rep['backend']}{_kinds(rep)}{mode}"]
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
        lines.append(f"quantiles: {q}" + (" for every call" if ml else ""))
    if ml:
        lines.append(slow_line(rep))
    return lines


def slow_line(rep) -> str:
    """What a --min-latency recording's per-call sections hold."""
    return (f"slow calls: {num(rep.get('slow_calls') or 0)} hook and callback calls took at least "
            f"{fmt_duration(rep['min_latency_ns'])}; over time, processes, mms and callers show those only, "
            "the latency table every call")


# ---- latency -----------------------------------------------------------------------------

LAT_TITLE = "Latency (µs) by hook x callback x event"
#: the key of the narrow layouts: hook, its callbacks indented under it, their events under those
TREE_KEY = Col("hook / callback / event", "name", min_width=24)


def _lat_cols() -> list[Col]:
    return [Col(n) for n in ("count", "rate/s", "p50", "p90", "p99", "p99.9", "max")]


def _lat_cells(r) -> list[str]:
    return [num(r["count"]), num(r.get("rate_per_s")), us(r["p50_ns"]), us(r["p90_ns"]), us(r["p99_ns"]),
            us(r.get("p999_ns")), us(r["max_ns"])]


def tree_keys(rows) -> list[tuple]:
    """For each latency row, the lines of its hook / callback / event key:
    the hook only where it changes, the callback only where it changes, the
    event (when there is one) last, where the row's numbers go."""
    out, prev = [], (object(), object())
    for r in rows:
        hook, cb = r["hook"] or "?", _cb(r)
        lines = []
        if hook != prev[0]:
            lines.append(Line(hook))
        if (hook, cb) != prev:
            lines.append(Line(cb, 2))
        if r["event"] or not lines:
            lines.append(Line(r["event"] or "-", 4))
        out.append(tuple(lines))
        prev = (hook, cb)
    return out


def latency_tables(rep, width: int) -> list[Table]:
    """One row per hook x callback x event. Wide: hook, callback and event
    columns. Narrower: the three as a tree in one column, the log2 histograms
    beside the numbers or, narrower still, in a table of their own."""
    rows = rep["latency"]
    span = hist_span(rows)
    rng = f"{dur(bucket_lo(span[0]))}..{dur(1 << span[1])}" if span else ""
    sparks = [hist_spark(r.get("hist_log2"), span) for r in rows]
    hist = [Col(f"log2 histogram {rng}", "fixed")] if span else []
    wide = Grid(LAT_TITLE, [Col("hook", "name"), Col("callback", "name"), Col("event", "name")] + _lat_cols() + hist)
    prev = None
    for r, sp in zip(rows, sparks):
        wide.add(r["hook"] if r["hook"] != prev else "", _cb(r), r["event"] or "-", *_lat_cells(r), *([sp] * bool(span)))
        prev = r["hook"]
    lay = fits(wide, width)
    if lay:
        return [to_table(lay)]
    keys = tree_keys(rows)
    title = LAT_TITLE + (f"; log2 histograms {rng}" if span else "")
    tree = Grid(title, [TREE_KEY] + _lat_cols() + [Col("log2 histogram", "fixed")] * bool(span), valign="bottom")
    for k, r, sp in zip(keys, rows, sparks):
        tree.add(k, *_lat_cells(r), *([sp] * bool(span)))
    lay = shrunk(tree, width)
    if lay or not span:
        return [to_table(lay)] if lay else tables(tree, width)
    nums = Grid(LAT_TITLE, [TREE_KEY] + _lat_cols(), [row[:-1] for row in tree.rows], valign="bottom")
    hists = Grid(f"Latency histograms: log2 buckets {rng}", [TREE_KEY, Col("log2 histogram", "fixed")],
                 [[k, sp] for k, sp in zip(keys, sparks)], valign="bottom")
    return tables(nums, width) + tables(hists, width)


# ---- ranges ------------------------------------------------------------------------------

RANGE_TITLE = "Ranges of the range hooks: blockable or not, failures, size (4 KiB pages)"


def range_rows(rep) -> list[dict]:
    """The latency rows' ``range`` facts summed over events: one row per hook x callback."""
    out: dict = {}
    for r in rep["latency"]:
        x = r.get("range")
        if not x:
            continue
        o = out.setdefault((r["hook"], r["callback"]), {"hook": r["hook"], "callback": r["callback"], "event": None,
                                                        "count": 0, "range": {"non_blockable": 0, "failed": 0, "sized": 0,
                                                                              "pages": 0.0, "pages_max": 0}})
        o["count"] += r["count"]
        o["range"]["non_blockable"] += x["non_blockable"]
        o["range"]["failed"] += x["failed"]
        o["range"]["pages"] += (x["pages_mean"] or 0) * x["sized"]
        o["range"]["sized"] += x["sized"]
        o["range"]["pages_max"] = max(o["range"]["pages_max"], x["pages_max"])
    for o in out.values():
        sized = o["range"]["sized"]
        o["range"]["pages_mean"] = o["range"].pop("pages") / sized if sized else None
    return list(out.values())


def range_tables(rep, width: int) -> list[Table]:
    """What the sleeping rules turn on, per row of a range hook: how many
    calls were not blockable (no sleeping allowed), how many failed (a
    start that returned -EAGAIN, which a non-blockable range permits),
    and the ranges' size. Absent for --aggregate recordings (no per-call data)."""
    rows = range_rows(rep)
    if not rows:
        return []
    g = Grid(RANGE_TITLE, [Col("hook / callback", "name", min_width=24), Col("calls"), Col("non-blockable", short="non-block"),
                           Col("failed"), Col("pages mean", short="mean pg"), Col("pages max", short="max pg")],
             valign="bottom")
    for k, r in zip(tree_keys(rows), rows):
        x = r["range"]
        g.add(k, num(r["count"]), f"{num(x['non_blockable'])}", num(x["failed"]),
              "-" if x["pages_mean"] is None else f"{x['pages_mean']:,.1f}", num(x["pages_max"]))
    lay = shrunk(g, width)
    return [to_table(lay)] if lay else tables(g, width)


# ---- over time ---------------------------------------------------------------------------

#: a sparkline is not merged below this many bars in the one-table layout
MIN_BARS = 20


def merge(values, k: int, how: str) -> list:
    """Every ``k`` neighbouring values as one: their mean, max or sum (None
    where all are None), so that a sparkline fits fewer columns."""
    fn = {"mean": lambda v: sum(v) / len(v), "max": max, "sum": sum}[how]
    out = []
    for i in range(0, len(values), k):
        vals = [v for v in values[i:i + k] if v is not None]
        out.append(fn(vals) if vals else None)
    return out


def slow_only(rep) -> str:
    """What the per-call sections count in a --min-latency recording ('' else)."""
    ml = rep.get("min_latency_ns")
    return f" of at least {fmt_duration(ml)}" if ml else ""


def _tl_title(tl, k: int) -> str:
    t = f"Over time: {tl['buckets']} buckets of {tl['bucket_s']:g} s"
    if tl.get("only"):
        t += f", invocations{tl['only']} only"
    return t + (f", drawn {k} to a bar ({tl['bucket_s'] * k:g} s)" if k > 1 else "")


def rate_span_s(rep, tl) -> float:
    """What the Over-time rate/s divides by: the report's own ``rate_s``
    (:func:`mmntrace.report.rate_seconds`), as the latency table's rate/s
    does; the buckets' span only where a report has none."""
    from .report import rate_seconds
    return rate_seconds(rep) or tl["buckets"] * tl["bucket_s"]


def _tl_numbers(tl, s) -> list[str]:
    n = sum(s["count"])
    p99 = [v for v in s["p99_ns"] if v is not None]
    return [num(n), num(n / tl["rate_span_s"]), num(max(s["rate_per_s"])),
            us(max(p99)) if p99 else "-"]


def _tl_grid(tl, k: int) -> Grid:
    """Hooks' numbers and both sparklines in one table, ``k`` buckets to a bar."""
    g = Grid(_tl_title(tl, k), [Col("hook", "name", min_width=14), Col("invocations", short="calls"), Col("rate/s"),
                                Col("peak/s"), Col("rate through the recording", "fixed", short="rate"),
                                Col("p99 peak (µs)", short="p99 peak"),
                                Col("p99 through the recording", "fixed", short="p99")])
    for s in tl["series"]:
        n, mean, peak, p99 = _tl_numbers(tl, s)
        g.add(s["hook"], n, mean, peak, spark(merge(s["rate_per_s"], k, "mean")), p99,
              spark(merge(s["p99_ns"], k, "max")))
    v = tl.get("violations") or []
    if any(v):
        g.add("violations", num(sum(v)), "", "", spark(merge(v, k, "sum")), "", "")
    return g


def _tl_split(tl, width: int) -> list[Table]:
    """Narrow: the numbers in one table, then the sparklines, rate above p99,
    under each hook, as many buckets to a bar as it takes to fit."""
    g = Grid(_tl_title(tl, 1), [Col("hook", "name", min_width=14), Col("invocations", short="calls"), Col("rate/s"),
                                Col("peak/s"), Col("p99 peak (µs)", short="p99 peak")])
    for s in tl["series"]:
        g.add(s["hook"], *_tl_numbers(tl, s))
    v = tl.get("violations") or []
    if any(v):
        g.add("violations", num(sum(v)), "", "", "")
    out = tables(g, width)
    for k in range(1, max(1, tl["buckets"]) + 1):
        sp = Grid(f"Rate and p99 latency through the recording, a bar per {tl['bucket_s'] * k:g} s",
                  [Col("hook", "name", min_width=14), Col("", "fixed"), Col("", "fixed")])
        for s in tl["series"]:
            sp.add(s["hook"], "rate\np99", spark(merge(s["rate_per_s"], k, "mean")) + "\n"
                   + spark(merge(s["p99_ns"], k, "max")))
        if any(v):
            sp.add("violations", "count", spark(merge(v, k, "sum")))
        lay = shrunk(sp, width)
        if lay:
            return out + [to_table(lay)]
    return out + tables(sp, width)


def timeline_tables(rep, width: int) -> list[Table] | None:
    """Per hook: invocations, rates and p99 peak with their sparklines; the
    sparklines merge neighbouring buckets, then hook names wrap, then the
    sparklines move to a table of their own, as the width shrinks."""
    tl = rep.get("timeline")
    if not tl or not tl["series"]:
        return None
    tl = dict(tl, rate_span_s=rate_span_s(rep, tl), only=slow_only(rep))
    ks = [k for k in range(1, tl["buckets"] + 1) if k == 1 or -(-tl["buckets"] // k) >= MIN_BARS]
    for wrap_names in (False, True):
        for k in ks:
            lay = shrunk(_tl_grid(tl, k), width, wrap_names=wrap_names)
            if lay:
                return [to_table(lay)]
    return _tl_split(tl, width)


# ---- processes, callers, violations ------------------------------------------------------

CALLS = dict(short="calls")


def process_tables(rep, width: int) -> list[Table]:
    out = []
    if rep.get("processes"):
        g = Grid(f"Top processes (hook invocations{slow_only(rep)})", [Col("pid"), Col("comm", "name"), Col("invocations", **CALLS),
                                                      Col("share"), Col("total time", short="total"), Col("max")])
        for p in rep["processes"]:
            g.add(str(p["pid"]), p["comm"] or "?", num(p["count"]), pct(p["share"]), dur(p["total_ns"]),
                  dur(p["max_ns"]))
        out += tables(g, width)
    if rep.get("mms"):
        g = Grid(f"Top mms (hook invocations{slow_only(rep)})", [Col("mm", "fixed"), Col("invocations", **CALLS), Col("share"),
                                                Col("total time", short="total"), Col("max"),
                                                Col("processes", "name", min_width=16, stack=True)])
        for m in rep["mms"]:
            g.add(m["mm"], num(m["count"]), pct(m["share"]), dur(m["total_ns"]), dur(m["max_ns"]),
                  ", ".join(m["comms"][:4]) + f" (pids {', '.join(map(str, m['pids'][:5]))})")
        out += tables(g, width)
    return out


def secondary_tables(rep, width: int) -> list[Table]:
    s = rep.get("secondary_tlb")
    if not s:
        return []
    g = Grid(f"Callers of the secondary-TLB hook: {num(s['count'])} invocations{slow_only(rep)}",
             [Col("caller class", "name"), Col("invocations", **CALLS), Col("share"), Col("total time", short="total")])
    for c in s["classes"]:
        g.add(c["caller_class"], num(c["count"]), pct(c["share"]), dur(c["total_ns"]))
    u = Grid("Top callers of the secondary-TLB hook", [Col("caller", "name", min_width=16), Col("class", "name"),
                                                       Col("invocations", **CALLS), Col("share")])
    for c in s["callers"]:
        u.add(c["caller"] or "(no stack)", c["caller_class"] or "unknown", num(c["count"]), pct(c["share"]))
    return tables(g, width) + tables(u, width)


def via_tables(rep, width: int) -> list[Table]:
    """The callback calls that another entry point than their own hook made:
    before 6.6 invalidate_range_end calls the secondary-TLB ops itself; an
    interval notifier's calls come from an inlined mn_itree_invalidate (no
    hook of ours). Nothing where every callback ran under its own hook."""
    rows = [r for r in rep.get("via") or [] if r["via"] != r["hook"]]
    if not rows:
        return []
    g = Grid("Callbacks called from another entry point than their hook",
             [Col("hook", "name"), Col("callback", "name", min_width=16), Col("made by", "name"),
              Col("calls", **CALLS), Col("share of its calls", short="share")])
    for r in rows:
        g.add(r["hook"], r["callback"], r["via"] or "(no traced hook)", num(r["count"]), pct(r["share"]))
    return tables(g, width)


def violation_section(rep, width: int) -> list:
    v = rep["violations"]
    if not v:
        return [Text("Rule violations: none")]
    rt = (rep.get("context") or {}).get("source") == "preempt_rt"
    g = Grid(f"Rule violations ({sum(x['count'] for x in v)} callback invocations)",
             [Col("rule", "name"), Col("hook", "name", min_width=20, stack=True),
              Col("callback", "name", min_width=20, stack=True), Col("sleeper", "name", stack=True), Col("atomic")]
             + ([Col("rt lock")] if rt else [])
             + [Col("count"), Col("first (s)", short="first s"), Col("last (s)", short="last s"),
                Col("processes", "name", min_width=20, stack=True)])
    for x in v:
        procs = ", ".join(f"{c}" for c in x.get("comms", [])[:3])
        procs += f" (pids {', '.join(map(str, x['pids'][:5]))}{'...' if len(x['pids']) > 5 else ''})"
        ac = x.get("atomic_count", x["count"] if x["atomic"] else 0)
        g.add(x["rule"], x["hook"], x["callback"] or "(hook)", x["sleeper"] or "?", f"{ac} of {x['count']}",
              *([f"{x.get('rt_lock_count', 0)} of {x['count']}"] if rt else []),
              num(x["count"]), num(x.get("first_s"), 3), num(x.get("last_s"), 3), procs)
    out: list = tables(g, width)
    for i, x in enumerate(v):
        where = (" in atomic context" if x["atomic"] else
                 " under a PREEMPT_RT spinlock" if x.get("rt_lock_count") else "")
        lines = [f"  example stack {i + 1}: {x['rule']} in {x['callback'] or x['hook']}{where}"]
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
            else "must-not-sleep calls watched: not counted "
                 + ("(--min-latency)" if rep.get("min_latency_ns") else "(--aggregate)"))
    if v["violation_invocations"]:
        head = (f"VERDICT: {num(v['violation_invocations'])} callback calls broke the sleeping rules "
                f"({v['violation_rules']} distinct rule/callback/sleeper, "
                f"{num(v['atomic_violation_invocations'])} in atomic context"
                + (f", {num(v['rt_lock_violation_invocations'])} under a PREEMPT_RT spinlock"
                   if v.get("context") == "preempt_rt" else "") + f"); {seen}")
    else:
        head = f"VERDICT: no callback call broke the sleeping rules; {seen}"
    if not v.get("might_sleep_watched", True):
        head += " (for sleeps; calls that may sleep were not watched: record --might-sleep)"
    if v.get("sleep_detect") == "count" and v["violation_invocations"]:
        head += ("; sleeps seen by the task's switch count, without what slept ('?': "
                 "record --sleep-detect switch names it)")
    gaps = [f"{num(v['dropped'])} records dropped", f"{v['skipped_probes']} probes skipped"]
    if v.get("untimed"):
        gaps.insert(1, f"of which {num(v['untimed'])} callback calls counted but not timed (made before their "
                       "probe was attached)")
    if not v.get("complete", True):
        gaps.append("recording cut short")
    out = [head, "  blind spots: " + ", ".join(gaps) + (" (details at the end)" if v["dropped"] or
                                                        v["skipped_probes"] else "")]
    if v.get("context", "preempt_count") != "preempt_count":    # said only where it is not the usual
        out.append("  lock context: " + ((rep.get("context") or {}).get("how") or v["context"]))
    return out


def hook_symbols_line(cov: dict) -> str | None:
    """The kernel symbols the hooks were traced at, where one is not
    __mmu_notifier_<hook> (the secondary-TLB hook's is the kernel's own name,
    renamed in 6.6); None where every one is."""
    odd = [f"{h} at {s}" for h, s in (cov.get("hook_symbols") or {}).items() if s != f"__mmu_notifier_{h}"]
    return f"kernel symbols: {', '.join(odd)} (the other hooks at __mmu_notifier_<hook>)" if odd else None


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
    sym = hook_symbols_line(cov)
    if sym:
        out.append(Text(f"  {sym}"))
    for s in skipped[:10]:
        out.append(Text(f"  skipped {s['symbol']}: {s['why']}"))
    for u in cov.get("untimed") or []:
        out.append(Text(f"  untimed {u['callback']}: {num(u['count'])} calls made before its probe was attached "
                        "(counted, not timed)"))
    if len(skipped) > 10:
        out.append(Text(f"  ... {len(skipped) - 10} more skipped (see --format json)"))
    chosen_out = cov.get("not_selected") or []
    if chosen_out:
        f = cov.get("filters") or {}
        how = " ".join(f"--{k[:-1]} {','.join(f[k])}" for k in ("modules", "callbacks") if f.get(k))
        out.append(Text(f"  not probed, as chosen ({how or 'record --module/--callback'}): "
                        + ", ".join(chosen_out)))
    return out


def para(line: str, width: int) -> str:
    """A line of prose wrapped at spaces to ``width``, its continuation lines
    indented two more than its own indent (so they read as one item)."""
    if len(line) <= width:
        return line
    lead = line[:len(line) - len(line.lstrip())]
    return "\n".join(textwrap.wrap(line.strip(), width, initial_indent=lead, subsequent_indent=lead + "  ",
                                    break_on_hyphens=False)) or line


#: the width when none is given (a file or a pipe): wide enough for every column of most reports
DEFAULT_WIDTH = 220


def render(rep: dict, *, width: int | None = None, color: bool = False) -> str:
    """The report as text for a terminal ``width`` columns wide (default
    :data:`DEFAULT_WIDTH`): tables adapt to it (fewer, stacked or split
    columns, wrapped names) and never cut a number."""
    width = width or DEFAULT_WIDTH
    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system="standard" if color else None,
                  force_terminal=color, highlight=False, emoji=False, markup=False, soft_wrap=False, legacy_windows=False)
    if rep.get("compare"):
        # a before/after wants the comparison, not before's whole report first
        from .render_compare import parts as compare_parts
        return _print(con, buf, compare_parts(rep, width), width)
    for line in header(rep):
        con.print(Text(para(line, width)))
    for line in verdict(rep):
        con.print(Text(para(line, width), style="bold" if line.startswith("VERDICT") else ""))
    con.print()
    parts: list = latency_tables(rep, width) if rep["latency"] else [Text("Latency: no hook or callback invocations")]
    parts += range_tables(rep, width)
    tl = timeline_tables(rep, width)
    if tl is not None:
        parts += tl
    elif rep.get("min_latency_ns"):
        parts.append(Text(f"Over time, processes, mms, callers: no call took {fmt_duration(rep['min_latency_ns'])} "
                          "or more (--min-latency)"))
    elif rep["aggregate"]:
        parts.append(Text("Over time, processes, mms, callers: not available (--aggregate keeps only histograms)"))
    parts += process_tables(rep, width)
    parts += secondary_tables(rep, width)
    parts += via_tables(rep, width)
    parts += violation_section(rep, width)
    parts += drops_coverage(rep)
    return _print(con, buf, parts, width)


def _print(con: Console, buf: io.StringIO, parts: list, width: int) -> str:
    """Texts (wrapped to the width) and tables, a blank line after each table."""
    for p in parts:
        if isinstance(p, Text):
            p = Text("\n".join(para(line, width) for line in p.plain.split("\n")), style=p.style)
        con.print(p)
        if isinstance(p, Table):
            con.print()
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
