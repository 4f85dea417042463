"""hist.parquet written from plain columns (what an --aggregate recorder
does at its stop, without importing pandas) reads back as the DataFrame
the reader promises."""

import subprocess
import sys
import textwrap

import numpy as np

from mmntrace.recording import HIST_COLUMNS, Recording
from mmntrace.store import RecordingWriter


def _columns():
    return {"func": np.array([0, 0xffffffffc0a01230, 0xffffffffc0a01230], np.uint64),
            "hook_id": np.array([0, 0, 1], np.uint8), "event_id": np.array([-1, 2, 2], np.int32),
            "slot": np.array([11, 12, 13], np.int64), "count": np.array([5, 7, 9], np.int64),
            "hook": ["invalidate_range_start"] * 2 + ["invalidate_range_end"],
            "event": [None, "unmap", "unmap"], "callback": [None, "kvm_mmu_notifier_invalidate_range_start", None]}


def test_columns_read_back_with_the_readers_types(tmp_path):
    w = RecordingWriter(tmp_path / "r", {"aggregate": True}, hand_over=False)
    w.write_hist(_columns())
    w.finish()
    w.close()
    h = Recording(tmp_path / "r").hist()
    assert len(h) == 3
    for name, typ in HIST_COLUMNS:
        if typ is not object:
            assert h[name].dtype == np.dtype(typ), name
    assert h["func"].tolist() == [0, 0xffffffffc0a01230, 0xffffffffc0a01230]
    assert h["event"].tolist()[1:] == ["unmap", "unmap"] and h["event"].isna().tolist()[0]
    assert h["count"].sum() == 21


def test_writing_columns_does_not_import_pandas(tmp_path):
    code = textwrap.dedent(f"""
        import sys, numpy as np
        from mmntrace.store import RecordingWriter
        w = RecordingWriter({str(tmp_path / "r")!r}, {{}}, hand_over=False)
        w.write_hist({{"func": np.array([1], np.uint64), "hook": ["x"], "event": [None]}})
        w.finish()
        print("pandas" in sys.modules)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_arrow_table_strings_numbers_and_nulls():
    import pyarrow as pa
    from mmntrace.store import arrow_table
    t = arrow_table({"n": np.array([3, -1], np.int32), "f": np.array([0.5, 2.0]), "s": ["é", None],
                     "none": [None, None]})
    t.validate(full=True)
    assert t.schema.field("n").type == pa.int32() and t.schema.field("s").type == pa.string()
    assert t.to_pydict() == {"n": [3, -1], "f": [0.5, 2.0], "s": ["é", None], "none": [None, None]}
    e = arrow_table({"a": np.zeros(0, np.uint64), "b": []})
    assert e.num_rows == 0 and e.schema.field("b").type == pa.string()
