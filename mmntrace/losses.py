"""What was lost, and the counters the tracer reads while the probes run.

The BPF side counts in ``drops[]`` (bpf/mmntrace.h, MMNT_DROP_*) every record
it could not send, every callback call it counted but could not time, and
more; the kernel counts the kretprobe misses (tracefs) and the runs of our
programs it skipped (fdinfo ``recursion_misses``); the perf buffer reports
its own losses. :class:`Counters` reads them all, for ``drops()`` and its
total: the report's "N dropped". :func:`drops_by_name` is the pure part.
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

from .layout import header
from .probes import kprobe_misses
from .quiet import debug
from .transport import MappedArray, prog_counter

_H = header()
REC_NAMES = {_H.defines["MMNT_REC_HOOK"]: "hook", _H.defines["MMNT_REC_CALLBACK"]: "callback",
             _H.defines["MMNT_REC_SLEEP"]: "sleep", _H.defines["MMNT_REC_OPS"]: "ops",
             _H.defines["MMNT_REC_REGISTER"]: "register"}
#: drops[] slot -> its name in drops() (a record type: a record of that type not sent)
DROP_NAMES = {**REC_NAMES, _H.defines["MMNT_DROP_SERIES"]: "aggregate_series",
              _H.defines["MMNT_DROP_FOLLOW"]: "unfollowed_processes",
              _H.defines["MMNT_DROP_ITREE"]: "interval_uncounted",
              _H.defines["MMNT_DROP_EARLY_STOP"]: "early_stop_uncounted"}
#: the slots of the BPF side's drops[] (bpf/mmntrace.bpf.c)
DROP_SLOTS = range(16)
#: how old the probe misses a running session's drops(fresh=False) shows may be
MISSES_REFRESH_S = 10.0


def drops_by_name(counts, *, perf_lost: int, untimed: int, kretprobe_missed: int, prog_missed: int) -> dict:
    """drops() from its sources: ``counts`` is drops[] by slot. Every kind is
    present (0 where none), and ``total`` sums them."""
    out = {name: 0 for name in DROP_NAMES.values()}
    for t, name in DROP_NAMES.items():
        if t < len(counts):
            out[name] = int(counts[t])
    out["perf_lost"] = int(perf_lost)
    out["untimed"] = int(untimed)
    out["kretprobe_missed"] = int(kretprobe_missed)
    out["prog_missed"] = int(prog_missed)
    out["total"] = sum(out.values())
    return out


def lost(drops: dict) -> int:
    """Records lost (a drops() dict's total), the calls counted untimed left out:
    a new subscriber's calls before its probes went in are counted, not lost."""
    return drops.get("total", 0) - drops.get("untimed", 0)


def untimed_by_callback(expected: dict[int, int], seen: dict[int, int], unselected=frozenset()) -> dict[int, int]:
    """callback address -> calls the BPF side expected (cb_expected) beyond
    those its probe saw (cb_seen); a callback left unprobed by the user's
    choice is no loss."""
    out = {}
    for k, v in expected.items():
        n = v - seen.get(k, 0)
        if n > 0 and k not in unselected:
            out[k] = n
    return out


def _num(x) -> int:
    """A map key or value as bcc gives it: a ctypes number or already an int."""
    return int(x) if isinstance(x, int) else int(x.value)


class Counters:
    """drops[] and walk_gen of one loaded program, the kernel's misses of our
    probes, and the perf buffer's losses; ``reset()`` starts a daemon window
    from zero."""

    def __init__(self, bpf, tramp, *, mmap_arrays: bool):
        self.bpf = bpf
        self.tramp = tramp
        self.perf_lost = 0
        self._views: dict[bytes, MappedArray] = {}
        self._misses: tuple | None = None     # (when, kretprobe misses, program misses): drops(fresh=False)
        self._missed_base = 0
        self._kprobe_missed_base = 0
        self._batch: bool | None = None       # batch lookups: untried, taken, refused
        self._untimed: tuple | None = None    # (disc[2] when read, cb_expected, cb_seen)
        if mmap_arrays:
            self._map()

    def _map(self) -> None:
        """Map the counters read while the probes run (drops, at each overhead
        check; walk_gen, at every poll) where the kernel lets arrays be mapped:
        read from memory, with no bpf() lookup (one per poll and nine per
        drops() before), which holds its CPU's bpf_prog_active meanwhile, when
        kprobe programs on that CPU are skipped (bpf/mmntrace.bpf.c,
        MMNT_MMAP_ARRAYS)."""
        for name, n, dtype in ((b"drops", len(DROP_SLOTS), np.uint64), (b"walk_gen", 1, np.uint32)):
            try:
                self._views[name] = MappedArray(self.bpf[name], (n,), dtype)
            except (OSError, ValueError, KeyError) as e:
                debug(f"{name.decode()} read by bpf() lookups: mapping it failed ({e})")

    def close(self) -> None:
        for v in self._views.values():
            v.close()
        self._views = {}

    def walk_gen(self) -> int:
        """The BPF side's generation of what it has seen (bpf/discovery.h)."""
        v = self._views.get(b"walk_gen")
        if v is not None:
            return int(v.a[0])
        return int(self.bpf[b"walk_gen"][ctypes.c_int(0)].value)

    def bump_walk_gen(self) -> int:
        """A new generation: every task's cached subscription walk is stale."""
        g = self.bpf[b"walk_gen"]
        g[ctypes.c_int(0)] = ctypes.c_uint32(g[ctypes.c_int(0)].value + 1)
        return self.walk_gen()

    def drop_counts(self) -> list[int]:
        """drops[] of the BPF side, by slot (a per-CPU array's summed)."""
        v = self._views.get(b"drops")
        if v is not None:
            return [int(x) for x in v.snapshot()]
        d = self.bpf[b"drops"]
        out = []
        for t in DROP_SLOTS:
            leaf = d[ctypes.c_int(t)]
            out.append(int(leaf.value) if hasattr(leaf, "value") else int(sum(leaf)))
        return out

    def untimed(self, unselected=frozenset(), fresh: bool = True) -> dict[int, int]:
        """callback address -> its calls counted but not timed (made before its
        probe was attached: a subscriber that registered and was invalidated at once,
        or unregistered at once, mmu_notifier_unregister() calling its release).
        ``fresh=False`` (a running session's periodic look) reads the maps only
        where the BPF side changed them since the last read."""
        gen = self._untimed_gen()
        if fresh or self._untimed is None or gen is None or gen != self._untimed[0]:
            # read once the BPF side has changed them (disc[2]): two whole-map reads
            # at every metadata refresh were most of an --aggregate recorder's own
            # CPU while the workload ran (0.05-0.15 s a run in the lab's guests)
            seen = self._items(b"cb_seen")
            self._untimed = (gen, self._items(b"cb_expected"), seen)
        return untimed_by_callback(self._untimed[1], self._untimed[2], unselected)

    def ops_unsent(self) -> int:
        """Ops-table records the record buffer had no room for (disc[3]); the BPF
        side reported each table again (bpf/discovery.h ops_unsent). 0 if unreadable."""
        try:
            return int(self.bpf[b"disc"][ctypes.c_int(3)].value)
        except Exception:       # noqa: BLE001 - bcc raises bare Exceptions
            return 0

    def _untimed_gen(self) -> int | None:
        """How often the BPF side has changed cb_expected and cb_seen (None: unreadable)."""
        try:
            return int(self.bpf[b"disc"][ctypes.c_int(2)].value)
        except Exception:       # noqa: BLE001 - bcc raises bare Exceptions
            return None

    def _items(self, name: bytes) -> dict[int, int]:
        """A u64 -> u64 hash map, whole: one BPF_MAP_LOOKUP_BATCH (5.6+), not a
        next-key and a lookup per entry (two bpf() calls each, 2-3 ms apiece
        through bcc in a lab guest: the streaming recorder's biggest cost of its
        own, read three times every two seconds). A kernel without batch
        lookups: entry by entry, as before."""
        t = self.bpf[name]
        if self._batch is not False:
            try:
                # (bcc hands a batch's keys and values over as plain ints: ctypes
                # arrays of a simple type; items() gives c_ulonglong objects)
                out = {_num(k): _num(v) for k, v in t.items_lookup_batch()}
                self._batch = True
                return out
            except Exception as e:      # noqa: BLE001 - bcc raises a bare Exception
                debug(f"{name.decode()}: batch lookup failed ({e}): entry by entry")
                if self._batch is None:     # never worked here: not tried again
                    self._batch = False
        return {_num(k): _num(v) for k, v in t.items()}

    def drops(self, untimed: int, fresh: bool = True) -> dict:
        """Drops by kind, and their total. ``fresh=False`` (a running session's
        periodic look: its overhead guard, status line, metadata kept if it is
        killed) may reuse the recursion and kretprobe misses read up to
        MISSES_REFRESH_S ago: reading them takes a bpf() call per program and
        a tracefs read (an fdinfo per program, as it once was, cost a quarter
        of a CPU at the session's pace in a lab guest, taken from the workload
        it watches)."""
        now = time.monotonic()
        if fresh or self._misses is None or now - self._misses[0] >= MISSES_REFRESH_S:
            self._misses = (now, self._kprobe_missed_raw() - self._kprobe_missed_base,
                            self.prog_missed_raw() - self._missed_base)
        return drops_by_name(self.drop_counts(), perf_lost=self.perf_lost, untimed=untimed,
                             kretprobe_missed=self._misses[1], prog_missed=self._misses[2])

    def reset(self) -> None:
        """Zero drops[], the expected and seen callback calls, and the losses
        counted since load (a daemon window starts from zero)."""
        if b"drops" in self._views:
            self._views[b"drops"].zero()
        else:
            d = self.bpf[b"drops"]
            for k in list(d.keys()):
                d[k] = d.Leaf()
        self.bpf[b"cb_expected"].clear()
        self.bpf[b"cb_seen"].clear()
        self._untimed = None
        self.perf_lost = 0
        self._misses = None
        self._kprobe_missed_base = self._kprobe_missed_raw()
        self._missed_base = self.prog_missed_raw()

    def prog_missed_raw(self) -> int:
        """Runs of our hook and callback programs the kernel skipped because a BPF
        program was already running on that CPU (recursion_misses, 5.12+).
        Might-sleep programs are left out: they fire on every mutex_lock in the
        system, and skip ones inside bpf() syscalls that could never be ours."""
        total = self.tramp.missed()       # the hooks' and callbacks' fentry programs
        for name, fn in self.bpf.funcs.items():
            n = name.decode() if isinstance(name, bytes) else name
            if not n.startswith(("hk_", "cb_")):
                continue
            total += prog_counter(int(fn.fd), "recursion_misses") or 0
        return total

    @staticmethod
    def _kprobe_missed_raw() -> int:
        return kprobe_misses(f"_bcc_{os.getpid()}")
