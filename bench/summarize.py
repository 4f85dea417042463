#!/usr/bin/env python3
"""Merge one `make bench` run's parts into results.json and BENCHMARKS.md.

    python bench/summarize.py DIR --results FILE --markdown FILE

DIR holds lab-<kernel>.json (bench/lab_bench.py, one per lab kernel),
decode.json (bench/decode_bench.py) and report.json (bench/report_bench.py).
The goals of issue 6 are checked here, as ratios from the same run, and
printed; a missed goal is reported, not hidden, and does not fail the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

CAVEAT = ("The lab is emulated (QEMU TCG, no KVM acceleration for the lab VM itself), so absolute "
          "times are far slower than on hardware and only ratios measured in the same run and the "
          "same VM boot mean anything. Compare tools within one kernel's table, never across runs.")


#: streaming's zero-drop sustained rate (events/s) when issue 12 was filed, by the lab
#: kernel's major.minor: its goal 5 asks for ten times as much
STREAM_RATE_BEFORE = {"6.1": 14_517, "6.12": 32_152}


def kernel_series(release: str) -> str:
    """"6.12.95+deb12-amd64" -> "6.12": which of the issue's lab kernels a run was on."""
    return ".".join(release.split("-")[0].split("+")[0].split(".")[:2])


def sustained_goal(lab: dict, name: str) -> dict | None:
    """Issue 12 goal 5 for streaming tool ``name``: its zero-drop sustained rate
    against the rate the issue measured on the same kernel. Where the workload
    at full speed lost nothing the bench takes that rate (bench/lab_bench.py)
    and no paced run is made: the recorder's limit lies somewhere above it, and
    what the line can show is bounded by how fast the traced workload runs."""
    x = lab["tools"].get(name)
    before = STREAM_RATE_BEFORE.get(kernel_series(lab.get("kernel", "")))
    rate = (x or {}).get("sustained_events_per_s")
    if not x or not before or not rate:
        return None
    at_full = not (x.get("sweep") or [])
    value = (f"{rate:,} events/s" + (" (the workload's full traced rate, 0 dropped: the limit lies above)"
                                     if at_full else " (paced)") + f": {rate / before:.1f}x the {before:,} the issue measured (its own host's: a slower one's"
             " workload runs slower too)")
    return {"goal": f"{name} zero-drop sustained rate >= 10 x issue 12's ({before:,} events/s)",
            "value": value, "met": rate >= 10 * before}


#: the most the untraced runs of one boot may spread (slowest over fastest) for
#: the ratios measured in it to be read as the tools' and not the host's
NOISE_LIMIT = 1.25


def untraced_spread(lab: dict) -> tuple[float, float, float] | None:
    """(fastest, slowest run in seconds, slowest / fastest) of the boot's untraced
    runs, interleaved with the tools' (bench/lab_bench.py): what the lab host
    itself varied while the tools were measured (None: fewer than two runs)."""
    secs = [r["seconds"] for block in lab.get("untraced", []) for r in block if r.get("seconds")]
    if len(secs) < 2:
        return None
    return min(secs), max(secs), max(secs) / min(secs)


def ambient_noise(lab: dict, *names: str) -> float | None:
    """How far the untraced ambient runs that ``names``' taxes are taken against
    (each tool's: the untraced block before it and the one after,
    bench/lab_bench.py) spread, in points: (slowest - fastest) / fastest, the
    largest over the workloads. In the lab they spread by 8-13 points within one
    boot, which no 2-point difference between two tools' taxes can be told
    from (None: no such runs)."""
    order = list(lab.get("tools", {}))
    blocks = lab.get("untraced", [])
    runs = []
    for n in names:
        if n not in order or order.index(n) + 1 >= len(blocks):
            return None
        i = order.index(n)
        runs += [r for b in blocks[i:i + 2] for r in b if r.get("ambient")]
    if len(runs) < 2:
        return None
    worst = 0.0
    for m in runs[0]["ambient"]:
        xs = [r["ambient"][m] for r in runs if m in r["ambient"]]
        if xs and min(xs) > 0:
            worst = max(worst, max(xs) / min(xs) - 1)
    return worst


