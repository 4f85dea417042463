"""Symbolization at record time: kernel addresses, hook and event ids and
stack ids of decoded records become names, callers and caller classes.

Used by the recording session (:mod:`mmntrace.record`) and the daemon alike,
so reports work elsewhere without root. Pure functions of the stacks
(:func:`caller_of`, :func:`classify_secondary_tlb`) need no kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import decode, hooks, kernel
from .decode import Coded, object_array, bare_symbol

if TYPE_CHECKING:
    import pandas as pd

#: frames that say which path invoked the secondary-TLB hook
TLB_FLUSH = ("flush_tlb_mm_range", "arch_tlbbatch_flush", "tlb_finish_mmu", "tlb_flush_mmu",
             "flush_tlb_page", "__flush_tlb_range", "__flush_tlb_page_nosync", "flush_tlb_mm")
UPGRADE = ("set_access_flags", "wp_page_reuse")
RANGE_END = ("invalidate_range_end",)


def classify_secondary_tlb(stack: list[str]) -> str | None:
    """ptl_clear / tlb_flush / permission_upgrade / range_end, from a symbolized
    stack; None when no stack was taken."""
    if not stack:
        return None
    names = [bare_symbol(s) for s in stack]
    if any(any(u in n for u in UPGRADE) for n in names):
        return "permission_upgrade"
    if any(n in TLB_FLUSH for n in names):
        return "tlb_flush"
    if any(n.endswith(RANGE_END) for n in names[1:]):
        return "range_end"
    return "ptl_clear"


def _notifier_core(name: str) -> bool:
    return "mmu_notifier" in name or name.startswith("mn_")


def caller_of(stack: list[str]) -> str | None:
    """Which kernel path invoked the hook: the first frame above the notifier
    core (``__mmu_notifier_*``, ``mn_*``). Whatever lies below the core (the
    subscriber's callback, what it called) is skipped whoever the subscriber
    is; a stack without a core frame gives its first frame."""
    names = [bare_symbol(s) for s in stack]
    core = next((i for i, n in enumerate(names) if _notifier_core(n)), None)
    if core is None:
        return names[0] if names else None
    for n in names[core:]:
        if not _notifier_core(n):
            return n
    return None


class Symbolizer:
    def __init__(self, tracer, features: kernel.Features):
        self.t = tracer
        self.hook_names = dict(kernel.HOOK_NAMES)     # stable on every kernel: the symbol is in metadata
        self.events = {v: n for v, n in features.events}
        self._stacks: dict[int, list[str]] = {}
        self._syms: dict[int, str] = {}

    def stack(self, sid: int) -> list[str]:
        if sid < 0:
            return []
        if sid not in self._stacks:
            self._stacks[sid] = self.t.stack(sid)
        return self._stacks[sid]

    def sym(self, addr: int) -> str | None:
        if not addr:
            return None
        if addr not in self._syms:
            self._syms[addr] = self.t.ksym(addr)
        return self._syms[addr]

    def cb_sym(self, addr: int) -> str | None:
        return self.t.callback_symbol(addr) if addr else None

    @staticmethod
    def _per_value(values: np.ndarray, fn) -> Coded:
        """``fn`` of each record's value, computed once per distinct value (a
        batch holds thousands of records and a few dozen callbacks, stacks or
        events): no name is made per record."""
        inv, uniq = _factorize(values)
        return Coded(inv, object_array([fn(v) for v in uniq.tolist()]))

    def columns(self, recs: np.ndarray, kind: str) -> dict[str, np.ndarray | Coded]:
        """The table of ``kind`` (hook, callback, sleep) records: numbers as
        numpy arrays, names as :class:`~mmntrace.decode.Coded` columns (the
        write side makes Parquet of them without pandas; :meth:`frames` makes
        a DataFrame)."""
        c = decode.columns(recs, coded=True)
        n = len(recs)
        cols: dict = {} if kind == "sleep" else {"kind": Coded(np.zeros(n, np.intp), object_array([kind]))}
        cols.update(c)
        cols["hook"] = self._per_value(c["hook_id"], lambda h: self.hook_names.get(h, str(h)))._replace(dictionary=True)
        cols["event"] = self._per_value(c["event_id"], lambda e: self.events.get(e) if e >= 0 else None)
        cols["callback"] = self._per_value(c["func"], self.cb_sym)
        # per distinct stack: the frames, the caller, the secondary-TLB caller class
        inv, sids = _factorize(c["stack_id"])
        stacks = object_array([self.stack(s) for s in sids.tolist()])
        if kind == "sleep":
            cols["rule"] = self._per_value(c["kind_id"], lambda k: decode.SLEEP_KIND.get(k, "unknown"))
            cols["sleeper"] = self._per_value(c["addr"], lambda a: self.sym(a) if a else None)
            cols["stack"] = Coded(inv, stacks)
            del cols["kind_id"]
            return cols
        callers = object_array([caller_of(st) for st in stacks])
        classes = object_array([classify_secondary_tlb(st) for st in stacks] + [None])  # [-1]: not a secondary-TLB call
        idx = cidx = inv
        if kind == "hook":
            # by kprobe, range start/end and (x86) the secondary-TLB hook: no stack,
            # their return address (addr), the caller (bpf/mmntrace.bpf.c hook_entry)
            direct = (c["stack_id"] < 0) & (c["addr"] != 0)
            if direct.any():
                rinv, rets = _factorize(c["addr"][direct])
                names = [self.sym(a) for a in rets.tolist()]
                callers = np.concatenate([callers, object_array([caller_of([n]) if n else None for n in names])])
                classes = np.concatenate([classes, object_array([classify_secondary_tlb(["", n]) if n else None
                                                             for n in names])])
                idx = inv.copy()
                idx[direct] = len(sids) + rinv
                cidx = inv.copy()
                cidx[direct] = len(sids) + 1 + rinv     # (classes[len(sids)]: None)
        cols["caller"] = Coded(idx, callers)
        sec = c["hook_id"] == kernel.HOOK_SECONDARY_TLB
        cols["caller_class"] = Coded(np.where(sec, cidx, len(sids)), classes)
        if kind == "callback":
            # the entry point that made the call (6.1's invalidate_range_end calls
            # each subscriber's invalidate_range op itself) and its invocation's seq
            cols["via"] = self._per_value(c["kind_id"], lambda h: self.hook_names.get(h)
                                          if h != kernel.HOOK_NONE else None)
            cols["hook_seq"] = c["addr"]
        else:                       # a hook: its own invocation
            cols["via"] = Coded(np.zeros(n, np.intp), object_array([None]))
            cols["hook_seq"] = c["seq"]
        del cols["addr"], cols["kind_id"]
        return cols

    def frames(self, recs: np.ndarray, kind: str) -> pd.DataFrame:
        """:meth:`columns` as a DataFrame (names as strings, the hook categorical)."""
        import pandas as pd
        return pd.DataFrame({name: frame_column(col) for name, col in self.columns(recs, kind).items()})


def frame_column(col: np.ndarray | Coded):
    """A column of :meth:`Symbolizer.columns` as a frame's: names as a string
    array made from the distinct ones (no string per record), the hook
    categorical, lists (a stack) as objects."""
    if not isinstance(col, Coded):
        return col
    if not any(isinstance(v, str) for v in col.names):
        return col.values()
    import pandas as pd
    strings = pd.array(col.names, dtype="str").take(col.codes)
    return pd.Categorical(strings) if col.dictionary else strings


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values): each record's index into the distinct ones,
    without a sort (a batch holds ~10^5 records of a few distinct values, and in
    the lab's emulated guest the sorts were a tenth of the streaming recorder's
    CPU): integers within 2^16 of each other by a table, the rest (kernel
    addresses) by pyarrow's hashing."""
    v = np.ascontiguousarray(values)
    if not len(v):
        return np.zeros(0, np.intp), v
    lo, hi = v.min(), v.max()
    if v.dtype.kind in "iu" and int(hi) - int(lo) < 1 << 16:
        off = (v - lo).astype(np.intp)
        present = np.zeros(int(hi) - int(lo) + 1, bool)
        present[off] = True
        code_of = np.cumsum(present) - 1
        return code_of[off], np.flatnonzero(present).astype(v.dtype) + lo
    import pyarrow as pa
    enc = pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [None, pa.py_buffer(v)]).dictionary_encode()
    return _numpy(enc.indices, np.int32).astype(np.intp), _numpy(enc.dictionary, v.dtype)


def _numpy(arr, dtype) -> np.ndarray:
    """A pyarrow array of numbers without nulls as numpy, from its buffer
    (``to_numpy`` imports pandas)."""
    return np.frombuffer(arr.buffers()[1], dtype)[arr.offset:arr.offset + len(arr)].copy()


#: the recorder warns once when, streaming at least GUARD_MIN_RATE events/s, it spends
#: more than GUARD_CPU_SHARE of a CPU (or whenever records are dropped)
