"""decode.columns() against a record-by-record reference: the chunked copy
and the run-wise command-name decode give every column exactly, whatever the
batch's size (chunk boundaries) and however the names repeat."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmntrace import decode

NAMES = [b"qemu-system-x86", b"notifier_bench", b"kworker/1:2", b"", b"a\xffb", b"0123456789abcdef",
         b"qemu-system-x8", b"python3"]


def _reference(recs: np.ndarray) -> dict[str, list]:
    """One record at a time, in plain Python."""
    fl = decode.FL
    out: dict[str, list] = {c: [] for c in decode.COLUMNS}
    for r in recs.tolist():
        f = dict(zip(recs.dtype.names, r))
        for name, field, _typ in decode._PLAIN:
            out[name].append(f[field])
        out["comm"].append(f["comm"].decode("utf-8", "replace"))
        for k in ("blockable", "atomic", "irqs_off", "must_not_sleep"):
            out[k].append(bool(f["flags"] & fl[k]))
        out["migration_disabled"].append(bool(f["rt"] & decode.RT_MIGRATE_OFF))
        out["rcu_read_side"].append(bool(f["rt"] & decode.RT_RCU))
    return out


def _batch(seed: int, n: int, runs: list[tuple[int, int]]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, n * decode.DTYPE.itemsize, dtype=np.uint8).tobytes()
    recs = decode.decode(raw).copy()
    names = np.repeat(np.array([NAMES[i] for i, _ in runs], dtype="S16"), [k for _, k in runs]) if runs else []
    m = min(n, len(names))
    recs["comm"][:m] = names[:m]
    return recs


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1),
       n=st.one_of(st.integers(0, 40), st.sampled_from([decode._CHUNK - 1, decode._CHUNK, decode._CHUNK + 1,
                                                           2 * decode._CHUNK + 3])),
       runs=st.lists(st.tuples(st.integers(0, len(NAMES) - 1), st.integers(1, 3000)), max_size=12))
def test_columns_equal_a_record_by_record_decode(seed, n, runs):
    recs = _batch(seed, n, runs)
    got, want = decode.columns(recs), _reference(recs)
    assert tuple(got) == decode.COLUMNS
    for c in decode.COLUMNS:
        assert len(got[c]) == n, c
        assert got[c].tolist() == want[c], c
        assert got[c].flags.c_contiguous, c


def test_column_types():
    cols = decode.columns(_batch(1, 5, [(0, 2), (1, 2), (0, 1)]))
    assert cols["comm"].tolist() == ["qemu-system-x86"] * 2 + ["notifier_bench"] * 2 + ["qemu-system-x86"]
    assert cols["comm"].dtype == np.dtype("U16")
    for name, _field, typ in decode._PLAIN:
        assert cols[name].dtype == np.dtype(typ), name
    assert cols["blockable"].dtype == np.bool_


@settings(max_examples=60, deadline=None)
@given(types=st.lists(st.sampled_from(sorted(decode.REC.values())), max_size=300), offset=st.integers(0, 3))
def test_split_gives_each_types_records_whole_and_in_order(types, offset):
    """Records by type, as a boolean selection gives them (the split selects
    opaque items where it can, and leaves a type that is all of the batch as
    it is): every field, the order kept, a slice of a larger batch too."""
    from mmntrace.layout import record_dtype
    a = np.zeros(len(types) + offset, record_dtype())
    a["type"][offset:] = types
    a["seq"] = np.arange(len(a))
    a["comm"] = b"qemu"
    recs = np.frombuffer(a.tobytes(), a.dtype)[offset:]
    parts = decode.split(recs)
    assert set(parts) == set(decode.REC)
    for name, t in decode.REC.items():
        want = recs[recs["type"] == t]
        assert parts[name].dtype == recs.dtype and parts[name].tobytes() == want.tobytes(), name


CBS = decode.CARRY_SLOTS
CB_FIELDS = decode.CARRY_FIELDS


def _stream(draw_types, ncbs, rng):
    """A stream as the BPF side writes it: hook records carrying 0..CBS callbacks
    (cb_* filled up to ncb, stale values past it), callbacks sent on their own,
    others."""
    a = np.zeros(len(draw_types), decode.DTYPE)
    a["type"] = draw_types
    for f in ("hook", "flags", "rt", "cpu", "pid", "tid", "preempt_count", "ret", "event", "stack_id", "ts_ns",
              "dur_ns", "mm", "start", "end", "func", "addr", "kind"):
        a[f] = rng.integers(0, 200, len(a))
    a["seq"] = (rng.integers(0, 4, len(a)).astype(np.uint64) << np.uint64(48)) | rng.integers(0, 1 << 40, len(a)).astype(np.uint64)
    a["comm"] = b"qemu"
    for f in CB_FIELDS:
        a[f] = rng.integers(0, 1 << 31, a[f].shape).astype(a[f].dtype)
    a["ncb"] = np.where(a["type"] == decode.REC["hook"], ncbs[:len(a)], 0)
    return a


def _carried_reference(h: np.ndarray) -> list[dict]:
    """A hook record's carried callbacks, one at a time, as their own records would have been."""
    out = []
    for r in h:
        for i in range(int(r["ncb"])):
            out.append({"type": decode.REC["callback"], "hook": int(r["cb_hook"][i]), "flags": int(r["cb_flags"][i]),
                        "rt": int(r["cb_rt"][i]), "cpu": int(r["cpu"]), "pid": int(r["pid"]), "tid": int(r["tid"]),
                        "preempt_count": int(r["cb_pc"][i]), "ret": int(r["cb_ret"][i]), "event": int(r["event"]),
                        "stack_id": -1, "seq": (int(r["seq"]) >> 32 << 32) | int(r["cb_seq"][i]),
                        "ts_ns": int(r["ts_ns"]) + int(r["cb_ts"][i]), "dur_ns": int(r["cb_dur"][i]),
                        "mm": int(r["mm"]), "start": int(r["start"]), "end": int(r["end"]),
                        "func": int(r["cb_func"][i]), "addr": int(r["seq"]), "kind": int(r["hook"]),
                        "comm": bytes(r["comm"]), "ncb": 0})
    return out