def dispatch_ns(lab: dict, prog_type: str | None = None) -> float:
    """What the probe machinery costs one program run beyond the program's own
    time, at most, in this boot. Calibrated at each mmntrace tool's start (per
    probed callback, an entry and exit pair or an entry alone:
    bench/lab_bench.py probe_overhead_ns), by mechanism: a ``tracing`` program
    (a trampoline's) is charged the largest trampoline dispatch, a ``kprobe``
    program (a kprobe's or a kretprobe's) the largest kprobe dispatch, per run
    (an entry alone, or half a pair, whichever is more); any other type (a raw
    tracepoint: none calibrated), and a call that names none, the largest of all
    (a kprobe pair's, generously); 0 where none was calibrated."""
    cals = [(k, v) for x in lab.get("tools", {}).values()
            for k, v in (x.get("probe_overhead_ns") or {}).items() if v]
    mech = {"tracing": "fentry", "kprobe": "kprobe"}.get(prog_type or "")
    if mech:
        own = [v if k.endswith("_entry") else v / 2 for k, v in cals if k.split("_")[0] == mech]
        if own:
            return float(max(own))
    return float(max((v for _, v in cals), default=0))


def counted(lab: dict) -> bool:
    """Did this boot's bench count the ambient paths (``ambient_bpf``; not before it did)?"""
    return any("ambient_bpf" in x for x in lab.get("tools", {}).values())


def ambient_dispatch_ns(lab: dict, a: dict) -> float:
    """The dispatch of an ambient round's program runs (``ambient_bpf``), each
    run at its program type's :func:`dispatch_ns`: by ``runs_by_type``, or
    where a round has only its costliest programs listed, those by type and
    the rest at the largest."""
    by_type = a.get("runs_by_type")
    if by_type is None:
        by_type = {}
        for p in a.get("programs") or []:
            by_type[p.get("type")] = by_type.get(p.get("type"), 0) + p["run_cnt"]
    rest = a["runs"] - sum(by_type.values())
    return sum(n * dispatch_ns(lab, ty) for ty, n in by_type.items()) + max(0, rest) * dispatch_ns(lab)


def ambient_cost(lab: dict, x: dict) -> float | None:
    """The share of the ambient runs' time that tool ``x`` took there, counted
    rather than timed: its BPF programs' runs during one more round of the
    ambient workloads with kernel.bpf_stats_enabled (their own time, and each
    run's dispatch at its mechanism's :func:`dispatch_ns`), over that round's
    time, plus the tool's own CPU share over the timed ambient runs. A probe
    that no ambient path reaches costs nothing there; one that does
    (sched_switch, a might-sleep function) shows here by its count, without
    the several points the untraced runs themselves move by
    (:func:`ambient_noise`). None: not measured (a bench from before it was)."""
    a = x.get("ambient_bpf")
    if not a or not a.get("seconds"):
        return None
    return ((a["run_time_ns"] + ambient_dispatch_ns(lab, a)) / (a["seconds"] * 1e9)
            + (x.get("ambient_tool_cpu_share") or 0.0))


def warm_sentence(lab: dict) -> str:
    """What the ready times are: warm starts where the bench made one uncounted
    start of each family first (bench/lab_bench.py warm_starts); "" before it did."""
    w = lab.get("warm_starts")
    if not w:
        return ""
    starts = max((len(x.get("startup_runs_s") or []) for x in lab.get("tools", {}).values()), default=0)
    return (" Ready after: from the tool's start to its ready signal, a warm start for each tool"
            + (f" (the median of {starts} starts: one start's time moves with the host by more than the "
               "goal's margin)" if starts > 1 else "")
            + ": the lab reads its root file system from the host through 9p, and a family's first start of "
            "the boot (" + ", ".join(f"{n} {v:.1f} s" for n, v in w.items()) + ") was made first, not counted.")


