#!/usr/bin/env python3
"""Host decode throughput: raw ring-buffer bytes -> columns, no BPF needed.

    .venv/bin/python bench/decode_bench.py [--events 2000000] [--json-out FILE]

Compares mmntrace's decode (one numpy.frombuffer over the whole batch, then
column views: mmntrace.decode.decode + columns) with the naive decoder many
bcc tools use: one ctypes structure per event (``ct.cast(data,
POINTER(Record)).contents``-style, here ``Record.from_buffer_copy``) whose
fields are appended to Python lists. Both produce the same columns; the
check compares them. The batch is real-format records: struct mmnt_record
from bpf/mmntrace.h, with varied field values (command names in runs of
several tasks, as the ring buffer holds them).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmntrace import decode  # noqa: E402
from mmntrace.layout import record_dtype  # noqa: E402

GOAL_RATIO = 10.0


def make_batch(n: int) -> bytes:
    dt = record_dtype()
    rng = np.random.default_rng(1)
    a = np.zeros(n, dt)
    a["type"] = rng.choice([1, 2, 3], n, p=[0.5, 0.49, 0.01])
    a["hook"] = rng.integers(0, 3, n)
    a["flags"] = rng.integers(0, 16, n)
    a["cpu"] = rng.integers(0, 64, n)
    a["pid"] = rng.integers(1, 1 << 22, n)
    a["tid"] = a["pid"]
    a["event"] = rng.integers(0, 8, n)
    a["stack_id"] = rng.integers(-1, 1000, n)
    a["seq"] = np.arange(n)
    a["ts_ns"] = np.cumsum(rng.integers(100, 5000, n)).astype(np.uint64)
    a["dur_ns"] = rng.integers(50, 100000, n)
    a["mm"] = np.uint64(0xffff888000000000) + rng.integers(0, 16, n).astype(np.uint64) * np.uint64(0x1000)
    a["start"] = rng.integers(0, 1 << 46, n) & ~0xfff
    a["end"] = a["start"] + 0x1000
    # the command names come in runs (a task's hook record and its callbacks'
    # are written together), of several tasks: each run's name is decoded once
    names = np.array([b"qemu-system-x86", b"notifier_bench", b"kworker/1:2", b"khugepaged", b"kcompactd0",
                      b"ambient_bench", b"systemd-journal", b"python3"], dtype="S16")
    runs = rng.geometric(1 / 6, n)
    runs = runs[:int(np.searchsorted(np.cumsum(runs), n)) + 1]
    a["comm"] = np.repeat(names[rng.integers(0, len(names), len(runs))], runs)[:n]
    return a.tobytes()


def ctypes_struct():
    """The same layout as a ctypes.Structure, built from the numpy dtype
    (which mmntrace.layout derives from bpf/mmntrace.h)."""
    dt = record_dtype()
    ctmap = {"u1": ctypes.c_uint8, "u2": ctypes.c_uint16, "i2": ctypes.c_int16, "u4": ctypes.c_uint32, "i4": ctypes.c_int32, "u8": ctypes.c_uint64,
             "i8": ctypes.c_int64}
    fields = []
    for name in dt.names:
        f = dt.fields[name][0]
        base, shape = f.subdtype or (f, ())      # arrays (``__u8 pad[7]``) as ctypes arrays
        if base.kind == "S":
            ct = ctypes.c_char * base.itemsize
        else:
            ct = ctmap[base.str.lstrip("<|=")]
        for n in reversed(shape):
            ct = ct * n
        fields.append((name, ct))

    class Rec(ctypes.Structure):
        _fields_ = fields
    assert ctypes.sizeof(Rec) == dt.itemsize, (ctypes.sizeof(Rec), dt.itemsize)
    return Rec


COLS = ("ts_ns", "cpu", "pid", "tid", "mm", "hook", "event", "start", "end", "flags", "preempt_count",
        "dur_ns", "ret", "seq", "stack_id", "func", "addr", "kind", "comm")


def naive(raw: bytes, Rec) -> dict:
    size = ctypes.sizeof(Rec)
    out = {c: [] for c in COLS}
    for off in range(0, len(raw), size):
        r = Rec.from_buffer_copy(raw, off)
        for c in COLS[:-1]:
            out[c].append(getattr(r, c))
        out["comm"].append(r.comm.decode("utf-8", "replace"))
    return out


def fast(raw: bytes) -> dict:
    return decode.columns(decode.decode(raw))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--naive-events", type=int, default=200_000,
                    help="events for the (slow) ctypes decoder; its rate is per event")
    ap.add_argument("--json-out", type=Path)
    a = ap.parse_args()
    raw = make_batch(a.events)
    Rec = ctypes_struct()
    best = min(_timed(lambda: fast(raw)) for _ in range(3))
    n_naive = min(a.naive_events, a.events)
    sub = raw[:n_naive * ctypes.sizeof(Rec)]
    t_naive = _timed(lambda: naive(sub, Rec))
    # the two decoders agree, column by column
    f, nv = fast(sub), naive(sub, Rec)
    for c in ("ts_ns", "pid", "mm", "start", "dur_ns", "stack_id", "seq"):
        assert np.array_equal(f[c], np.asarray(nv[c], dtype=f[c].dtype)), c
    assert np.array_equal(f["hook_id"], np.asarray(nv["hook"], dtype=np.uint8))
    assert list(f["comm"]) == nv["comm"]
    fast_rate = a.events / best
    naive_rate = n_naive / t_naive
    res = {"events": a.events, "mmntrace_events_per_s": round(fast_rate), "ctypes_events_per_s": round(naive_rate),
           "ratio": round(fast_rate / naive_rate, 1), "goal_ratio": GOAL_RATIO,
           "goal_met": fast_rate / naive_rate >= GOAL_RATIO}
    print(f"decode: mmntrace {fast_rate / 1e6:.2f} M events/s, per-event ctypes {naive_rate / 1e6:.3f} M events/s: "
          f"{res['ratio']}x (goal >= {GOAL_RATIO:.0f}x)")
    if a.json_out:
        a.json_out.parent.mkdir(parents=True, exist_ok=True)
        a.json_out.write_text(json.dumps(res, indent=1))
    return 0 if res["goal_met"] else 1


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    sys.exit(main())
