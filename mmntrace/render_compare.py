"""The text of `mmntrace report BEFORE --compare AFTER`: the comparison alone.

It reads top down as a before/after should: which two recordings, what
differs between them besides the workload (warnings), how much changed, then
the tables (totals and rates per second, latency, violations, secondary-TLB
callers, processes), each cell ``before → after`` with the after/before
ratio beside it. The two full reports are one command away each, which the
last lines give, rather than printed below (they would bury the comparison).

Tables are :class:`mmntrace.textfit.Grid` s like the report's, so the same
guarantees hold: no line wider than the width, no number cut.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from .hooks import stable as stable_hook_name
from .report import mode_text
from .render_text import TREE_KEY, num, para, pct, tree_keys, us
from .textfit import Col, Grid, fits, tables, to_table

ARROW = "→"


def ratio_text(r, status: str | None = None) -> str:
    """An after/before ratio as people read it: ``new`` (only after), ``gone``
    (only before), ``=`` (within 0.5%), ``<0.01x``, ``0.52x``, ``1.8x``,
    ``1.04x``, ``12x``; ``-`` where there is nothing to divide. Never ``0.00x``."""
    if status in ("new", "gone"):
        return status
    if r is None:
        return "-"
    if abs(r - 1) < 0.005:
        return "="
    if r < 0.01:
        return "<0.01x"
    if r < 9.995:
        return f"{r:.2f}".rstrip("0").rstrip(".") + "x"
    return f"{r:,.0f}x"


def arrows(pairs: list[tuple[str, str]]) -> list[str]:
    """``before → after`` cells of one column, each side right-aligned to the
    column's widest so that the arrows line up."""
    if not pairs:
        return []
    wa = max(len(a) for a, _b in pairs)
    wb = max(len(b) for _a, b in pairs)
    return [f"{a:>{wa}} {ARROW} {b:>{wb}}" for a, b in pairs]


def side(v, present: bool, fmt=num) -> str:
    """One side of a pair: '-' where the row is absent from that recording."""
    return fmt(v) if present else "-"


def _hook(r) -> str:
    """A row's hook as the comparison names it: the same on every kernel."""
    return r.get("stable_hook") or stable_hook_name(r["hook"] or "?")


# ---- header, warnings, changes -----------------------------------------------------------

#: how the numbers are compared, said under the header
HOW = ("Counts are compared as rates per second of each recording's own duration; ratios are after/before. "
       "Hooks go by their --hooks names (secondary_tlb on every kernel).")


def side_line(rep: dict) -> str:
    """One recording in a line: kernel, backend, length, how much happened."""
    k = rep.get("kernel") or {}
    secs = rep.get("rate_s")
    span = f"{rep['duration_s']:g} s" if rep.get("duration_s") is not None else \
        f"{secs:.3f} s first to last record" if secs else "duration unknown"
    rate = f" ({num(rep['events_per_s'])}/s)" if rep.get("events_per_s") is not None else ""
    mode = "" if not rep.get("aggregate") else f", {mode_text(rep)}"
    return (f"kernel {k.get('release')} ({k.get('arch')}), backend {rep.get('backend')}{mode}, {span}: "
            f"{num(rep.get('hook_invocations', 0))} hook invocations{rate}, "
            f"{num(rep.get('violation_invocations', 0))} violating calls"
            + ("" if rep.get("complete", True) else ", cut short"))


def header(rep: dict) -> list[str]:
    """Which recording is before and which after, and how they are compared."""
    c, b = rep["compare"], rep["compare"]["report_b"]
    return [f"mmntrace report --compare: before {ARROW} after",
            f"  before  {c['a']}", f"          {side_line(rep)}",
            f"  after   {c['b']}", f"          {side_line(b)}",
            HOW]


def warning_lines(c: dict) -> list[str]:
    """One line per difference between the recordings besides the workload."""
    if not c.get("warnings"):
        return []
    return ["WARNING: the recordings differ in more than the workload:"] + [f"  - {w['text']}" for w in c["warnings"]]


def change_counts(c: dict) -> dict:
    """Of the latency rows in both recordings, how many got worse and how
    many better in each of p50, p99 and max; how many violations appeared,
    went, got worse or better."""
    lat = [r for r in c["latency"] if r["status"] == "both"]
    out = {"rows": len(lat)}
    for f in ("p50_ns", "p99_ns", "max_ns"):
        for v in ("worse", "better"):
            out[f"{f}_{v}"] = sum((r.get("judged") or {}).get(f) == v for r in lat)
    v = c["violations"]
    out |= {"new": sum(x["status"] == "new" for x in v), "gone": sum(x["status"] == "gone" for x in v),
            "v_worse": sum(x["status"] == "both" and x["judged"] == "worse" for x in v),
            "v_better": sum(x["status"] == "both" and x["judged"] == "better" for x in v)}
    return out