def starts_range(x: dict, lead: str = ": starts ") -> str:
    """The spread of a tool's ready times where the bench started it more than
    once (its ready time is then their median: bench/lab_bench.py ready_rounds);
    "" for one start."""
    r = x.get("startup_runs_s") or []
    if len(r) < 2:
        return ""
    return f"{lead}{min(r):.1f}-{max(r):.1f} s"


def goals(lab: dict) -> list[dict]:
    t = lab["tools"]
    out = []
    sp = untraced_spread(lab)
    if sp:
        out.append({"goal": f"the host was quiet: untraced runs within {NOISE_LIMIT}x of each other "
                            "(else every ratio below is uncertain by as much)",
                    "value": f"{sp[2]:.2f}x ({sp[0]:.2f}-{sp[1]:.2f} s)", "met": sp[2] <= NOISE_LIMIT})

    def ov(n):
        return t[n]["overhead"] if n in t else None

    for be in ("kprobe", "fentry"):
        agg, fl, bt = ov(f"mmntrace-agg-{be}"), ov("funclatency"), ov("bpftrace")
        if agg is not None and fl is not None:
            for lim in (1.0, 0.8):      # issue 12 goal 1: first 1.0x, then 0.8x
                out.append({"goal": f"--aggregate ({be}) overhead <= {lim} x funclatency's",
                            "value": round(agg / fl, 3) if fl > 0 else None, "met": fl > 0 and agg <= lim * fl})
        if agg is not None and bt is not None:
            out.append({"goal": f"--aggregate ({be}) overhead <= bpftrace's",
                        "value": round(agg / bt, 3) if bt > 0 else None, "met": agg <= bt})
        st = ov(f"mmntrace-{be}")       # issue 12 goal 1, streaming
        if st is not None and fl is not None:
            out.append({"goal": f"streaming ({be}) overhead <= 1.5 x funclatency's",
                        "value": round(st / fl, 3) if fl > 0 else None, "met": fl > 0 and st <= 1.5 * fl})
    for mode in ("mmntrace", "mmntrace-agg"):
        k, f = ov(f"{mode}-kprobe"), ov(f"{mode}-fentry")
        if k is not None and f is not None:
            out.append({"goal": f"{mode} fentry overhead <= 0.5 x kprobe's",
                        "value": round(f / k, 3) if k > 0 else None, "met": k > 0 and f <= 0.5 * k})
    fl = t.get("funclatency", {})
    for n, x in t.items():
        # issue 12: the tax on paths that never reach a notifier, next to funclatency's
        # (without --might-sleep), or at most 5 % (with it)
        if not n.startswith("mmntrace") or "ambient_tax" not in x or "ambient_tax" not in fl:
            continue
        # the verdict as measured; beside it, how far the untraced runs the taxes are
        # taken against spread themselves (a verdict within it is the host's), and
        # then what the tool's programs cost on those paths, counted exactly
        # (ambient_cost), which decides where the wall clock cannot
        ms = n.endswith("-ms")
        limit = 0.05 if ms else 0.02
        if ms:
            worst = max(x["ambient_tax"].values())
            noise = ambient_noise(lab, n)
            acct = ambient_cost(lab, x)
        else:
            worst = max(x["ambient_tax"][m] - fl["ambient_tax"][m] for m in x["ambient_tax"])
            noise = ambient_noise(lab, n, "funclatency")
            mine, theirs = ambient_cost(lab, x), ambient_cost(lab, fl)
            acct = mine - theirs if mine is not None and theirs is not None else None
        within = noise is not None and abs(worst - limit) <= noise
        # where the wall clock cannot tell: a tool none of whose programs ran there adds
        # only its own CPU, which the count has exactly, so the count decides; one whose
        # programs ran there meets the goal only if the count and the clock both say so
        # (the count cannot see a tracepoint's own work around its program)
        by_acct = within and acct is not None
        runs = x["ambient_bpf"]["runs"] if acct is not None else None
        if by_acct and runs == 0:
            met, how = acct <= limit, " (decided on that count: none of its programs runs there)"
        elif by_acct:
            met, how = worst <= limit and acct <= limit, " (the clock within its noise: met only if both say so)"
        else:
            met, how = worst <= limit, ""
        unit = " %" if ms else " points"
        value = f"{worst * 100:+.1f}{unit}" + (
            f" (the untraced runs beside them spread {noise * 100:.0f} "
            + ("point" if round(noise * 100) == 1 else "points") + ": "
            + ("uncertain)" if within else "beyond that)") if noise is not None else "")
        if acct is not None:
            value += f"; its programs ran {runs:,} times there: {acct * 100:+.2f}{unit} by their cost" + how
        out.append({"goal": (f"{n} (--might-sleep) ambient tax <= 5 % (pipe, open, alloc)" if ms else
                             f"{n} ambient tax <= funclatency's + 2 points (pipe, open, alloc)"),
                    "value": value, "met": met})
    # issue 12 goal 4: start-up and memory
    fs = fl.get("startup_s")
    for n, x in t.items():
        if n.startswith("mmntrace") and fs:
            out.append({"goal": f"{n} ready <= 1.5 x funclatency's ({fs:.1f} s{starts_range(fl)})",
                        "value": f"{x['startup_s'] / fs:.2f}x" + starts_range(x, ", starts "),
                        "met": x["startup_s"] <= 1.5 * fs})
        if n.startswith("mmntrace") and x.get("peak_rss_mib"):
            out.append({"goal": f"{n} peak RSS <= 150 MiB", "value": f"{x['peak_rss_mib']:.0f} MiB",
                        "met": x["peak_rss_mib"] <= 150})
    for n, x in t.items():
        # issue 12: latencies within 1.5x of a peer's for the same functions, judged on the
        # exact means where the run has them (a log2 median moves by 2x from one bucket to
        # the next, so it cannot tell 1.2x from 1.9x; the medians keep their own table).
        # The bound is on inflation: below 1, funclatency's own probe work (its return
        # probe, its hash) weighs more in its figure than mmntrace's in ours; that ours
        # never falls below the truth is a lab test's, call by call, against the test
        # module's own clock (tests/lab/test_record.py)
        r = observer_mean_ratios(lab, n)
        if r:
            out.append({"goal": f"{n} mean latencies <= 1.5x funclatency's (hooks, one callback)",
                        "value": ", ".join(f"{k} {v:.2f}" for k, v in r.items()),
                        "met": max(r.values()) <= 1.5})
            continue
        r = observer_ratios(lab, n)
        if r:
            worst = max(r.values(), key=lambda v: abs(v - 1))
            out.append({"goal": f"{n} median latencies within 1.5x of funclatency's (hooks, one callback)",
                        "value": ", ".join(f"{k} {v:.2f}" for k, v in r.items()),
                        "met": 1 / 1.5 <= worst <= 1.5})
    for n in ("mmntrace-kprobe", "mmntrace-fentry"):
        if n in t:
            out.append({"goal": f"{n} streaming loses no event at full rate (else: exact drops, and the limit)",
                        "value": f"{t[n].get('drops')} dropped; sustains {t[n].get('sustained_events_per_s')} events/s",
                        "met": t[n].get("drops") == 0})
            g = sustained_goal(lab, n)
            if g:
                out.append(g)
    return out


