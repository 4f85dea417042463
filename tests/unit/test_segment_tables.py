"""A streaming recorder's segments (record.segment_tables): written without
pandas, and read back exactly as the frames of the same records
(symbolize.Symbolizer.frames), hooks, callbacks and sleeps."""

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from mmntrace import decode, kernel, record, store, symbolize
from mmntrace.recording import Recording

from symfakes import FakeTracer, Features, batch


def records():
    h, c, s = batch(rtype=1), batch(rtype=2), batch(rtype=3)
    c["comm"][::7] = b"other"       # names in runs, and back
    h["comm"][100:] = b"kworker/0:1"
    h["func"] = np.where(h["func"] == 0, 0, h["func"] | (0xffffffff << 32))   # kernel addresses: hashed
    mixed = np.concatenate([h, c, s])
    return mixed[np.random.default_rng(3).permutation(len(mixed))], h, c, s


def write(path, events, sleeps):
    w = store.RecordingWriter(path, {}, hand_over=False)
    w.write_segment(events, sleeps)
    w.finish()
    w.close()
    r = Recording(path)
    return r.events().drop(columns="t_s"), r.sleeps().drop(columns="t_s")    # (t_s: each recording's start)


def test_segments_read_back_as_the_frames_of_the_same_records(tmp_path):
    raw, h, c, s = records()
    sym = symbolize.Symbolizer(FakeTracer(), Features())
    tables = record.segment_tables(sym, raw.tobytes())
    got = write(tmp_path / "new", tables["events"], tables["sleeps"])
    split = {k: raw[raw["type"] == t] for k, t in (("hook", 1), ("callback", 2), ("sleep", 3))}
    frames = pd.concat([sym.frames(split["hook"], "hook"), sym.frames(split["callback"], "callback")],
                       ignore_index=True)
    want = write(tmp_path / "old", frames, sym.frames(split["sleep"], "sleep"))
    for g, w in zip(got, want):
        pd.testing.assert_frame_equal(g, w)
    assert len(got[0]) == len(h) + len(c) and len(got[1]) == len(s)
    assert set(got[0]["comm"]) == {"qemu", "other", "kworker/0:1"}
    assert got[1]["stack"].map(len).sum() > 0


def test_redacted_segments_keep_names_not_addresses():
    raw, *_ = records()
    t = record.segment_tables(symbolize.Symbolizer(FakeTracer(), Features()), raw.tobytes(), redact=True)
    for col in ("mm", "start", "end", "func"):
        assert not any(t["events"].column(col).to_pylist()), col
    assert "kvm_mmu_notifier_invalidate_range_start [kvm]" in t["events"].column("callback").to_pylist()


