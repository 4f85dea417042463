"""A streaming recorder's segments (record.segment_tables): written without
pandas, and read back exactly as the frames of the same records
(symbolize.Symbolizer.frames), hooks, callbacks and sleeps."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from mmntrace import record, store, symbolize
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
    recorder's memory (BENCHMARKS.md, peak RSS)."""
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
sys.modules["pandas"] = None        # an import of it fails here
from mmntrace import record, store, symbolize
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
