"""Each aggregate against an independent computation (numpy percentiles,
explicit counts), on synthetic recordings with known answers; streaming over
many segments against one frame; the inexact and --aggregate paths against
their documented bounds."""

import json
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest

from mmntrace import aggregate, report, synthetic
from mmntrace.aggregate import summarize
from mmntrace.recording import Recording, RecordingWriter

META = {"kernel": {"release": "6.12.0-test", "arch": "x86_64"}, "backend": "kprobe", "aggregate": False}
QS = {"p50_ns": 50, "p90_ns": 90, "p99_ns": 99, "p999_ns": 99.9}


def _write(path, segments, sleeps=(), meta=None, duration=10.0):
    w = RecordingWriter(path, {**META, **(meta or {})})
    for i, ev in enumerate(segments):
        sl = sleeps[i] if i < len(sleeps) else pd.DataFrame()
        w.write_segment(ev, sl)
    for sl in sleeps[len(segments):]:
        w.write_segment(pd.DataFrame(), sl)
    w.finish(drops={"total": 0})
    w.meta["end_time"] = w.meta["start_time"] + duration
    w.flush_meta()
    return Recording(path)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A realistic mix (synthetic module): 40k events over 7 segments, with violations."""
    d = tmp_path_factory.mktemp("mixed") / "rec"
    synthetic.write(d, n_events=40_000, segments=7, violations=25, span_s=20.0, seed=7)
    rec = Recording(d)
    return rec, rec.events(), rec.sleeps()


def _norm(ev):
    """Independent group keys: callback None for hooks, event None outside range hooks."""
    cb = np.where(ev["kind"] == "hook", None, ev["callback"].astype(object))
    evt = np.where(ev["hook"].astype(str).isin(aggregate.RANGE_HOOKS), ev["event"].astype(object), None)
    return pd.DataFrame({"hook": ev["hook"].astype(str), "callback": cb, "event": evt,
                         "dur": ev["dur_ns"].astype(np.int64), "ts": ev["ts_ns"].astype(np.int64)})


def _bpf_log2l(v: int) -> int:
    """bcc's helpers.h, transcribed: the slot the kernel's --aggregate histogram uses."""
    def log2(x):
        r = int(x > 0xFFFF) << 4
        x >>= r
        s = int(x > 0xFF) << 3
        x >>= s
        r |= s
        s = int(x > 0xF) << 2
        x >>= s
        r |= s
        s = int(x > 0x3) << 1
        x >>= s
        r |= s
        return r | (x >> 1)
    hi = v >> 32
    return log2(hi) + 32 + 1 if hi else log2(v) + 1


def test_log2_bucket_is_bcc_slot():
    vals = [1, 2, 3, 4, 5, 7, 8, 255, 256, 1000, 65535, 65536, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 5]
    assert aggregate.log2_bucket(np.array(vals, np.uint64)).tolist() == [_bpf_log2l(v) for v in vals]
    assert aggregate.log2_bucket(np.array([0], np.uint64)).tolist() == [0]
    for v in vals:
        b = _bpf_log2l(v)
        assert aggregate.bucket_lo(b) <= v < 2 ** b


def test_latency_against_numpy(mixed):
    rec, ev, _ = mixed
    s = summarize(rec)
    n = _norm(ev)
    rows = {(r["hook"], r["callback"], r["event"]): r for r in s.latency}
    groups = n.groupby(["hook", "callback", "event"], dropna=False)
    assert len(rows) == groups.ngroups
    for (h, cb, e), g in groups:
        key = (h, None if pd.isna(cb) else cb, None if pd.isna(e) else e)
        r = rows[key]
        d = g["dur"].to_numpy()
        assert r["count"] == len(d)
        for k, q in QS.items():
            assert r[k] == int(np.percentile(d, q, method="lower")), (key, k)
        assert r["max_ns"] == d.max() and r["min_ns"] == d.min() and r["total_ns"] == d.sum()
        assert r["mean_ns"] == pytest.approx(d.mean(), abs=0.06)   # rounded to 0.1 ns
        assert r["rate_per_s"] == pytest.approx(len(d) / 20.0, rel=1e-3)
        explicit = Counter(int(np.floor(np.log2(x))) + 1 for x in d)
        assert {lo.bit_length(): c for lo, c in r["hist_log2"]} == explicit
    assert s.hook_invocations == int((ev["kind"] == "hook").sum())
    assert s.records == len(ev) and s.quantile_method == "exact"


def test_streaming_equals_one_frame(mixed):
    """7 segments read column by column == the pure function on the whole frame."""
    rec, ev, sl = mixed
    s = summarize(rec)
    assert s.latency == aggregate.latency(ev, duration_s=20.0)
    assert s.processes == aggregate.processes(ev)
    assert s.mms == aggregate.mms(ev)
    assert s.secondary_tlb == aggregate.secondary_tlb(ev)
    assert s.violations == aggregate.violations(sl)
    tl = aggregate.timeline(ev)
    assert s.timeline["series"] == tl["series"] and s.timeline["bucket_ns"] == tl["bucket_ns"]


def test_inexact_quantiles_within_bound(mixed):
    rec, ev, _ = mixed
    s = summarize(rec, exact_limit=1000)
    assert s.quantile_method == "loglinear"
    exact = {(r["hook"], r["callback"], r["event"]): r for r in summarize(rec).latency}
    for r in s.latency:
        e = exact[(r["hook"], r["callback"], r["event"])]
        for k in ("count", "max_ns", "min_ns", "total_ns"):
            assert r[k] == e[k]
        for k in QS:
            # the lower bound of the log-linear bucket holding the exact value: at most 1/128 below
            assert e[k] * (1 - 1 / aggregate.FINE_SUB) - 1 <= r[k] <= e[k], (r, k)
    assert [x["count"] for x in s.timeline["series"]] == [x["count"] for x in summarize(rec).timeline["series"]]


def test_timeline_against_explicit_buckets(mixed):
    rec, ev, _ = mixed
    s = summarize(rec, buckets=20)
    tl = s.timeline
    n = _norm(ev)
    t0 = min(int(ev["ts_ns"].min()), int(rec.sleeps()["ts_ns"].min()))
    assert tl["start_ns"] == t0 == s.t0_ns
    w = tl["bucket_ns"]
    assert w == 1_000_000_000 and tl["buckets"] <= 21   # 20 s in <= 20 round buckets
    hooks = n[ev["kind"].to_numpy() == "hook"]
    for ser in tl["series"]:
        g = hooks[hooks["hook"] == ser["hook"]]
        b = (g["ts"] - t0) // w
        assert ser["count"] == np.bincount(b, minlength=tl["buckets"]).tolist()
        for i in range(tl["buckets"]):
            d = g["dur"].to_numpy()[b.to_numpy() == i]
            if len(d):
                assert ser["p50_ns"][i] == int(np.percentile(d, 50, method="lower"))
                assert ser["p99_ns"][i] == int(np.percentile(d, 99, method="lower"))
                assert ser["max_ns"][i] == d.max()
            else:
                assert ser["p50_ns"][i] is None
        assert ser["rate_per_s"] == [c / (w / 1e9) for c in ser["count"]]
        hm = s.heatmap[ser["hook"]]
        assert hm.sum(axis=1).tolist() == ser["count"]
    vb = Counter(int((t - t0) // w) for t in rec.sleeps().drop_duplicates(["seq", "tid"])["ts_ns"].astype(np.int64))
    assert tl["violations"] == [vb.get(i, 0) for i in range(tl["buckets"])]


def test_processes_and_mms_explicit(mixed):
    rec, ev, _ = mixed
    s = summarize(rec, top=100)
    h = ev[ev["kind"] == "hook"]
    total = len(h)
    cnt = Counter(zip(h["pid"].astype(int), h["comm"]))
    assert [(p["pid"], p["comm"], p["count"]) for p in s.processes] == \
        [(pid, comm, c) for (pid, comm), c in sorted(cnt.items(), key=lambda kv: (-kv[1], kv[0][0]))]
    for p in s.processes:
        d = h[(h["pid"] == p["pid"]) & (h["comm"] == p["comm"])]["dur_ns"]
        assert p["total_ns"] == d.sum() and p["max_ns"] == d.max()
        assert p["share"] == pytest.approx(p["count"] / total, abs=1e-6)
    mm = Counter(h["mm"].astype(np.uint64).tolist())
    assert {m["mm"]: m["count"] for m in s.mms} == {f"{k:#x}": v for k, v in mm.items()}
    for m in s.mms:
        pids = sorted(set(h[h["mm"] == int(m["mm"], 16)]["pid"].astype(int)))
        assert m["pids"] == pids[:100]
    assert len(summarize(rec, top=3).processes) == 3


def test_secondary_tlb_callers_explicit(mixed):
    rec, ev, _ = mixed
    st = summarize(rec).secondary_tlb
    sec = ev[(ev["kind"] == "hook") & ev["hook"].astype(str).isin(aggregate.SECONDARY_HOOKS)]
    assert st["count"] == len(sec) and st["hooks"] == ["secondary_tlb"]
    cls = Counter(sec["caller_class"])
    assert {c["caller_class"]: c["count"] for c in st["classes"]} == {k: cls.get(k, 0) for k in aggregate.CALLER_CLASSES}
    assert sum(c["share"] for c in st["classes"]) == pytest.approx(1.0, abs=1e-5)
    callers = Counter(sec["caller"])
    assert [(c["caller"], c["count"]) for c in st["callers"]] == \
        sorted(callers.items(), key=lambda kv: (-kv[1], kv[0]))[:10]


def test_secondary_tlb_unknown_class(tmp_path):
    from test_recording_report import _events
    ev = _events([dict(hook="invalidate_range", caller="ptep_clear_flush", caller_class="ptl_clear", dur_ns=5),
                  dict(hook="invalidate_range", caller=None, caller_class=None, dur_ns=7),
                  dict(hook="invalidate_range", kind="callback", callback="cb [m]", dur_ns=1)])
    st = aggregate.secondary_tlb(ev)
    assert st["count"] == 2 and st["hooks"] == ["secondary_tlb"]     # a frame with the old name: the stable one
    by = {c["caller_class"]: c for c in st["classes"]}
    assert by["ptl_clear"]["count"] == 1 and by["unknown"]["count"] == 1 and by["tlb_flush"]["count"] == 0
    assert {c["caller"] for c in st["callers"]} == {"ptep_clear_flush", None}


def _reference_violations(sleeps):
    """The grouping rules of docs/report-schema.md, written out plainly, one invocation at a time."""
    out = {}
    s = sleeps.sort_values("ts_ns", kind="stable")
    for (_seq, _tid), g in s.groupby(["seq", "tid"], sort=False):
        rules = list(g["rule"])
        slept = "sleep" in rules
        might = g[g["rule"] == "might_sleep"]
        first = g.iloc[0]
        cb = first["callback"]
        if len(might):
            sleeper = might.iloc[0]["sleeper"]
            stack = list(might.iloc[0]["stack"])
        else:
            stack = list(first["stack"])
            names = [aggregate.bare_symbol(f) for f in stack]
            c = aggregate.bare_symbol(cb or first["hook"])
            sleeper = (names[names.index(c) - 1] if names.index(c) > 0 else None) if c in names else \
                (names[0] if names else None)
        if slept:
            stack = list(g[g["rule"] == "sleep"].iloc[0]["stack"])
        sleeper = None if sleeper is None or pd.isna(sleeper) else sleeper
        key = ("sleep" if slept else "might_sleep", first["hook"], cb,
               aggregate.bare_symbol(sleeper) if sleeper else None)
        r = out.setdefault(key, {"count": 0, "atomic": False, "stack": stack, "first_ns": int(first["ts_ns"]),
                                 "last_ns": 0, "pids": set()})
        r["count"] += 1
        r["atomic"] |= bool(g["atomic"].any() or g["irqs_off"].any())
        r["last_ns"] = max(r["last_ns"], int(g["ts_ns"].max()))
        r["pids"].add(int(first["pid"]))
    return out


def test_violations_against_reference():
    from test_recording_report import _sleeps
    rng = np.random.default_rng(3)
    rows = []
    stacks = [["mutex_lock", "cb [mod]", "x"], ["__schedule", "schedule", "wait_woken+0x1", "cb+0x2 [mod]"],
              ["__schedule", "schedule", "cb [mod]"], ["down_read", "other_cb [mod2]"], []]
    for i in range(400):
        seq, tid = int(rng.integers(0, 120)), int(rng.integers(1, 4))
        rule = rng.choice(["sleep", "might_sleep"])
        cb = rng.choice(["cb [mod]", "other_cb [mod2]"])
        rows.append(dict(seq=seq, tid=tid, pid=tid * 10, ts_ns=int(rng.integers(0, 10 ** 9)), rule=rule,
                         callback=cb, sleeper=rng.choice(["mutex_lock", "msleep+0x10", None]) if rule == "might_sleep"
                         else None, atomic=bool(rng.integers(0, 2)), irqs_off=bool(rng.integers(0, 4) == 0),
                         stack=stacks[int(rng.integers(0, len(stacks)))]))
    sl = _sleeps(rows)
    got = aggregate.violations(sl)
    ref = _reference_violations(sl)
    assert {(r["rule"], r["hook"], r["callback"], r["sleeper"]) for r in got} == set(ref)
    for r in got:
        e = ref[(r["rule"], r["hook"], r["callback"], r["sleeper"])]
        assert (r["count"], r["atomic"], r["stack"], r["first_ns"], r["last_ns"], r["pids"]) == \
            (e["count"], e["atomic"], e["stack"], e["first_ns"], e["last_ns"], sorted(e["pids"])), r
    counts = [r["count"] for r in got]
    assert counts == sorted(counts, reverse=True)
    rows2, detail = aggregate.violation_detail(sl)
    assert len(detail) == sum(counts) == sl.groupby(["seq", "tid"]).ngroups
    assert Counter(detail["row"]) == {i: r["count"] for i, r in enumerate(rows2)}


def test_violations_streamed_across_segments(tmp_path):
    """One invocation's records split over two segments still count once."""
    from test_recording_report import _sleeps
    a = _sleeps([dict(seq=1, ts_ns=10, rule="might_sleep", sleeper="msleep", stack=["msleep", "cb [mod]"])])
    b = _sleeps([dict(seq=1, ts_ns=20, rule="sleep", sleeper=None, stack=["__schedule", "msleep", "cb [mod]"]),
                 dict(seq=2, ts_ns=30)])
    rec = _write(tmp_path / "r", [], sleeps=[a, b])
    v = {(r["rule"], r["sleeper"]): r for r in summarize(rec).violations}
    assert v[("sleep", "msleep")]["count"] == 1 and v[("might_sleep", "mutex_lock")]["count"] == 1
    assert v[("sleep", "msleep")]["stack"] == ["__schedule", "msleep", "cb [mod]"]