def test_a_segment_is_written_without_pandas(tmp_path):
    """pandas' import (~75 MiB) and its frames were most of a streaming
    recorder's memory (BENCHMARKS.md, peak RSS); pyarrow.compute, which
    pyarrow's Array.take imports, took 4 MiB of its heap, and its import
    about a second of its start in the lab (store._take_strings)."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
sys.modules["pandas"] = None        # an import of it fails here
sys.modules["pyarrow.compute"] = None       # and of this
from mmntrace import kernel, record, store, symbolize
from symfakes import FakeTracer, Features, batch
import numpy as np
raw = np.concatenate([batch(rtype=1), batch(rtype=2), batch(rtype=3)]).tobytes()
t = record.segment_tables(symbolize.Symbolizer(FakeTracer(), Features()), raw)
w = store.RecordingWriter({str(tmp_path / "rec")!r}, {{}}, hand_over=False)
w.write_segment(t["events"], t["sleeps"])
print(w.meta["events"], w.meta["sleeps"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["800", "400"]


def test_names_taken_by_numpy_are_pyarrows_take():
    """store._take_strings and _take_lists (a column of few distinct names, or
    of stacks, made from each record's code) give what pyarrow's take gives:
    None, empty names and lists, multi-byte characters, no records at all."""
    import pyarrow as pa
    from mmntrace.decode import Coded
    rng = np.random.default_rng(7)
    name_sets = (["a", "bcd", None, "", "kvm_mmu_notifier_invalidate_range_start [kvm]", "é€"], [None], [""], ["x"])
    list_sets = ([[], ["a", "b"], ["flush_tlb_mm_range+0x10", "é"]], [[]], [["x"]], [["a"], [], ["b", "c", "d"]])
    for sets, typ in ((name_sets, pa.large_string()), (list_sets, pa.list_(pa.string()))):
        for values in sets:
            names = np.empty(len(values), object)
            names[:] = values
            for n in (0, 1, 7, 1000):
                codes = rng.integers(0, len(values), n)
                got = store._arrow(Coded(codes, names))
                got.validate(full=True)
                assert got.type == typ
                assert got.to_pylist() == [values[c] for c in codes]
                assert got.equals(pa.array(names, type=typ).take(pa.array(codes)))


def test_discovery_records_alone_make_no_segment_and_leave_pyarrow_unimported():
    """--aggregate sends discovery and registration records only: its segment
    worker turned each batch into empty tables, importing pyarrow (1.3 s of the
    recorder's CPU in the 6.12 guest, during a new subscriber's first calls,
    and its memory) for nothing."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from mmntrace import record, symbolize
from symfakes import FakeTracer, Features, batch
raw = batch(rtype=4).tobytes()
assert record.segment_tables(symbolize.Symbolizer(FakeTracer(), Features()), raw) is None
print("pyarrow" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"]


def _segment_in_slices(path, monkeypatch, recs, slice_events):
    """The segment worker's job on ``recs``, ``slice_events`` at a time: (the
    finished writer, the session, the symbolizer)."""
    monkeypatch.setattr(record, "SLICE_EVENTS", slice_events)
    sym = symbolize.Symbolizer(FakeTracer(), Features())
    w = store.RecordingWriter(path, {}, hand_over=False)
    session = SimpleNamespace(counts={"violations": 0}, redact=False, _wlock=threading.Lock())
    record.Session._write_segment(session, w, sym, recs.tobytes())
    w.finish()
    w.close()
    return w, session, sym


def test_a_segment_made_a_slice_at_a_time_reads_back_as_one(tmp_path, monkeypatch):
    """The segment worker converts a job's records SLICE_EVENTS at a time, each
    slice a row group of the segment's files (its memory a slice's, not the
    job's): read back, the same rows as the whole job's frames, hooks before
    callbacks as the rows came, a slice of sleeps alone and one of discovery
    records alone included."""
    raw, h, c, s = records()
    disc = batch(rtype=4)
    # slices of 400: sleeps alone, discovery records alone, then hooks and callbacks mixed
    ordered = np.concatenate([s, disc, raw[raw["type"] != 3]])
    w, session, sym = _segment_in_slices(tmp_path / "new", monkeypatch, ordered, 400)
    assert (w.meta["segments"], w.meta["events"], w.meta["sleeps"]) == (1, len(h) + len(c), len(s))
    assert session.counts["violations"] == len(s)
    files = sorted(p.name for p in (tmp_path / "new").glob("*.parquet"))
    assert files == ["events-000001.parquet", "sleeps-000001.parquet"]
    assert pq.ParquetFile(tmp_path / "new" / files[0]).num_row_groups == 2     # 800 hook and callback records
    r = Recording(tmp_path / "new")
    got = (r.events().drop(columns="t_s").sort_values("kind", key=lambda k: k != "hook", kind="stable").reset_index(drop=True),
           r.sleeps().drop(columns="t_s"))
    events = raw[raw["type"] != 3]
    frames = pd.concat([sym.frames(events[events["type"] == 1], "hook"),
                        sym.frames(events[events["type"] == 2], "callback")], ignore_index=True)
    want = write(tmp_path / "old", frames, sym.frames(s, "sleep"))
    for g, wnt in zip(got, want):
        pd.testing.assert_frame_equal(g, wnt)


def _carrying_hooks(n=400):
    """Hook records that carry 0-2 callbacks each, as the BPF side streams them."""
    rng = np.random.default_rng(11)
    h = batch(n, rtype=1)
    h["func"] = 0
    h["seq"] = (np.uint64(1) << np.uint64(48)) | (np.arange(n, dtype=np.uint64) * np.uint64(8))
    h["ncb"] = rng.integers(0, decode.CARRY_SLOTS + 1, n)
    h["cb_func"] = rng.choice([0xa, 0xb], h["cb_func"].shape)
    h["cb_hook"] = rng.choice([kernel.HOOK_START, kernel.HOOK_SECONDARY_TLB], h["cb_hook"].shape)
    h["cb_ts"] = rng.integers(0, 1000, h["cb_ts"].shape)
    h["cb_dur"] = rng.integers(0, 5000, h["cb_dur"].shape)
    h["cb_seq"] = (np.arange(n)[:, None] * 8 + 1 + np.arange(decode.CARRY_SLOTS)).astype(np.uint32)
    return h


def test_slices_cover_every_record_once_with_at_most_their_events():
    """record.slices: whole records, in order, none twice; each slice at most
    ``most`` events (a record and the callbacks it carries), or one record;
    and as long as that allows."""
    h = _carrying_hooks()
    size, ev = decode.DTYPE.itemsize, 1 + h["ncb"].astype(int)
    assert record.slices(b"", 5) == []
    for most in (1, 2, 3, 7, 150, 10_000):
        sl = record.slices(h.tobytes(), most)
        assert sl[0][0] == 0 and sl[-1][1] == len(h) * size
        assert all(a[1] == b[0] for a, b in zip(sl, sl[1:]))
        for lo, hi in sl:
            i, j = lo // size, hi // size
            assert ev[i:j].sum() <= most or j - i == 1
            if j < len(h):
                assert ev[i:j + 1].sum() > most


def test_a_segment_of_hooks_that_carry_callbacks_reads_back_as_their_records(tmp_path, monkeypatch):
    """Hook records that carry callbacks, made into a segment in slices of 150
    events: the rows are the hooks' and the carried callbacks' as records of
    their own would have made them (decode.carried), none lost or doubled at a
    slice's edge."""
    h = _carrying_hooks()
    w, _session, sym = _segment_in_slices(tmp_path / "new", monkeypatch, h, 150)
    cbs = decode.carried(h)
    assert w.meta["events"] == len(h) + len(cbs) == len(h) + int(h["ncb"].sum())
    got = Recording(tmp_path / "new").events().drop(columns="t_s")
    want, _ = write(tmp_path / "old", pd.concat([sym.frames(h, "hook"), sym.frames(cbs, "callback")],
                                                ignore_index=True), sym.frames(h[:0], "sleep"))
    key = ["kind", "seq"]
    pd.testing.assert_frame_equal(got.sort_values(key).reset_index(drop=True),
                                  want.sort_values(key).reset_index(drop=True))
