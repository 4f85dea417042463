"""Kernel symbols as the tracer uses them: address -> (name, module) and
name -> addresses over the text symbols of /proc/kallsyms
(:class:`mmntrace.kernel.SymbolTable`), reloaded when an address is unknown
(modules load while we trace).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from . import kernel


class ByName:
    """name -> every text address of that name, first first (a read-only
    view over a :class:`kernel.SymbolTable`)."""

    def __init__(self, table: kernel.SymbolTable, text: np.ndarray):
        self._t, self._text = table, text

    def get(self, name: str, default=None):
        rows = [i for i in self._t.rows_of(name) if self._text[i]]
        return [int(self._t.addrs[i]) for i in rows] if rows else default

    def __getitem__(self, name: str) -> list[int]:
        v = self.get(name)
        if v is None:
            raise KeyError(name)
        return v

    def __contains__(self, name) -> bool:
        return any(self._text[i] for i in self._t.rows_of(name))


def core_text(t: kernel.SymbolTable) -> tuple[int, int]:
    """[_stext, _etext): the kernel's own text, whose symbols never change
    while it runs (BPF programs, their trampolines and modules are placed
    outside it); (0, 0) where the table lacks either bound."""
    lo, hi = t.rows_of("_stext"), t.rows_of("_etext")
    if not lo or not hi:
        return (0, 0)
    return int(t.addrs[lo[0]]), int(t.addrs[hi[0]])


class KernelSymbols:
    """Address -> (name, module) over the text symbols of /proc/kallsyms,
    reloaded when an address is unknown (modules load while we trace)."""

    def __init__(self):
        self._stale = False
        # a streaming recorder names records on its segment thread while the
        # drain loop names new callbacks: a reload must not be seen half done
        self._lock = threading.RLock()
        self._load(kernel.symbol_table())      # the read feature detection made

    def mark_stale(self) -> None:
        """The kernel has symbols the table lacks (BPF programs and trampolines
        attached since it was read): the next lookup reads it again first."""
        self._stale = True

    def _load(self, table: kernel.SymbolTable | None = None):
        with self._lock:
            self._load_locked(table)

    def _load_locked(self, table: kernel.SymbolTable | None = None):
        t = kernel.SymbolTable.read() if table is None else table
        text = np.frombuffer(t.types, dtype=np.uint8)
        text = np.isin(text, np.frombuffer(b"tTwW", dtype=np.uint8))
        rows = np.flatnonzero(text)
        order = rows[np.argsort(t.addrs[rows], kind="stable")]
        self.table = t
        self.by_name = ByName(t, text)
        self.order = order                      # text rows by address
        self.addrs = t.addrs[order]
        self.core = core_text(t)
        self.loaded = time.monotonic()
        self._stale = False

    def lookup(self, addr: int, exact: bool = False, force: bool = False):
        """``force``: reload on a miss however recent the last load (a driver
        callback found right after its module loaded)."""
        with self._lock:
            return self._lookup(addr, exact, force)

    def _lookup(self, addr: int, exact: bool, force: bool):
        if self._stale:
            # what a stale table lacks is the BPF programs and trampolines
            # attached since: a function's own address (a discovered driver
            # callback) is found in it as well, without reading the whole file
            # first (2 s in the lab's 6.12 guest, during which a new
            # subscriber's first calls went untimed); a miss reads it again.
            # So is any address in the kernel's own text (a hook's caller, most
            # of a stack's frames): nothing is placed there while it runs. One
            # in the module area (a program, a trampoline) reads it again
            hit = self._find(addr, exact) if exact or self.core[0] <= addr < self.core[1] else None
            if hit is not None:
                return hit
            self._load()
        for attempt in range(2):
            hit = self._find(addr, exact)
            if hit is not None:
                return hit
            if attempt == 0 and (force or time.monotonic() - self.loaded > 0.5):
                self._load()
            else:
                break
        return None

    def _find(self, addr: int, exact: bool):
        """(name, module, offset) of ``addr`` in the table as it is: the text
        symbol at or below it (``exact``: at it), None."""
        i = int(np.searchsorted(self.addrs, np.uint64(addr), side="right")) - 1
        if i >= 0:
            a = int(self.addrs[i])
            if (not exact or a == addr) and (exact or addr - a < 1 << 20):
                row = int(self.order[i])
                return self.table.names[row], self.table.module(row), addr - a
        return None
