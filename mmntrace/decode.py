"""Pure decode: raw ring-buffer bytes -> columns. No I/O, no kernel access.

Every record is a fixed-size ``struct mmnt_record`` (bpf/mmntrace.h), so a
whole batch decodes with one ``numpy.frombuffer``; per-type tables are
boolean-mask selections of it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .layout import header, record_dtype

_H = header()
REC = {k[len("MMNT_REC_"):].lower(): v for k, v in _H.enums["mmnt_type"].items()}
FL = {k[len("MMNT_FL_"):].lower(): v for k, v in _H.defines.items() if k.startswith("MMNT_FL_")}
RT_MIGRATE_OFF, RT_RCU = _H.defines["MMNT_RT_MIGRATE_OFF"], _H.defines["MMNT_RT_RCU"]
SLEEP_KIND = {_H.defines["MMNT_SLEEP_SWITCH"]: "sleep", _H.defines["MMNT_SLEEP_MIGHT"]: "might_sleep",
              _H.defines["MMNT_SLEEP_COUNTED"]: "sleep"}
DTYPE = record_dtype()
CARRY_SLOTS = _H.defines["MMNT_REC_CBS"]        # callbacks a hook record can carry
CARRY_FIELDS = tuple(f for f in DTYPE.names if f.startswith("cb_"))     # where it carries them


class DecodeError(ValueError):
    pass


def decode(raw: bytes | bytearray | memoryview) -> np.ndarray:
    """Raw bytes (a whole number of records) -> structured array of records."""
    if len(raw) % DTYPE.itemsize:
        raise DecodeError(f"{len(raw)} bytes is not a whole number of {DTYPE.itemsize}-byte records")
    return np.frombuffer(raw, DTYPE)


def _whole(recs: np.ndarray) -> np.ndarray:
    """Contiguous records as opaque fixed-size items: numpy copies a structured
    array's selected records field by field (6x slower than whole)."""
    return recs.view(np.dtype((np.void, recs.dtype.itemsize)))


def carried(hooks: np.ndarray) -> np.ndarray:
    """The callbacks that hook records carry (``ncb`` of them in ``cb_*``:
    bpf/mmntrace.h), as the CALLBACK records they stand for, field for field:
    what a carried callback shares with its hook comes from the hook's record
    (pid, tid, comm, cpu, mm, range, event), its kind is the hook and its addr
    the hook's seq. In the hooks' order, each hook's in the order they were
    called."""
    n = hooks["ncb"].astype(np.intp)
    total = int(n.sum())
    if not total:
        return hooks[:0]
    hooks = np.ascontiguousarray(hooks)
    which = np.repeat(np.arange(len(hooks)), n)
    slot = np.arange(total) - np.repeat(np.cumsum(n) - n, n)
    out = _whole(hooks)[which].view(hooks.dtype)       # a copy: the shared fields
    out["type"] = REC["callback"]
    out["kind"] = out["hook"]
    out["addr"] = out["seq"]
    cb = lambda f: hooks[f][which, slot]       # noqa: E731
    out["hook"] = cb("cb_hook")
    out["flags"] = cb("cb_flags")
    out["rt"] = cb("cb_rt")
    out["preempt_count"] = cb("cb_pc")
    out["ret"] = cb("cb_ret")
    out["seq"] = (out["seq"] & ~np.uint64(0xffffffff)) | cb("cb_seq").astype(np.uint64)
    out["ts_ns"] += cb("cb_ts")
    out["dur_ns"] = cb("cb_dur")
    out["func"] = cb("cb_func")
    out["stack_id"] = -1
    out["ncb"] = 0
    for f in CARRY_FIELDS:
        out[f] = 0
    return out


def split(recs: np.ndarray) -> dict[str, np.ndarray]:
    """Records by type name: hook, callback, sleep, ops, register; the
    callbacks that hook records carry among the callbacks, after those sent
    on their own (:func:`carried`). A batch holds hook and callback records,
    rarely others: the types are counted in one pass, and only those present
    are selected (no mask, no copy, for a type that is all of it)."""
    recs = np.ascontiguousarray(recs)      # (a batch from decode() is already)
    types = np.ascontiguousarray(recs["type"])
    counts = np.bincount(types, minlength=max(REC.values()) + 1)
    whole = _whole(recs)
    out = {}
    for name, t in REC.items():
        c = int(counts[t])
        if c == len(recs):
            out[name] = recs
        else:
            out[name] = whole[types == t].view(recs.dtype) if c else recs[:0]
    more = carried(out["hook"])
    if len(more):
        out["callback"] = np.concatenate([out["callback"], more]) if len(out["callback"]) else more
    return out


def records(raw: bytes | bytearray | memoryview) -> np.ndarray:
    """Raw bytes -> every record, each carried callback (:func:`carried`) a
    record of its own just after the hook record that carried it: the
    stream as it was before hook records carried callbacks."""
    recs = decode(raw)
    n = recs["ncb"].astype(np.intp)
    if not n.any():
        return recs
    more = carried(recs)            # (only hook records carry: ncb is 0 elsewhere)
    pos = np.arange(len(recs)) + np.cumsum(n) - n      # each record's place; its callbacks follow it
    out = np.empty(len(recs) + len(more), recs.dtype)
    theirs = np.ones(len(out), bool)
    theirs[pos] = False
    _whole(out)[pos] = _whole(np.ascontiguousarray(recs))
    _whole(out)[theirs] = _whole(more)
    return out