def observer_ratios(lab: dict, name: str) -> dict[str, float]:
    """mmntrace's median latency / funclatency's, per function both timed
    (the hooks from `funclatency`, the callback from `funclatency-callback`)."""
    t = lab["tools"]
    if not name.startswith("mmntrace-agg"):
        return {}
    mine = t[name].get("medians_ns") or {}
    peer = {**(t.get("funclatency", {}).get("medians_ns") or {}),
            **(t.get("funclatency-callback", {}).get("medians_ns") or {})}
    return {f: round(mine[f] / peer[f], 3) for f in sorted(peer) if f in mine and peer[f]}


HOOKS_KEY = "hooks (all calls)"


def _mean(d: dict | None) -> float | None:
    return d["sum_ns"] / d["count"] if d and d.get("count") else None


def _peer_total(t: dict, tool: str) -> dict | None:
    """A funclatency run's one {count, sum_ns} over every function it traced."""
    return (t.get(tool, {}).get("means_ns") or {}).get("*")


def _hooks_total(lab: dict, mine: dict) -> dict:
    """mmntrace's {count, sum_ns} over the hook functions the peers traced."""
    hooks = [mine[f] for f in lab.get("hook_functions", []) if f in mine]
    return {"count": sum(h["count"] for h in hooks), "sum_ns": sum(h["sum_ns"] for h in hooks)}


