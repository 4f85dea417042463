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
from .decode import bare_symbol

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
    def _per_value(values: np.ndarray, fn):
        """``fn`` of each record's value, computed once per distinct value (a
        batch holds thousands of records and a few dozen callbacks, stacks or
        events): one entry per record; strings (None: missing) come as the
        frame's string column, taken from the distinct ones (no string is
        made per record)."""
        inv, uniq = _factorize(values)
        out = np.empty(len(uniq), dtype=object)
        out[:] = [fn(v) for v in uniq.tolist()]
        return _take(out, inv)

    def frames(self, recs: np.ndarray, kind: str) -> pd.DataFrame:
        import pandas as pd
        c = decode.columns(recs)
        df = pd.DataFrame(c)
        if kind != "sleep":
            df.insert(0, "kind", kind)
        df["hook"] = pd.Categorical(self._per_value(c["hook_id"], lambda h: self.hook_names.get(h, str(h))))
        df["event"] = self._per_value(c["event_id"], lambda e: self.events.get(e) if e >= 0 else None)
        df["callback"] = self._per_value(c["func"], self.cb_sym)
        # per distinct stack: the frames, the caller, the secondary-TLB caller class
        inv, sids = _factorize(c["stack_id"])
        stacks = np.empty(len(sids), dtype=object)
        stacks[:] = [self.stack(s) for s in sids.tolist()]
        if kind == "sleep":
            df["rule"] = self._per_value(c["kind_id"], lambda k: decode.SLEEP_KIND.get(k, "unknown"))
            df["sleeper"] = self._per_value(c["addr"], lambda a: self.sym(a) if a else None)
            df["stack"] = stacks[inv]
            df = df.drop(columns=["kind_id"])
        else:
            callers = np.empty(len(sids), dtype=object)
            callers[:] = [caller_of(st) for st in stacks]
            classes = np.empty(len(sids) + 1, dtype=object)     # [-1]: None, not a secondary-TLB call
            classes[:-1] = [classify_secondary_tlb(st) for st in stacks]
            idx = cidx = inv
            if kind == "hook":
                # by kprobe, range start/end and (x86) the secondary-TLB hook: no stack,
                # their return address (addr), the caller (bpf/mmntrace.bpf.c hook_entry)
                direct = (c["stack_id"] < 0) & (c["addr"] != 0)
                if direct.any():
                    rinv, rets = _factorize(c["addr"][direct])
                    names = [self.sym(a) for a in rets.tolist()]
                    by_ret = np.empty(len(rets), dtype=object)
                    by_ret[:] = [caller_of([n]) if n else None for n in names]
                    callers = np.concatenate([callers, by_ret])
                    cls_ret = np.empty(len(rets), dtype=object)
                    cls_ret[:] = [classify_secondary_tlb(["", n]) if n else None for n in names]
                    classes = np.concatenate([classes, cls_ret])
                    idx = inv.copy()
                    idx[direct] = len(sids) + rinv
                    cidx = inv.copy()
                    cidx[direct] = len(sids) + 1 + rinv     # (classes[len(sids)]: None)
            df["caller"] = _take(callers, idx)
            sec = c["hook_id"] == kernel.HOOK_SECONDARY_TLB
            df["caller_class"] = _take(classes, np.where(sec, cidx, len(sids)))
            if kind == "callback":
                # the entry point that made the call (6.1's invalidate_range_end calls
                # each subscriber's invalidate_range op itself) and its invocation's seq
                df["via"] = self._per_value(c["kind_id"], lambda h: self.hook_names.get(h)
                                            if h != kernel.HOOK_NONE else None)
                df["hook_seq"] = c["addr"]
            else:                       # a hook: its own invocation
                df["via"] = None
                df["hook_seq"] = c["seq"]
            df = df.drop(columns=["addr", "kind_id"])
        return df


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(codes, distinct values): each record's index into the distinct ones, by
    hashing (pandas), not by np.unique's sort: a batch holds ~10^5 records of a
    few distinct values, and in the lab's emulated guest the sorts were a tenth
    of the streaming recorder's CPU."""
    import pandas as pd
    return pd.factorize(values, sort=False)


def _take(values: np.ndarray, idx: np.ndarray):
    """values[idx]; strings as a string array made from ``values`` once (None
    missing), where ``values`` holds a string: what a frame would infer from
    the per-record objects, without a string per record."""
    if any(isinstance(v, str) for v in values):
        import pandas as pd
        return pd.array(values, dtype="str").take(idx)
    return values[idx]


#: the recorder warns once when, streaming at least GUARD_MIN_RATE events/s, it spends
#: more than GUARD_CPU_SHARE of a CPU (or whenever records are dropped)
