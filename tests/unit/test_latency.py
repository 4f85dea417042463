"""mmntrace.latency (numpy alone) gives the daemon's windows the latency
rows that aggregate.latency_from_hist gives a recording's DataFrame, and a
window with no violation is summarized and written without pandas."""

import subprocess
import sys
import textwrap

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from mmntrace import aggregate, latency

HOOKS = ["invalidate_range_start", "invalidate_range_end", "secondary_tlb", "release", "change_pte",
         "__mmu_notifier_invalidate_range_start"]     # a kernel symbol: the same hook as the first
CALLBACKS = [None, "kvm_mmu_notifier_invalidate_range_start [kvm]", "mmnt_release [mmnt_test]"]
EVENTS = [None, "unmap", "clear", "protection_vma"]

row = st.fixed_dictionaries({"hook": st.sampled_from(HOOKS), "callback": st.sampled_from(CALLBACKS),
                             "event": st.sampled_from(EVENTS), "slot": st.integers(0, 70),
                             "count": st.integers(0, 10**9)})
total = st.fixed_dictionaries({"hook": st.sampled_from(HOOKS), "callback": st.sampled_from(CALLBACKS),
                               "event": st.sampled_from(EVENTS), "count": st.integers(0, 10**6),
                               "sum_ns": st.integers(0, 10**12)})


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(row, max_size=40), totals=st.lists(total, max_size=10),
       duration=st.one_of(st.none(), st.floats(0.5, 100)))
def test_rows_equal_the_dataframe_path(rows, totals, duration):
    want = aggregate.latency_from_hist(pd.DataFrame(rows, columns=["hook", "callback", "event", "slot", "count"]),
                                       totals, duration)
    got, _cdfs = latency.rows(latency.groups_from_rows(rows), totals, duration)
    assert got == want


def test_a_window_without_violations_imports_no_pandas(tmp_path):
    """The daemon's summary and partitions for a window with histograms only."""
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from mmntrace import daemon, latency
        rows = [{{"window": "w0", "start_ns": 7, "hook": "invalidate_range_start", "callback": None,
                 "event": "unmap", "slot": 11, "count": 4}},
                {{"window": "w0", "start_ns": 7, "hook": "invalidate_range_start", "callback": "cb [kvm]",
                 "event": "unmap", "slot": 10, "count": 4}}]
        lat, _ = latency.rows(latency.groups_from_rows(rows), [], 2.0)
        assert [r["count"] for r in lat] == [4, 4] and lat[0]["callback"] is None and lat[0]["p50_ns"] == 2047
        summary = {{"window": "w0", "index": 0, "start_time": 1.7e9, "latency": lat, "violations": []}}
        paths = daemon.write_window(Path({str(tmp_path)!r}), "h", summary, rows, None)
        assert set(paths) == {{"hist", "summary"}}, paths
        print("pandas" in sys.modules)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
    import pyarrow.parquet as pq
    (p,) = (tmp_path / "hist").rglob("*.parquet")
    t = pq.read_table(p)
    assert [(f.name, str(f.type)) for f in t.schema] == [(n, ty) for n, ty in
                                                         __import__("mmntrace.daemon").daemon.HIST_COLUMNS]
    assert t.column("count").to_pylist() == [4, 4] and t.column("callback").to_pylist() == [None, "cb [kvm]"]