def observer_mean_ratios(lab: dict, name: str) -> dict[str, float]:
    """mmntrace's exact mean latency / funclatency's, from the kernel's sums and
    counts on both sides: the hooks as one (funclatency prints one mean over
    every function it traces, so mmntrace's is taken over the same functions),
    and the callback `funclatency-callback` traced alone."""
    t = lab["tools"]
    if not name.startswith("mmntrace-agg"):
        return {}
    mine = t[name].get("means_ns") or {}
    out = {}
    m, peer = _mean(_hooks_total(lab, mine)), _mean(_peer_total(t, "funclatency"))
    if m and peer:
        out[HOOKS_KEY] = round(m / peer, 3)
    fn = t.get("funclatency-callback", {}).get("function")
    m, peer = _mean(mine.get(fn)) if fn else None, _mean(_peer_total(t, "funclatency-callback"))
    if m and peer:
        out[fn] = round(m / peer, 3)
    return out


def observer_means_table(lab: dict) -> str:
    """Exact means in ns, mmntrace and funclatency side by side, with the calls counted."""
    t = lab["tools"]
    fn = t.get("funclatency-callback", {}).get("function")

    def cell(d):
        return f" {_mean(d):,.0f} ({d['count']:,} calls) |" if _mean(d) else " |"
    rows = [f"| {n} |" + cell(_hooks_total(lab, x["means_ns"])) + cell(x["means_ns"].get(fn) if fn else None)
            for n, x in t.items() if n.startswith("mmntrace-agg") and x.get("means_ns")]
    if not rows:
        return ""
    rows.append("| funclatency |" + cell(_peer_total(t, "funclatency")) + cell(_peer_total(t, "funclatency-callback")))
    return "\n".join(["| tool | hooks: mean ns | " + (f"{fn}: mean ns" if fn else "callback") + " |",
                      "|---|---:|---:|"] + rows)


def ambient_table(lab: dict) -> str:
    modes = next((list(x["ambient_tax"]) for x in lab["tools"].values() if "ambient_tax" in x), [])
    if not modes:
        return ""
    count = counted(lab)
    rows = ["| tool | " + " | ".join(f"{m} tax" for m in modes) + " | tool's own CPU meanwhile |"
            + (" its BPF programs' runs there | their cost, counted |" if count else ""),
            "|---|" + "---:|" * (len(modes) + 1 + 2 * count)]
    for n, x in lab["tools"].items():
        if "ambient_tax" in x:
            own = x.get("ambient_tool_cpu_share")
            a, c = x.get("ambient_bpf"), ambient_cost(lab, x)
            rows.append(f"| {n} | " + " | ".join(f"{x['ambient_tax'][m] * 100:+.1f} %" for m in modes)
                        + (f" | {own * 100:.1f} % |" if own is not None else " | |")
                        + ((f" {a['runs']:,} | {c * 100:.2f} % |" if a and c is not None else " | |")
                           if count else ""))
    return "\n".join(rows)


