"""Pure decode: raw ring-buffer bytes -> columns. No I/O, no kernel access.

Every record is a fixed-size ``struct mmnt_record`` (bpf/mmntrace.h), so a
whole batch decodes with one ``numpy.frombuffer``; per-type tables are
boolean-mask selections of it.
"""

from __future__ import annotations

import numpy as np

from .layout import header, record_dtype

_H = header()
REC = {k[len("MMNT_REC_"):].lower(): v for k, v in _H.enums["mmnt_type"].items()}
FL = {k[len("MMNT_FL_"):].lower(): v for k, v in _H.defines.items() if k.startswith("MMNT_FL_")}
RT_MIGRATE_OFF, RT_RCU = _H.defines["MMNT_RT_MIGRATE_OFF"], _H.defines["MMNT_RT_RCU"]
SLEEP_KIND = {_H.defines["MMNT_SLEEP_SWITCH"]: "sleep", _H.defines["MMNT_SLEEP_MIGHT"]: "might_sleep",
              _H.defines["MMNT_SLEEP_COUNTED"]: "sleep"}
DTYPE = record_dtype()


class DecodeError(ValueError):
    pass


def decode(raw: bytes | bytearray | memoryview) -> np.ndarray:
    """Raw bytes (a whole number of records) -> structured array of records."""
    if len(raw) % DTYPE.itemsize:
        raise DecodeError(f"{len(raw)} bytes is not a whole number of {DTYPE.itemsize}-byte records")
    return np.frombuffer(raw, DTYPE)


def split(recs: np.ndarray) -> dict[str, np.ndarray]:
    """Records by type name: hook, callback, sleep, ops, register."""
    return {name: recs[recs["type"] == t] for name, t in REC.items()}


def _comm(c: np.ndarray) -> np.ndarray:
    """Decode the few distinct command names once, not every record's
    (np.char.decode is a Python-level loop: it took 2/3 of the decode time)."""
    if len(c) == 0:
        return np.zeros(0, "U16")
    # exact factorization: the 16 bytes as two u64 halves (numpy's unique
    # sorts; pandas' hashing would pull pandas into the recorder's start-up)
    halves = np.ascontiguousarray(c).view(np.uint64).reshape(-1, 2)
    _ua, a = np.unique(halves[:, 0], return_inverse=True)
    ub, b = np.unique(halves[:, 1], return_inverse=True)
    uniq, codes = np.unique(a.astype(np.int64) * len(ub) + b, return_inverse=True)
    first = np.zeros(len(uniq), np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]       # one record per distinct name
    names = np.array([bytes(x).decode("utf-8", "replace") for x in c[first]], dtype="U16")
    return names[codes]


def columns(recs: np.ndarray) -> dict[str, np.ndarray]:
    """Hook/callback/sleep records -> plain columns (flags expanded to booleans)."""
    flags = recs["flags"]
    return {
        "ts_ns": recs["ts_ns"].astype(np.uint64),
        "cpu": recs["cpu"].astype(np.uint32),
        "pid": recs["pid"].astype(np.uint32),
        "tid": recs["tid"].astype(np.uint32),
        "comm": _comm(recs["comm"]),
        "mm": recs["mm"].astype(np.uint64),
        "hook_id": recs["hook"].astype(np.uint8),
        "event_id": recs["event"].astype(np.int32),
        "start": recs["start"].astype(np.uint64),
        "end": recs["end"].astype(np.uint64),
        "blockable": (flags & FL["blockable"]) != 0,
        "atomic": (flags & FL["atomic"]) != 0,
        "irqs_off": (flags & FL["irqs_off"]) != 0,
        "must_not_sleep": (flags & FL["must_not_sleep"]) != 0,
        "preempt_count": recs["preempt_count"].astype(np.uint32),
        # PREEMPT_RT (always False elsewhere): a spinlock_t held sets both
        "migration_disabled": (recs["rt"] & RT_MIGRATE_OFF) != 0,
        "rcu_read_side": (recs["rt"] & RT_RCU) != 0,
        "dur_ns": recs["dur_ns"].astype(np.uint64),
        "ret": recs["ret"].astype(np.int32),
        "seq": recs["seq"].astype(np.uint64),
        "stack_id": recs["stack_id"].astype(np.int32),
        "func": recs["func"].astype(np.uint64),
        "addr": recs["addr"].astype(np.uint64),
        "kind_id": recs["kind"].astype(np.uint8),     # SLEEP: rule; CALLBACK: enclosing hook
    }


def bare_symbol(sym: str) -> str:
    """"name+0x10 [module]" -> "name"."""
    return sym.split("+", 1)[0].split(" ", 1)[0]