def changes_line(c: dict) -> str:
    """The comparison in one line: what got worse, what better."""
    n = change_counts(c)
    pct_ = round((c.get("notable", 1.1) - 1) * 100)
    lat = "; ".join(f"{m} worse in {n[f + '_worse']}, better in {n[f + '_better']}"
                    for f, m in (("p50_ns", "p50"), ("p99_ns", "p99"), ("max_ns", "max")))
    tot = {t["metric"]: t for t in c.get("totals") or []}
    hooks = tot.get("hook_invocations")
    rate = f" Hook invocations per second: {ratio_text(hooks['rate_ratio'], hooks['status'])}." if hooks else ""
    return (f"CHANGES by {pct_}% or more, after/before, of {n['rows']} latency rows in both: {lat}. "
            f"Violations: {n['new']} new, {n['gone']} gone, {n['v_worse']} worse, {n['v_better']} better.{rate}")


# ---- tables -------------------------------------------------------------------------------

def _keyed(title: str, rows: list[dict], cols: list[Col], cells: list[list[str]], events: bool,
           width: int) -> list[Table]:
    """Rows keyed by hook and callback (and event): separate key columns when
    they fit at natural width, else the indented tree in one column, split
    over tables as the width requires."""
    keys = [Col("hook", "name"), Col("callback", "name")] + ([Col("event", "name")] if events else [])
    wide = Grid(title, keys + cols)
    prev = None
    for r, row in zip(rows, cells):
        h = _hook(r)
        wide.add(h if h != prev else "", r["callback"] or "(hook)", *([r["event"] or "-"] if events else []), *row)
        prev = h
    lay = fits(wide, width)
    if lay:
        return [to_table(lay)]
    named = [dict(r, hook=_hook(r), event=r.get("event")) for r in rows]
    key = TREE_KEY if events else Col("hook / callback", "name", min_width=24)
    tree = Grid(title, [key] + cols, [[k] + row for k, row in zip(tree_keys(named), cells)], valign="bottom")
    return tables(tree, width)


def _pairs(rows: list[dict], a, b, fmt=num) -> list[str]:
    """One ``before → after`` column: ``a(r)`` and ``b(r)`` give each side's
    value, None where the row is absent from that side."""
    return arrows([(side(a(r), a(r) is not None, fmt), side(b(r), b(r) is not None, fmt)) for r in rows])


def _counted(r: dict, side: str, key: str):
    """A side's count or rate, None where the thing is absent there."""
    return r[f"{side}_{key}"] if r[f"{side}_count"] else None


#: the rows of the totals table
TOTAL_NAMES = {"hook_invocations": "hook invocations", "callback_invocations": "callback invocations",
               "violation_invocations": "violating callback calls", "dropped": "records dropped"}


def totals_tables(c: dict, width: int) -> list[Table]:
    """Hook and callback invocations, violating calls and drops: counts and rates."""
    rows = c.get("totals") or []
    g = Grid(f"Totals, before {ARROW} after", [Col("", "name"), Col("count"), Col("per second", group="rate"),
                                                Col("ratio /s", group="rate")])
    counts = arrows([(num(r["a_count"]), num(r["b_count"])) for r in rows])
    rates = arrows([(num(r["a_rate_per_s"]), num(r["b_rate_per_s"])) for r in rows])
    for r, n, s in zip(rows, counts, rates):
        g.add(TOTAL_NAMES.get(r["metric"], r["metric"]), n, s, ratio_text(r["rate_ratio"], r["status"]))
    return tables(g, width)


def rate_tables(c: dict, width: int) -> list[Table]:
    """Invocations of each hook and callback, all events together."""
    rows = c.get("rates") or []
    if not rows:
        return []
    counts = _pairs(rows, lambda r: _counted(r, "a", "count"), lambda r: _counted(r, "b", "count"))
    rates = _pairs(rows, lambda r: _counted(r, "a", "rate_per_s"), lambda r: _counted(r, "b", "rate_per_s"))
    cells = [[n, s, ratio_text(r["rate_ratio"], r["status"])] for r, n, s in zip(rows, counts, rates)]
    cols = [Col("invocations", short="calls"), Col("per second", short="/s", group="rate"),
            Col("ratio /s", short="ratio", group="rate")]
    return _keyed(f"Invocations per hook and callback, before {ARROW} after", rows, cols, cells, False, width)


def _lat(r: dict, side: str, f: str):
    """A side's latency field, None where the row is absent there."""
    x = r[side]
    return None if x is None else x.get(f)


def latency_tables(c: dict, width: int) -> list[Table]:
    """p50, p99 and max before → after, with the ratio of each."""
    rows = c["latency"]
    cols, columns = [], []
    for f, name in (("p50_ns", "p50"), ("p99_ns", "p99"), ("max_ns", "max")):
        cols += [Col(name, group=name), Col("ratio", group=name)]
        columns += [_pairs(rows, lambda r, f=f: _lat(r, "a", f), lambda r, f=f: _lat(r, "b", f), us),
                    [ratio_text(r["ratio"][f], r["status"]) for r in rows]]
    cells = [list(x) for x in zip(*columns)]
    return _keyed(f"Latency (µs), before {ARROW} after", rows, cols, cells, True, width)