def carried_count(raw: bytes | bytearray | memoryview) -> int:
    """How many callbacks the hook records among ``raw`` carry (events beyond its records)."""
    return int(decode(raw)["ncb"].sum(dtype=np.int64)) if len(raw) else 0


#: (column, record field, column type) of the columns copied as they are
_PLAIN = (("ts_ns", "ts_ns", np.uint64), ("cpu", "cpu", np.uint32), ("pid", "pid", np.uint32),
          ("tid", "tid", np.uint32), ("mm", "mm", np.uint64), ("hook_id", "hook", np.uint8),
          ("event_id", "event", np.int32), ("start", "start", np.uint64), ("end", "end", np.uint64),
          ("preempt_count", "preempt_count", np.uint32), ("dur_ns", "dur_ns", np.uint64),
          ("ret", "ret", np.int32), ("seq", "seq", np.uint64), ("stack_id", "stack_id", np.int32),
          ("func", "func", np.uint64), ("addr", "addr", np.uint64),
          ("kind_id", "kind", np.uint8))     # SLEEP: rule; CALLBACK: enclosing hook
#: the columns, in this order
COLUMNS = ("ts_ns", "cpu", "pid", "tid", "comm", "mm", "hook_id", "event_id", "start", "end", "blockable",
           "atomic", "irqs_off", "must_not_sleep", "preempt_count", "migration_disabled", "rcu_read_side",
           "dur_ns", "ret", "seq", "stack_id", "func", "addr", "kind_id")
#: records copied out at a time: 448 KiB of them, so that each field's copy
#: reads them from the CPU's cache, not memory (one field at a time over a
#: whole batch read every record's cache lines once per field: 3.5x slower)
_CHUNK = 4096


class Coded(NamedTuple):
    """A column of few distinct values: each record's index (``codes``) into
    ``names``, an object array (str or None; a sleep's stack: lists of str).
    Made once per distinct value, never per record; the write side makes its
    Parquet column from it directly (mmntrace/store.py), a frame takes
    :meth:`values`. ``dictionary``: written as a dictionary column, which
    readers get as a categorical."""
    codes: np.ndarray
    names: np.ndarray
    dictionary: bool = False

    def values(self) -> np.ndarray:
        return self.names[self.codes]


def _comm(c: np.ndarray) -> Coded:
    """Contiguous 16-byte command names -> each record's name, each distinct
    name decoded once (np.char.decode is a Python-level loop). Records come in
    runs from one task, so the names are told apart among the runs' first
    records; sorts are stable (docs/reliability.md, numpy's default argsort)."""
    n = len(c)
    if n == 0:
        return Coded(np.zeros(0, np.intp), np.empty(0, object))
    halves = c.view(np.uint64).reshape(-1, 2)
    lo, hi = halves[:, 0], halves[:, 1]
    change = np.empty(n, bool)
    change[0] = True
    np.not_equal(lo[1:], lo[:-1], out=change[1:])
    change[1:] |= hi[1:] != hi[:-1]
    starts = np.flatnonzero(change)            # each run's first record
    if len(starts) == 1:
        return Coded(np.zeros(n, np.intp), object_array([bytes(c[0]).decode("utf-8", "replace")]))
    rlo, rhi = lo[starts], hi[starts]
    order = np.lexsort((rhi, rlo))              # stable: a name's first run comes first
    slo, shi = rlo[order], rhi[order]
    new = np.empty(len(order), bool)
    new[0] = True
    new[1:] = (slo[1:] != slo[:-1]) | (shi[1:] != shi[:-1])
    run_code = np.empty(len(order), np.intp)
    run_code[order] = np.cumsum(new) - 1
    first = starts[order[new]]                   # one record per distinct name
    names = object_array([bytes(x).decode("utf-8", "replace") for x in c[first]])
    return Coded(np.repeat(run_code, np.diff(np.append(starts, n))), names)


def object_array(values: list) -> np.ndarray:
    """A list as a 1-d object array (whatever its items are: lists stay lists)."""
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def columns(recs: np.ndarray, coded: bool = False) -> dict[str, np.ndarray | Coded]:
    """Hook/callback/sleep records -> plain contiguous columns (flags expanded
    to booleans); the command name as str (``U16``), or ``coded``: a
    :class:`Coded` column."""
    n = len(recs)
    out = {name: np.empty(n, typ) for name, _field, typ in _PLAIN}
    flags, rt, comm = np.empty(n, np.uint8), np.empty(n, np.uint8), np.empty(n, "S16")
    copies = [(out[name], field) for name, field, _typ in _PLAIN] + [(flags, "flags"), (rt, "rt"), (comm, "comm")]
    for lo in range(0, n, _CHUNK):
        part = recs[lo:lo + _CHUNK]
        for dst, field in copies:
            dst[lo:lo + _CHUNK] = part[field]
    names = _comm(comm)
    out["comm"] = names if coded else np.array(names.names.tolist() or [""], "U16")[names.codes]
    for name in ("blockable", "atomic", "irqs_off", "must_not_sleep"):
        out[name] = (flags & FL[name]) != 0
    # PREEMPT_RT (always False elsewhere): a spinlock_t held sets both
    out["migration_disabled"] = (rt & RT_MIGRATE_OFF) != 0
    out["rcu_read_side"] = (rt & RT_RCU) != 0
    return {name: out[name] for name in COLUMNS}


def bare_symbol(sym: str) -> str:
    """"name+0x10 [module]" -> "name"."""
    return sym.split("+", 1)[0].split(" ", 1)[0]