def test_empty_one_event_and_violation_only(tmp_path):
    from test_recording_report import _events, _sleeps
    empty = summarize(_write(tmp_path / "e", []))
    assert empty.empty and empty.latency == [] and empty.timeline is None and empty.processes == []
    rep = report.from_summary(empty)
    assert rep["events"] == 0 and rep["violations"] == [] and rep["timeline"] is None
    json.dumps(rep)

    one = summarize(_write(tmp_path / "o", [_events([dict(dur_ns=1234, ts_ns=5, event="unmap", pid=9, comm="x")])]))
    (r,) = one.latency
    assert all(r[k] == 1234 for k in ("p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns", "min_ns"))
    assert r["count"] == 1 and r["hist_log2"] == [[1024, 1]]
    assert one.timeline["buckets"] == 1 and one.timeline["series"][0]["count"] == [1]
    assert one.processes == [{"pid": 9, "comm": "x", "count": 1, "share": 1.0, "total_ns": 1234, "max_ns": 1234}]

    vo = summarize(_write(tmp_path / "v", [], sleeps=[_sleeps([dict(seq=1, ts_ns=100), dict(seq=2, ts_ns=300)])]))
    assert not vo.empty and vo.latency == [] and vo.records == 0
    assert vo.violations[0]["count"] == 2 and vo.t0_ns == 100
    rep = report.from_summary(vo)
    assert rep["violations"][0]["first_s"] == 0 and rep["violations"][0]["last_s"] == pytest.approx(2e-7)
    json.dumps(rep)