def _example_stacks(c: dict) -> list[Text]:
    """The example stack of each violation that appeared after (there is
    nothing before to compare it with, so it is shown whole)."""
    out = []
    for r in c["violations"]:
        if r["status"] != "new":
            continue
        st = r.get("stack") or []
        lines = [f"  new after: {r['rule']} in {r['callback'] or r['hook']}, example stack:"]
        lines += [f"      {fr}" for fr in st[:12]] + ([f"      ... {len(st) - 12} more frames"] if len(st) > 12 else [])
        out.append(Text("\n".join(lines)))
    return out + [Text("")] if out else out


def violation_tables(c: dict, width: int) -> list:
    """Violations before → after (counts and rates), the new ones' stacks."""
    v = c["violations"]
    if not v:
        return [Text("Rule violations: none before or after")]
    g = Grid(f"Rule violations, before {ARROW} after",
             [Col("rule", "name"), Col("hook", "name", min_width=20, stack=True),
              Col("callback", "name", min_width=20, stack=True), Col("sleeper", "name", stack=True),
              Col("atomic", "fixed"), Col("calls"), Col("per second", short="/s", group="rate"),
              Col("ratio /s", short="ratio", group="rate")])
    counts = arrows([(num(r["a_count"]), num(r["b_count"])) for r in v])
    rates = arrows([(num(r["a_rate_per_s"]), num(r["b_rate_per_s"])) for r in v])
    for r, n, s in zip(v, counts, rates):
        g.add(r["rule"], _hook(r), r["callback"] or "(hook)", r["sleeper"] or "?", "yes" if r["atomic"] else "no",
              n, s, ratio_text(r["rate_ratio"], r["status"]))
    return tables(g, width) + _example_stacks(c)


def secondary_tables(c: dict, width: int) -> list[Table]:
    """The secondary-TLB hook's caller classes: shares and rates."""
    rows = c.get("secondary_tlb") or []
    if not rows:
        return []
    g = Grid(f"Callers of the secondary-TLB hook, before {ARROW} after",
             [Col("caller class", "name"), Col("share"), Col("per second", short="/s", group="rate"),
              Col("ratio /s", short="ratio", group="rate")])
    shares = _pairs(rows, lambda r: r["a_share"], lambda r: r["b_share"], pct)
    rates = _pairs(rows, lambda r: _counted(r, "a", "rate_per_s"), lambda r: _counted(r, "b", "rate_per_s"))
    for r, sh, s in zip(rows, shares, rates):
        g.add(r["caller_class"], sh, s, ratio_text(r["rate_ratio"], r["status"]))
    return tables(g, width)


def process_tables(c: dict, width: int) -> list[Table]:
    """The top processes by comm: counts and rates."""
    rows = c.get("processes") or []
    if not rows:
        return []
    # each side lists only its top processes: one missing from a side was not
    # necessarily absent there, so it is "-", never "new" or "gone"
    g = Grid(f"Top processes by hook invocations (joined by comm; - : not in that recording's top), "
             f"before {ARROW} after",
             [Col("comm", "name"), Col("invocations", short="calls"), Col("per second", short="/s", group="rate"),
              Col("ratio /s", short="ratio", group="rate")])
    counts = _pairs(rows, lambda r: r["a_count"], lambda r: r["b_count"])
    rates = _pairs(rows, lambda r: r["a_rate_per_s"] if r["a_count"] else None,
                   lambda r: r["b_rate_per_s"] if r["b_count"] else None)
    for r, n, s in zip(rows, counts, rates):
        g.add(r["comm"] or "?", n, s, ratio_text(r["rate_ratio"]))
    return tables(g, width)


def closing(c: dict) -> list[str]:
    """Where each recording's own report is: a command away, not printed here."""
    return ["Each recording's full report:", f"  mmntrace report {c['a']}", f"  mmntrace report {c['b']}",
            "(--format json holds both: before's at the top level, after's in compare.report_b.)"]


def parts(rep: dict, width: int) -> list:
    """Everything the comparison prints, in order: header lines (str), then
    tables and texts."""
    c = rep["compare"]
    w = warning_lines(c)
    lines = header(rep) + [""] + w + ([""] if w else []) + [changes_line(c), ""]
    out: list = [Text(para(ln, width), style="bold" if ln.startswith(("WARNING", "CHANGES")) else "")
                 for ln in lines]
    out += totals_tables(c, width)
    out += rate_tables(c, width)
    out += latency_tables(c, width) if c["latency"] else [Text("Latency: no hook or callback invocations")]
    out += violation_tables(c, width)
    out += secondary_tables(c, width)
    out += process_tables(c, width)
    out.append(Text("\n".join(closing(c))))
    return out