def _as_dicts(recs: np.ndarray) -> list[dict]:
    keys = [k for k in recs.dtype.names if k not in CB_FIELDS]
    return [{k: (bytes(r[k]) if k == "comm" else int(r[k])) for k in keys} for r in recs]


@settings(max_examples=60, deadline=None)
@given(types=st.lists(st.sampled_from([1, 1, 1, 2, 3, 4]), max_size=200),
       ncbs=st.lists(st.integers(0, CBS), min_size=200, max_size=200), seed=st.integers(0, 2**32 - 1))
def test_carried_callbacks_are_the_records_they_stand_for(types, ncbs, seed):
    """Each callback a hook record carries decodes to the CALLBACK record it
    would have sent: its own fields from cb_*, the rest from its hook (kind:
    the hook, addr: the hook's seq, seq: the hook's high half and its own low
    one); split() puts them after the callbacks sent on their own, records()
    right after their hook, everything else as it was."""
    a = _stream(types, np.array(ncbs), np.random.default_rng(seed))
    hooks = a[a["type"] == decode.REC["hook"]]
    want = _carried_reference(hooks)
    assert _as_dicts(decode.carried(hooks)) == want
    parts = decode.split(decode.decode(a.tobytes()))
    assert _as_dicts(parts["callback"]) == _as_dicts(a[a["type"] == decode.REC["callback"]]) + want
    assert parts["hook"].tobytes() == hooks.tobytes()
    stream = []
    for r in a:
        stream += _as_dicts(r[None]) + _carried_reference(r[None])
    assert _as_dicts(decode.records(a.tobytes())) == stream
    assert decode.carried_count(a.tobytes()) == len(want)