def test_kernel_histograms_against_events(tmp_path):
    """An --aggregate recording (log2 histograms of the same events): counts and
    means exact, quantiles the upper bound of the slot holding the exact value."""
    d = tmp_path / "agg"
    synthetic.write(d, n_events=20_000, segments=3, violations=5, aggregate=True, span_s=10.0, seed=5)
    rng = np.random.default_rng(5)
    # the same events the writer drew (same seed, same order of draws)
    synthetic.sleeps(5, rng, 5_000_000_000_000, int(10e9))
    per = -(-20_000 // 3)
    evs = [synthetic.events(min(per, 20_000 - k * per), rng, 5_000_000_000_000 + k * int(10e9) // 3, int(10e9) // 3,
                            seq0=k * per, slow=(5_000_000_000_000 + int(10e9) // 2,
                                                5_000_000_000_000 + int(10e9) // 2 + int(10e9) // 6))
           for k in range(3)]
    ev = pd.concat(evs, ignore_index=True)
    s = summarize(d)
    assert s.kernel_hist and s.quantile_method == "log2_upper" and s.records == 0
    exact = {(r["hook"], r["callback"], r["event"]): r for r in aggregate.latency(ev)}
    assert len(exact) == len(s.latency)
    for r in s.latency:
        e = exact[(r["hook"], r["callback"], r["event"])]
        assert r["count"] == e["count"] and r["total_ns"] == e["total_ns"]
        assert r["mean_ns"] == pytest.approx(e["mean_ns"], abs=0.1)
        for k in QS:
            b = _bpf_log2l(e[k])
            assert r[k] == 2 ** b - 1 and e[k] <= r[k] < 2 * e[k] + 1, (r, k)
    assert s.timeline is None and s.processes == [] and s.secondary_tlb is None
    assert s.hook_invocations == int((ev["kind"] == "hook").sum())
    assert len(s.violations) == 2


def test_summary_is_json_native(mixed):
    rec, _, _ = mixed
    rep = report.build(rec)
    back = json.loads(json.dumps(rep))      # no numpy scalars anywhere
    assert back == rep


def test_secondary_tlb_ops_called_by_range_end(tmp_path):
    """Before 6.6 __mmu_notifier_invalidate_range_end calls each subscriber's
    invalidate_range op itself: each such range_end invocation (known from its
    callbacks' via and hook_seq) is one secondary-TLB invocation of class
    range_end, counted once even when its calls span two segments. The rows
    name the hook as recordings made before the stable names did
    (``invalidate_range``): read as ``secondary_tlb``."""
    from test_recording_report import _events
    hook = dict(hook="invalidate_range", caller="ptep_clear_flush", caller_class="ptl_clear", dur_ns=5)
    cb = dict(kind="callback", hook="invalidate_range", hook_id=2, via="invalidate_range_end")
    seg1 = _events([dict(hook, seq=1, hook_seq=1, via=None),
                    dict(cb, callback="a [m]", seq=2, hook_seq=10, dur_ns=3),      # range_end #10, 2 subscribers
                    dict(cb, callback="b [m]", seq=3, hook_seq=10, dur_ns=4),
                    dict(cb, callback="a [m]", seq=4, hook_seq=11, dur_ns=2),      # range_end #11, split below
                    dict(cb, callback="a [m]", seq=5, hook_seq=1, dur_ns=1, via="invalidate_range"),  # via the hook
                    dict(kind="callback", hook="invalidate_range_end", callback="c [m]", seq=6, hook_seq=11,
                         via="invalidate_range_end", dur_ns=9)])                    # not a secondary-TLB op
    seg2 = _events([dict(cb, callback="b [m]", seq=7, hook_seq=11, dur_ns=6),
                    dict(cb, callback="a [m]", seq=8, hook_seq=12, dur_ns=8)])
    rec = _write(tmp_path / "rec", [seg1, seg2])
    st = summarize(rec).secondary_tlb
    by = {c["caller_class"]: c for c in st["classes"]}
    assert st["count"] == 1 + 3
    assert by["ptl_clear"]["count"] == 1 and by["range_end"]["count"] == 3
    assert {c["caller"]: c["count"] for c in st["callers"]} == {"ptep_clear_flush": 1,
                                                                 "__mmu_notifier_invalidate_range_end": 3}
    # recordings made before these columns existed: as before
    old = _write(tmp_path / "old", [seg1.drop(columns=["via", "hook_seq"])])
    assert summarize(old).secondary_tlb["count"] == 1


def test_range_facts_blockable_failures_and_size():
    """Issue 16: what the sleeping rules turn on appears per latency row of a
    range hook: non-blockable calls, failed ones (-EAGAIN), range size in
    pages; a range over the whole address space is left out of the size."""
    P = 4096
    df = pd.DataFrame({
        "kind": ["hook", "callback", "hook", "callback", "hook", "hook"],
        "hook": ["invalidate_range_start"] * 4 + ["invalidate_range_end", "secondary_tlb"],
        "callback": [None, "drv_start", None, "drv_start", None, None],
        "event": ["unmap"] * 6,
        "dur_ns": np.array([100, 50, 200, 70, 30, 10], np.uint64),
        "blockable": [False, False, True, True, True, True],
        "ret": np.array([-11, -11, 0, 0, 0, 0], np.int32),
        "start": np.array([0, 0, 8 * P, 8 * P, 0, 0], np.uint64),
        "end": np.array([4 * P, 4 * P, 10 * P, 10 * P, 2 ** 64 - 1, 0], np.uint64),
    })
    rows = {(r["hook"], r["callback"]): r for r in aggregate.latency(df)}
    assert rows[("invalidate_range_start", None)]["range"] == {
        "non_blockable": 1, "failed": 1, "sized": 2, "pages_mean": 3.0, "pages_max": 4}
    assert rows[("invalidate_range_start", "drv_start")]["range"]["failed"] == 1
    end = rows[("invalidate_range_end", None)]["range"]
    assert end["sized"] == 0 and end["pages_mean"] is None       # the whole address space
    assert "range" not in rows[("secondary_tlb", None)]


def test_min_latency_recording_counts_every_call_and_shows_the_slow_ones(tmp_path):
    """record --min-latency: every call in the histograms (counts and totals as
    a per-event recording of the same calls has them), only the calls at least
    that long as events; the per-call sections say so, in text, HTML and JSON."""
    from mmntrace import render
    kw = dict(n_events=20_000, segments=3, violations=5, span_s=10.0, seed=5)
    full = synthetic.write(tmp_path / "full", **kw)
    slow = synthetic.write(tmp_path / "slow", min_latency_ns=20_000, **kw)
    ev = Recording(full).events()
    s, f = summarize(slow), summarize(full)
    assert s.kernel_hist and s.quantile_method == "log2_upper" and s.min_latency_ns == 20_000
    assert s.records == int((ev["dur_ns"] >= 20_000).sum()) > 0
    assert s.hook_invocations == f.hook_invocations and s.callback_invocations == f.callback_invocations
    counts = {(r["hook"], r["callback"], r["event"]): (r["count"], r["total_ns"]) for r in f.latency}
    assert {(r["hook"], r["callback"], r["event"]): (r["count"], r["total_ns"]) for r in s.latency} == counts
    slow_hooks = ev[(ev["kind"] == "hook") & (ev["dur_ns"] >= 20_000)]
    assert sum(p["count"] for p in s.processes) == len(slow_hooks)
    assert s.watched_callbacks is None and len(s.violations) == len(f.violations)
    rep = report.from_summary(s)
    assert rep["min_latency_ns"] == 20_000 and rep["slow_calls"] == s.records and rep["aggregate"] is True
    assert rep["events"] == f.hook_invocations
    assert report.from_summary(f)["min_latency_ns"] is None
    text = render.text(rep, width=120)
    assert "calls of at least 20 µs recorded (--min-latency)" in text
    assert f"slow calls: {s.records:,} hook and callback calls took at least 20 µs" in text
    assert "Top processes (hook invocations of at least 20 µs)" in text and "not counted (--min-latency)" in text
    assert "invocations of at least 20 µs only" in text      # the Over-time title
    html = render.html(rep, s)
    assert "Processes and mms (invocations of at least 20 µs only)" in html
    from mmntrace import plot      # the per-call figures say so too
    for fig in (plot.fig_rate(s), plot.fig_heatmap(s)):
        assert "invocations of at least 20 µs only" in fig._suptitle.get_text()
    assert "at least" not in plot.fig_rate(f)._suptitle.get_text()
    json.dumps(rep)
    # nothing slow enough: the per-call sections say why they are empty
    none = summarize(synthetic.write(tmp_path / "none", min_latency_ns=10 ** 12, **kw))
    assert none.records == 0 and none.hook_invocations == f.hook_invocations
    assert "no call took 1000 s or more (--min-latency)" in render.text(report.from_summary(none), width=120)
