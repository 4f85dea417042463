"""Record-time symbolization (symbolize.Symbolizer.frames): computed once per
distinct callback, stack, hook, event, and yet the same, record by record, as
symbolizing each record on its own."""

import numpy as np
import pandas as pd

from mmntrace import decode, kernel, symbolize

from symfakes import FakeTracer, Features, batch


def one_by_one(sym, recs, kind):
    """What frames() gives, record by record."""
    rows = []
    for r in recs:
        st = sym.stack(int(r["stack_id"]))
        row = {"hook": sym.hook_names.get(int(r["hook"]), str(int(r["hook"]))),
               "event": sym.events.get(int(r["event"])) if r["event"] >= 0 else None,
               "callback": sym.cb_sym(int(r["func"]))}
        if kind == "sleep":
            row.update(rule=decode.SLEEP_KIND.get(int(r["kind"]), "unknown"),
                       sleeper=sym.sym(int(r["addr"])) if r["addr"] else None, stack=st)
        else:
            caller = symbolize.caller_of(st)
            cls = symbolize.classify_secondary_tlb(st)
            if kind == "hook" and r["stack_id"] < 0 and r["addr"]:    # no stack: the return address
                n = sym.sym(int(r["addr"]))
                caller = symbolize.caller_of([n]) if n else None
                cls = symbolize.classify_secondary_tlb(["", n]) if n else None
            row.update(caller=caller, caller_class=cls if r["hook"] == kernel.HOOK_SECONDARY_TLB else None)
            if kind == "callback":
                row["via"] = sym.hook_names.get(int(r["kind"])) if r["kind"] != kernel.HOOK_NONE else None
        rows.append(row)
    return rows


def same(a, b):
    if isinstance(b, list):
        return list(a) == b
    return (b is None and (a is None or pd.isna(a))) or a == b


def test_frames_match_symbolizing_each_record():
    sym = symbolize.Symbolizer(FakeTracer(), Features())
    for rtype, kind in ((2, "callback"), (1, "hook"), (3, "sleep")):
        recs = batch(rtype=rtype)
        df = sym.frames(recs, kind)
        want = one_by_one(sym, recs, kind)
        assert len(df) == len(want)
        for col in want[0]:
            got = df[col].tolist()
            bad = [i for i, (g, w) in enumerate(zip(got, (r[col] for r in want))) if not same(g, w)]
            assert not bad, (kind, col, bad[:3], [got[i] for i in bad[:3]], [want[i][col] for i in bad[:3]])
        # hooks by their stable names on every kernel (the kernel's symbol goes to the metadata)
        assert set(df["hook"].astype(str)) == {"invalidate_range_start", "secondary_tlb"}
        if kind == "callback":
            assert set(df["via"].dropna().astype(str)) == {"invalidate_range_start", "invalidate_range_end",
                                                           "secondary_tlb"}
        # the names are the frame's strings, as they were when each record made its own
        for col in ("event", "callback") + (("caller",) if kind != "sleep" else ("sleeper", "rule")):
            assert pd.api.types.is_string_dtype(df[col]), (col, df[col].dtype)


def test_a_batch_without_any_name_keeps_its_columns():
    sym = symbolize.Symbolizer(FakeTracer(), Features())
    recs = batch(rtype=1)
    recs["stack_id"] = -1
    recs["addr"] = 0         # nor a return address (range start/end by kprobe carry one)
    recs["func"] = 0
    df = sym.frames(recs, "hook")
    assert df["caller"].isna().all() and df["caller_class"].isna().all() and df["callback"].isna().all()


def test_the_recorder_starts_without_pandas_or_pyarrow():
    """An --aggregate recorder imports pandas and pyarrow only when it writes a
    table: at start-up they would sit beside clang's memory (peak RSS)."""
    import subprocess
    import sys
    code = ("import sys, mmntrace.cli, mmntrace.record, mmntrace.tracer, mmntrace.store, mmntrace.decode; "
            "print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_a_secondary_tlb_call_without_a_stack_is_classed_by_its_return_address():
    """x86, kprobe: the secondary-TLB hook's caller is its return address, no
    unwind (bpf/mmntrace.bpf.c hook_entry); the class is that caller's."""
    sym = symbolize.Symbolizer(FakeTracer(), Features())
    recs = batch(n=4, rtype=1)
    recs["hook"] = [kernel.HOOK_SECONDARY_TLB, kernel.HOOK_SECONDARY_TLB, kernel.HOOK_START, kernel.HOOK_SECONDARY_TLB]
    recs["stack_id"] = [-1, -1, -1, 1]
    recs["addr"] = [0x3000, 0x1000, 0x3000, 0]
    df = sym.frames(recs, "hook")
    assert df["caller"].tolist() == ["tlb_finish_mmu", "mutex_lock", "tlb_finish_mmu", "zap_pte_range"]
    assert [None if pd.isna(x) else x for x in df["caller_class"]] == ["tlb_flush", "ptl_clear", None, "tlb_flush"]


def test_factorize_kernel_addresses_near_each_other_and_far_apart():
    """Codes by a table for values within 2^16 of each other (one callback's
    address: a range of 0), by hashing for the rest; the distinct values as
    they were, whatever their size or sign."""
    top = np.uint64(0xffffffffc0a81230)
    cases = [np.full(5, top), np.array([top, top + np.uint64(8), top], np.uint64),
             np.array([0, top, 5, top], np.uint64), np.array([-1, 3, -1, 2], np.int32),
             np.array([7, 7, 9], np.uint8), np.zeros(0, np.uint64)]
    for v in cases:
        codes, uniq = symbolize._factorize(v)
        assert uniq.dtype == v.dtype and len(set(uniq.tolist())) == len(uniq)
        assert uniq[codes].tolist() == v.tolist()