def prog_table(lab: dict) -> str:
    rows = ["| tool | BPF program | type | runs | ns per run | total ms |", "|---|---|---|---:|---:|---:|"]
    for n, x in lab["tools"].items():
        for c in (x.get("bpf_progs") or [])[:8]:
            rows.append(f"| {n} | {c['name']} | {c['type']} | {c['run_cnt']:,} | {c['ns_per_run']:,.0f} | "
                        f"{c['run_time_ns'] / 1e6:,.1f} |")
    return "\n".join(rows) if len(rows) > 2 else ""


def ns_per_invocation(t: dict, reps: int) -> float | None:
    """Time added per traced function invocation: funclatency and bpftrace
    trace the hook functions only (one invocation per hook call); mmntrace
    also each driver callback, so its invocations are the records it made or
    dropped (hooks and callbacks; --aggregate: the in-kernel totals)."""
    added = t["median_s"] - t["untraced_median_s"]
    if "events" in t:
        inv = ((t.get("events") or 0) + (t.get("drops") or 0)) / max(1, reps)
    else:
        inv = t.get("hook_calls_per_run")
    return round(added * 1e9 / inv, 1) if inv else None


def noise_sentence(lab: dict) -> str:
    """What the untraced runs say of the host during this boot's measurements."""
    sp = untraced_spread(lab)
    if not sp:
        return ""
    n = sum(len(b) for b in lab.get("untraced", []))
    text = (f" The {n} untraced runs, between the tools' runs, took {sp[0]:.2f}-{sp[1]:.2f} s "
            f"(slowest/fastest {sp[2]:.2f}x)")
    if sp[2] > NOISE_LIMIT:
        return text + (f": **the lab host was noisy during this run** (over {NOISE_LIMIT}x), so each ratio "
                       "below may be off by as much; compare with another run before concluding.")
    return text + "."


