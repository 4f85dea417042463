"""Decode, recording, aggregation and report on synthetic data with known answers."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from mmntrace import aggregate, decode, render, report
from mmntrace.cli import main
from mmntrace.errors import RecordingError, RecordingVersionError, UsageError
from mmntrace.recording import Recording, RecordingWriter, load
from mmntrace.symbolize import caller_of, classify_secondary_tlb

META = {"kernel": {"release": "6.12.0-test", "arch": "x86_64"}, "backend": "kprobe", "aggregate": False}


def _events(rows):
    base = dict(kind="hook", ts_ns=0, cpu=0, pid=1, tid=1, comm="t", mm=1, hook_id=0, event_id=-1,
                start=0, end=0, blockable=True, atomic=False, irqs_off=False, must_not_sleep=False,
                preempt_count=0, dur_ns=0, ret=0, seq=0, stack_id=-1, func=0, hook="invalidate_range_start",
                event=None, callback=None, caller=None, caller_class=None)
    return pd.DataFrame([{**base, **r} for r in rows])


def _sleeps(rows):
    base = dict(ts_ns=0, cpu=0, pid=1, tid=1, comm="t", mm=1, hook_id=2, event_id=-1, start=0, end=0,
                blockable=True, atomic=True, irqs_off=False, must_not_sleep=True, preempt_count=1, dur_ns=0,
                ret=0, seq=0, stack_id=1, func=0, hook="secondary_tlb", event=None,
                callback="cb [mod]", rule="might_sleep", sleeper="mutex_lock", stack=["mutex_lock", "cb [mod]"])
    return pd.DataFrame([{**base, **r} for r in rows])


def _write(tmp_path, events, sleeps=None, **meta):
    w = RecordingWriter(tmp_path / "rec", {**META, **meta})
    w.write_segment(events, sleeps if sleeps is not None else pd.DataFrame())
    w.finish(drops={"total": 0})
    return tmp_path / "rec"


def test_decode_roundtrip_and_errors():
    recs = np.zeros(3, decode.DTYPE)
    recs["type"] = [decode.REC["hook"], decode.REC["callback"], decode.REC["sleep"]]
    recs["flags"] = [decode.FL["blockable"] | decode.FL["atomic"], 0, decode.FL["irqs_off"]]
    recs["dur_ns"] = [5, 6, 7]
    out = decode.decode(recs.tobytes())
    parts = decode.split(out)
    assert [len(parts[k]) for k in ("hook", "callback", "sleep")] == [1, 1, 1]
    c = decode.columns(out)
    assert c["blockable"].tolist() == [True, False, False]
    assert c["atomic"].tolist() == [True, False, False]
    assert c["irqs_off"].tolist() == [False, False, True]
    with pytest.raises(decode.DecodeError):
        decode.decode(b"x" * (decode.DTYPE.itemsize + 1))


def test_latency_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    d = rng.integers(100, 100000, 1000)
    rows = [dict(dur_ns=int(x), event="clear") for x in d]
    rows += [dict(kind="callback", callback="kvm_cb [kvm]", dur_ns=int(x), event="clear") for x in d[:10]]
    rows += [dict(hook="secondary_tlb", dur_ns=7, event="unmap")]
    rep = report.build(Recording(_write(tmp_path, _events(rows))))
    by = {(r["hook"], r["callback"], r["event"]): r for r in rep["latency"]}
    h = by[("invalidate_range_start", None, "clear")]
    assert h["count"] == 1000
    for key, q in (("p50_ns", 50), ("p90_ns", 90), ("p99_ns", 99)):
        assert h[key] == int(np.percentile(d, q, method="lower"))
    assert h["max_ns"] == int(d.max())
    assert by[("invalidate_range_start", "kvm_cb [kvm]", "clear")]["count"] == 10
    # the secondary-TLB hook has no event type
    assert by[("secondary_tlb", None, None)]["count"] == 1
    assert rep["events"] == 1011 and rep["dropped"] == 0 and rep["complete"]


def test_empty_recording(tmp_path):
    rep = report.build(Recording(_write(tmp_path, pd.DataFrame())))
    assert rep["latency"] == [] and rep["violations"] == [] and rep["events"] == 0


def test_violations_grouped_by_invocation(tmp_path):
    sl = _sleeps([
        # invocation 1: might-sleep then slept -> counts as sleep only, sleeper msleep
        dict(seq=1, ts_ns=1, rule="might_sleep", sleeper="msleep", stack=["msleep", "cb [mod]"]),
        dict(seq=1, ts_ns=2, rule="sleep", sleeper=None, stack=["__schedule", "schedule", "msleep", "cb [mod]"]),
        # invocations 2 and 3: mutex only
        dict(seq=2, ts_ns=3), dict(seq=3, ts_ns=4, atomic=False),
        # invocation 4: slept with no might-sleep record: sleeper from the stack
        dict(seq=4, ts_ns=5, rule="sleep", sleeper=None,
             stack=["__schedule", "schedule", "wait_woken+0x10", "cb+0x20 [mod]"]),
    ])
    rep = report.build(Recording(_write(tmp_path, pd.DataFrame(), sl)))
    v = {(r["rule"], r["sleeper"]): r for r in rep["violations"]}
    assert v[("sleep", "msleep")]["count"] == 1
    assert v[("might_sleep", "mutex_lock")]["count"] == 2
    assert v[("might_sleep", "mutex_lock")]["atomic"] is True
    assert v[("sleep", "wait_woken")]["count"] == 1
    assert sum(r["count"] for r in rep["violations"]) == 4


def test_preempt_rt_violations_say_the_lock_was_held(tmp_path):
    """On PREEMPT_RT preempt_count() is 0 under the page-table lock: the report
    counts the calls made under it (migration disabled, RCU read-side) apart,
    says how the context was read, and an older recording reads as before."""
    sl = _sleeps([
        dict(seq=1, ts_ns=1, atomic=False, preempt_count=0, migration_disabled=True, rcu_read_side=True),
        dict(seq=2, ts_ns=2, atomic=False, preempt_count=0, migration_disabled=True, rcu_read_side=True),
        # an RCU read-side section alone is not a spinlock_t held
        dict(seq=3, ts_ns=3, atomic=False, preempt_count=0, migration_disabled=False, rcu_read_side=True),
    ])
    rec = Recording(_write(tmp_path, pd.DataFrame(), sl, context_source="preempt_rt"))
    rep = report.build(rec)
    (row,) = rep["violations"]
    assert row["count"] == 3 and row["rt_lock_count"] == 2 and row["atomic_count"] == 0
    assert rep["verdict"]["rt_lock_violation_invocations"] == 2 and rep["verdict"]["context"] == "preempt_rt"
    assert rep["context"]["source"] == "preempt_rt"
    text = render.text(rep, width=160)
    assert "0 in atomic context, 2 under a PREEMPT_RT spinlock" in text
    assert "lock context: PREEMPT_RT" in text and "rt lock" in text and "2 of 3" in text
    assert "under a PREEMPT_RT spinlock" in render.html(rep)
    s = rec.sleeps()
    assert s["migration_disabled"].sum() == 2 and s["rcu_read_side"].sum() == 3
    # a recording from before: no RT columns, no context_source
    old = Recording(_write(tmp_path / "old", pd.DataFrame(), _sleeps([dict(seq=1)])))
    rep = report.build(old)
    assert rep["context"]["source"] == "preempt_count" and rep["violations"][0]["rt_lock_count"] == 0
    assert "lock context" not in render.text(rep, width=160) and "rt lock" not in render.text(rep, width=160)


def test_aggregate_histogram_quantiles():
    hist = pd.DataFrame({"func": [0, 0, 0], "hook_id": [0, 0, 0], "event_id": [1, 1, 1], "slot": [9, 10, 12],
                         "count": [50, 40, 10], "hook": ["invalidate_range_start"] * 3, "event": ["clear"] * 3,
                         "callback": [None] * 3})
    (row,) = aggregate.latency_from_hist(hist, [])
    assert row["count"] == 100
    # bcc's bpf_log2l(v) is floor(log2 v) + 1: slot s holds [2**(s-1), 2**s), upper bound 2**s - 1
    assert row["p50_ns"] == 511 and row["p90_ns"] == 1023 and row["p99_ns"] == 4095 and row["max_ns"] == 4095


def test_files_are_private_and_load_api(tmp_path):
    d = _write(tmp_path, _events([dict(dur_ns=1)]))
    for f in d.iterdir():
        assert (f.stat().st_mode & 0o077) == 0, f
    assert len(load(d)) == 1


def test_cut_short_recording_is_readable(tmp_path):
    w = RecordingWriter(tmp_path / "rec", META)
    w.write_segment(_events([dict(dur_ns=1)]), pd.DataFrame())
    # no finish(): the recorder was killed
    rep = report.build(Recording(tmp_path / "rec"))
    assert rep["complete"] is False and rep["events"] == 1
    assert "cut short" in render.text(rep)


@pytest.mark.parametrize("setup,code,msg", [
    (lambda d: None, 20, "is not a directory"),
    (lambda d: d.mkdir(), 20, "not an mmntrace recording"),
    (lambda d: (d.mkdir(), (d / "metadata.json").write_text("{nope")), 20, "corrupt"),
    (lambda d: (d.mkdir(), (d / "metadata.json").write_text(json.dumps({"format_version": 99}))), 21, "newer"),
])
def test_bad_recordings_one_sentence(tmp_path, setup, code, msg):
    d = tmp_path / "r"
    setup(d)
    r = CliRunner().invoke(main, ["report", str(d)])
    assert r.exit_code == code
    assert msg in r.output and "Traceback" not in r.output


def test_corrupt_segment(tmp_path):
    d = _write(tmp_path, _events([dict(dur_ns=1)]))
    seg = next(d.glob("events-*.parquet"))
    seg.write_bytes(b"garbage")
    r = CliRunner().invoke(main, ["report", str(d)])
    assert r.exit_code == 20 and "corrupt" in r.output


def test_writer_refuses_nonempty_and_symlink(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(UsageError):
        RecordingWriter(tmp_path / "full", META)
    os.symlink(tmp_path / "elsewhere", tmp_path / "link")
    with pytest.raises(UsageError):
        RecordingWriter(tmp_path / "link", META)


def test_report_json_contract_keys(tmp_path):
    d = _write(tmp_path, _events([dict(dur_ns=3, event="unmap")]))
    r = CliRunner().invoke(main, ["report", str(d), "--format", "json"])
    assert r.exit_code == 0
    rep = json.loads(r.output)
    assert {"kernel", "duration_s", "events", "dropped", "latency", "violations"} <= rep.keys()
    assert set(rep["latency"][0]) >= {"hook", "callback", "event", "count", "p50_ns", "p90_ns", "p99_ns", "max_ns"}


def test_caller_classification():
    assert classify_secondary_tlb(["__mmu_notifier_arch_invalidate_secondary_tlbs", "flush_tlb_mm_range+0x1",
                                   "ptep_clear_flush"]) == "tlb_flush"
    assert classify_secondary_tlb(["__mmu_notifier_invalidate_range", "wp_page_copy+0x3"]) == "ptl_clear"
    assert classify_secondary_tlb(["__mmu_notifier_invalidate_range", "__mmu_notifier_invalidate_range_end",
                                   "unmap_vmas"]) == "range_end"
    assert caller_of(["__mmu_notifier_invalidate_range_start", "change_protection+0x10", "x"]) == "change_protection"


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_metadata_reader(tmp_path_factory, blob):
    d = tmp_path_factory.mktemp("fz")
    (d / "metadata.json").write_bytes(blob)
    try:
        Recording(d)
    except RecordingError:
        pass


def test_api_columns_are_stable_on_empty_recordings(tmp_path):
    """A clean recording's sleeps() (and a streamed one's hist()) have the
    columns of a full one, so that filters written for one work on the other;
    the schema matches what the writer really writes."""
    from mmntrace import synthetic
    from mmntrace.recording import EVENT_COLUMNS, HIST_COLUMNS, SLEEP_COLUMNS
    w = RecordingWriter(tmp_path / "empty", {"kernel": {"release": "x"}})
    w.finish(drops={"total": 0})
    r = Recording(tmp_path / "empty")
    s, ev, h = r.sleeps(), r.events(), r.hist()
    assert len(s) == len(ev) == len(h) == 0
    assert list(s.columns) == [c for c, _ in SLEEP_COLUMNS] and len(s[s.atomic]) == 0
    assert list(ev.columns) == [c for c, _ in EVENT_COLUMNS] and len(ev[ev.dur_ns > 1000]) == 0
    assert list(h.columns) == [c for c, _ in HIST_COLUMNS]
    assert list(r.events(columns=["ts_ns", "hook"]).columns) == ["ts_ns", "hook"]
    synthetic.write(tmp_path / "full", n_events=200, segments=1, violations=3)
    full = Recording(tmp_path / "full")
    assert set(full.events().columns) <= {c for c, _ in EVENT_COLUMNS}
    assert set(full.sleeps().columns) <= {c for c, _ in SLEEP_COLUMNS}


def test_api_derives_time_since_start_and_hex_mm(tmp_path):
    """events() and sleeps() give t_s (seconds since the recording started, the
    plots' time axis) and mm_hex (the mm as the kernel prints it), also when
    only they are asked for."""
    from mmntrace import synthetic
    synthetic.write(tmp_path / "rec", n_events=300, segments=2, violations=4)
    r = Recording(tmp_path / "rec")
    start = r.meta["start_ns"]
    for df in (r.events(), r.sleeps()):
        assert len(df)
        assert np.allclose(df["t_s"], (df["ts_ns"].astype("int64") - start) / 1e9)
        assert list(df["mm_hex"].astype(str)) == [hex(int(m)) for m in df["mm"]]
    only = r.events(columns=["t_s", "mm_hex", "hook"])
    assert list(only.columns) == ["t_s", "mm_hex", "hook"]
    assert np.allclose(only["t_s"], r.events()["t_s"])


def test_callbacks_by_the_entry_point_that_made_them(tmp_path):
    """The report's `via`: each callback's calls by the hook whose invocation
    made them. Before 6.6 invalidate_range_end calls the secondary-TLB ops
    itself; the text and HTML show the calls made from another entry point
    than the callback's hook (none where all ran under their own). The same
    rows from the events (per-event) and from the metadata (--aggregate)."""
    cb = "mmnt_secondary_tlb [mmnt_test]"
    rows = ([dict(kind="callback", hook="secondary_tlb", callback=cb, via="secondary_tlb")] * 3
            + [dict(kind="callback", hook="secondary_tlb", callback=cb, via="invalidate_range_end")] * 1
            + [dict(kind="callback", hook="invalidate_range_start", callback="s [m]", via="invalidate_range_start")] * 2
            + [dict(kind="hook")])
    rep = report.build(Recording(_write(tmp_path / "ev", _events(rows))))
    want = [{"hook": "invalidate_range_start", "callback": "s [m]", "via": "invalidate_range_start", "count": 2,
             "share": 1.0},
            {"hook": "secondary_tlb", "callback": cb, "via": "secondary_tlb", "count": 3, "share": 0.75},
            {"hook": "secondary_tlb", "callback": cb, "via": "invalidate_range_end", "count": 1, "share": 0.25}]
    assert rep["via"] == want
    text = render.text(rep, width=120)
    assert "Callbacks called from another entry point than their hook" in text
    line = next(ln for ln in text.splitlines() if "invalidate_range_end" in ln and "25.0%" in ln)
    assert "secondary_tlb" in line and "mmnt_secondary_tlb" in line
    assert "another entry point" in render.html(rep)
    # --aggregate: the same rows from the metadata the recorder writes
    meta_via = [{"hook": r["hook"], "callback": r["callback"], "via": r["via"], "count": r["count"]} for r in want]
    agg = report.build(Recording(_write(tmp_path / "agg", pd.DataFrame(), aggregate=True, via=meta_via)))
    assert agg["via"] == want
    # every callback under its own hook, or a recording from before via: no table
    plain = report.build(Recording(_write(tmp_path / "own", _events(rows[:3] + rows[4:]))))
    assert [r["via"] for r in plain["via"]] == ["invalidate_range_start", "secondary_tlb"]
    assert "another entry point" not in render.text(plain, width=120)
    old = report.build(Recording(_write(tmp_path / "old", _events(rows).drop(columns=["via"]))))
    assert old["via"] == [] and "another entry point" not in render.text(old, width=120)
