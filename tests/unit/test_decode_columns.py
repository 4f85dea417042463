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