def table(lab: dict) -> str:
    rows = ["| tool | ops/s (median) | slowdown | overhead | ns per hook call | ns per traced invocation "
            "| its own CPU a run | ready after | peak RSS | events/s | drops | sustained with 0 drops |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| untraced | {lab['untraced_ops_per_s']:,.0f} | 1 | 0 | | | | | | | | |"]
    for n, t in lab["tools"].items():
        cpu = t.get("tool_cpu_s_per_run")       # (not in runs before it was measured)
        rows.append(f"| {n} | {t['median_ops_per_s']:,.0f} | {t['slowdown']:.3f} | {t['overhead']:.3f} | "
                    f"{t['ns_per_hook_call'] if t['ns_per_hook_call'] is not None else ''} | "
                    f"{ns_per_invocation(t, lab['reps']) or ''} | {f'{cpu:.2f} s' if cpu is not None else ''} | "
                    f"{t['startup_s']:.1f} s | "
                    f"{t['peak_rss_mib'] or ''} MiB | {t.get('events_per_s', '') if 'events_per_s' in t else ''} | "
                    f"{t.get('drops', '') if t.get('drops') is not None else ''} | "
                    f"{'{:,} events/s'.format(t['sustained_events_per_s']) if t.get('sustained_events_per_s') else ''} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--markdown", type=Path, required=True)
    a = ap.parse_args()
    labs = [json.loads(p.read_text()) for p in sorted(a.dir.glob("lab-*.json"))]
    if not labs:
        print(f"summarize: no lab-*.json in {a.dir}: the lab part of the benchmark did not run", file=sys.stderr)
        return 1
    dec = json.loads((a.dir / "decode.json").read_text()) if (a.dir / "decode.json").exists() else None
    rep = json.loads((a.dir / "report.json").read_text()) if (a.dir / "report.json").exists() else None
    res = {"generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "kernel": platform.release()},
           "caveat": CAVEAT, "lab": labs, "decode": dec, "report": rep,
           "goals": {lab["kernel"]: goals(lab) for lab in labs}}
    if dec:
        res["goals"]["host"] = [{"goal": "host decode >= 10 x per-event ctypes", "value": dec["ratio"],
                                 "met": dec["goal_met"]}]
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(res, indent=1))
    md = ["# Benchmarks", "",
          "Generated by `make bench` (bench/summarize.py) from `bench/results.json`; do not edit by hand.", "",
          f"> **Caveat.** {CAVEAT}", "",
          f"Host: {res['host']['machine']}, {res['host']['cpus']} CPUs, kernel {res['host']['kernel']}; "
          f"generated {res['generated']}.", ""]
    for lab in labs:
        md += [f"## Lab kernel {lab['kernel']} ({lab['arch']}, {lab['cpus']} vCPUs, size {lab['size']})", "",
               f"Workload: `notifier_bench {lab['rounds']} {lab['pages']}` (KVM + test module subscribed; "
               f"zero-page reads, COW writes, mprotect flips, MADV_DONTNEED), median of {lab['reps']} run(s) per tool; "
               f"hook functions for the peers: {', '.join('`' + s + '`' for s in lab['hook_functions'])}."
               + noise_sentence(lab) + " A tool's own CPU a run is its process's (and children's) CPU time "
               "over each notifier run, median: an upper bound here. QEMU runs a lab guest's vCPUs in turn "
               "on one host thread, in slices of up to 100 ms (TCG_KICK_PERIOD), and a task that is running "
               "on one vCPU while the other's slice runs is charged that time too: a recorder that wakes "
               "during a run may show a few tenths of a second of it in a run no slower than the others. "
               "The slowdown is the cost; this column says where to look." + warm_sentence(lab), "", table(lab), ""]
        amb = ambient_table(lab)
        if amb:
            md += ["Ambient tax: the same tools on paths that never reach a notifier "
                   "(`ambient_bench`: pipe ping-pong, open+fstat+close of /dev/null, mmap+fault+munmap), "
                   "traced median time / untraced median time - 1"
                   + (f" (a run's time: the fastest of {lab['ambient_repeats']} back-to-back repetitions)"
                      if lab.get("ambient_repeats", 1) > 1 else "")
                   + ", run once the tool's CPU time has "
                   "stopped growing after the notifier run; then the tool's own CPU time "
                   "over those runs, over their time (an upper bound, as above: the vCPUs' turns on one host "
                   "thread; what the tool does meanwhile is charged to the ambient workload here, not on real CPUs)."
                   + (" The last two columns count instead of timing: one more round of the ambient workloads "
                      "with `kernel.bpf_stats_enabled`, the runs of the BPF programs there (a probe no ambient "
                      f"path reaches never runs), and their cost: their own time plus each run's dispatch, "
                      f"the largest any mmntrace tool calibrated in this boot for its mechanism "
                      f"({dispatch_ns(lab, 'tracing'):.0f} ns a trampoline's program, "
                      f"{dispatch_ns(lab, 'kprobe'):.0f} a kprobe's, {dispatch_ns(lab):.0f} any other, "
                      "a raw tracepoint's, for which none is calibrated: a kprobe pair's), over "
                      "that round's time, plus the tool's own CPU share. It counts what runs on those paths, "
                      "generously (the largest dispatch of its kind for each run, both vCPUs' time against the "
                      "wall clock); what it cannot see, a tracepoint's own work around its program or what the "
                      "programs leave in the caches, shows on the clock only. A tool with no run there adds "
                      "nothing there but its own CPU. The untraced "
                      "runs alone move by several points from one to the next; where a goal's wall-clock verdict "
                      "lies within that spread, this count decides it for a tool none of whose programs ran "
                      "there, and a tool whose programs did meets it only if the count and the clock both say "
                      "so; the goal's line says which."
                      if counted(lab) else "")
                   + (" mmntrace-agg-kprobe is the daemon's default configuration (`--aggregate "
                      "--backend kprobe`, real sleeps by the switch count, no --might-sleep); a name ending "
                      "in -sw has `--sleep-detect switch` (the sched_switch program)."
                      if "mmntrace-agg-kprobe" in lab["tools"] else ""), "", amb, ""]
        obs = {n: observer_ratios(lab, n) for n in lab["tools"]}
        obs = {n: r for n, r in obs.items() if r}
        if obs:
            md += ["Observer effect: the median latency each mmntrace mode reports for a function, "
                   "over funclatency's median for the same function in the same boot (log2 histograms "
                   "interpolated alike).", "", "| tool | " + " | ".join(next(iter(obs.values()))) + " |",
                   "|---|" + "---:|" * len(next(iter(obs.values())))]
            md += [f"| {n} | " + " | ".join(f"{v:.2f}" for v in r.values()) + " |" for n, r in obs.items()]
            po = {n: lab["tools"][n].get("probe_overhead_ns") for n in obs}
            po = {n: v for n, v in po.items() if v}
            if po:
                md += ["", "Each hook's duration has its callbacks' probe work taken off: their programs' own "
                       "time, measured per call, and the dispatch around them, calibrated at start on the "
                       "tracer's own getppid() (ns per probed callback): "
                       + "; ".join(f"{n} " + ", ".join(f"{k} {v:,}" for k, v in sorted(d.items()))
                                   for n, d in po.items()) + "."]
            md.append("")
        mt = observer_means_table(lab)
        if mt:
            md += ["Exact mean latencies (the kernel's summed ns over its count, on both sides; funclatency "
                   "prints one mean over all the functions it traces, so the hooks are compared as one). "
                   "The goal is judged on these: a log2 median moves by a factor of 2 from one bucket to the "
                   "next.", "", mt, ""]
        pt = prog_table(lab)
        if pt:
            md += ["In-kernel cost of each BPF program (one extra run with `kernel.bpf_stats_enabled`; "
                   "costliest first, at most 8 per tool).", "", pt, ""]
        g = res["goals"][lab["kernel"]]
        if g:
            md += ["| goal | value | met |", "|---|---:|---|"]
            md += [f"| {x['goal']} | {x['value']} | {'yes' if x['met'] else '**no**'} |" for x in g]
            md.append("")
    if dec:
        md += ["## Host decode (no BPF)", "",
               f"{dec['events']:,} records: mmntrace {dec['mmntrace_events_per_s'] / 1e6:.2f} M events/s, "
               f"per-event ctypes {dec['ctypes_events_per_s'] / 1e6:.3f} M events/s: **{dec['ratio']}x** "
               f"(goal >= 10x: {'met' if dec['goal_met'] else 'missed'}).", ""]
    if rep:
        md += ["## `mmntrace report` on a large recording (host)", "",
               "| format | events | time | peak RSS |", "|---|---:|---:|---:|"]
        md += [f"| {r['format']} | {r['events']:,} | {r['wall_s']} s | {r['peak_rss_mib']} MiB |" for r in rep]
        md.append("")
    md += ["ns per traced invocation = the same added time divided by the function invocations each tool "
           "traced: the hook calls for funclatency and bpftrace; for mmntrace, the hook and driver-callback "
           "invocations it recorded or dropped (per hook call it traces the hook and every subscriber's callback, "
           "plus might-sleep functions and sched_switch, which are not counted here).", "",
           "Overhead = slowdown - 1. ns per hook call = (traced - untraced median time) / hook calls per run, "
           "where the hook calls are counted by the test module (one per start, end and secondary-TLB call on "
           "the workload's mm). mmntrace traces more than the peers: the driver callbacks (KVM, test module), "
           "the might-sleep functions and sched_switch as well as the hooks.", "",
           "Peak RSS = the tool process's VmHWM over its whole life, read until it exits: its start-up, the "
           "workload, and what it does at the stop (mmntrace writes its tables then) all count.", ""]
    a.markdown.write_text("\n".join(md))
    for k, gs in res["goals"].items():
        for x in gs:
            print(f"{k}: {x['goal']}: {x['value']} -> {'met' if x['met'] else 'MISSED'}")
    print(f"wrote {a.results} and {a.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
