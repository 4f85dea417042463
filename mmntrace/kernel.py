"""What the running kernel offers mmntrace: a feature probe run once.

Everything here is *detected* (kallsyms, tracefs, BTF, the headers' own
release string); no kernel version number is ever compared, because
distribution kernels backport. :func:`probe` fills a frozen :class:`Features`;
:func:`require_recording` turns a missing hard requirement into one sentence.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from . import errors, hooks
from . import btf as btfmod
from .btf import Btf, load_vmlinux
from .quiet import debug as _debug

if TYPE_CHECKING:
    from .trial import Verdict

# enum mmnt_hook ids, from the one table of hooks (mmntrace/hooks.py, which reads bpf/mmntrace.h)
_ID = {h.enum: h.id for h in hooks.HOOKS}
HOOK_START, HOOK_END, HOOK_SECONDARY_TLB, HOOK_RELEASE = _ID["START"], _ID["END"], _ID["SECONDARY_TLB"], _ID["RELEASE"]
HOOK_CLEAR_FLUSH_YOUNG, HOOK_CLEAR_YOUNG, HOOK_TEST_YOUNG = _ID["CLEAR_FLUSH_YOUNG"], _ID["CLEAR_YOUNG"], _ID["TEST_YOUNG"]
HOOK_CHANGE_PTE, HOOK_INTERVAL = _ID["CHANGE_PTE"], _ID["INTERVAL"]
HOOK_NONE = hooks.NONE     # a callback that ran under no hook we traced
NR_HOOKS = hooks.NR_HOOKS

#: hook id -> stable name (what recordings, reports and ``--hooks`` call it)
HOOK_NAMES = {h.id: h.name for h in hooks.HOOKS}


REGISTRATION = ("__mmu_notifier_register", "mmu_notifier_unregister", "mmu_interval_notifier_insert",
                "mmu_interval_notifier_insert_locked", "mmu_interval_notifier_remove")

#: might-sleep functions: name -> gfp argument index (1-based), 0 = always counts.
#: Not the one funnel of a voluntary-preemption kernel, __cond_resched (without
#: DEBUG_ATOMIC_SLEEP, might_sleep() is might_resched(), a static call to it in
#: that mode: include/linux/kernel.h, Debian's default): a program on it
#: would still need msleep() and schedule_timeout() beside it, which sleep
#: without a might_sleep(), and it would run more often, at more cost. Counted
#: by bpftrace in the lab's guests (Debian 6.1 / 6.12, preempt mode voluntary)
#: over bench/ambient_bench's three paths, which never reach a notifier:
#: __cond_resched was called 161,585 / 135,228 times on the pipe ping-pong
#: (20,000 round trips), 189,836 / 149,113 on open+close (20,000), 267,582 /
#: 180,772 on mmap+fault+munmap (5,000), against 109,895 / 93,248, 84,631 /
#: 63,921 and 149,415 / 156,395 calls of these functions (mutex_lock,
#: kmem_cache_alloc, __alloc_pages, down_write the most): 1.1x to 2.3x the
#: runs, and --might-sleep's ambient tax is its programs' runs.
SLEEPER_CANDIDATES: dict[str, int] = {
    **{n: 0 for n in (
        "mutex_lock", "mutex_lock_interruptible", "mutex_lock_killable",
        "down_read", "down_write", "down_read_killable", "down_write_killable",
        "down", "down_interruptible", "down_killable", "down_timeout",
        "msleep", "msleep_interruptible", "usleep_range_state",
        "wait_for_completion", "wait_for_completion_timeout", "wait_for_completion_interruptible",
        "wait_for_completion_interruptible_timeout", "wait_for_completion_killable",
        "wait_for_completion_killable_timeout", "wait_for_completion_io",
        "wait_for_completion_io_timeout",
        "schedule_timeout", "schedule_timeout_interruptible", "schedule_timeout_killable",
        "schedule_timeout_uninterruptible", "schedule_timeout_idle",
        "__might_sleep",
        "vmalloc", "vmalloc_noprof", "__vmalloc_node_range", "__vmalloc_node_range_noprof")},
    "__alloc_pages": 1, "__alloc_pages_noprof": 1,
    "__kmalloc": 2, "__kmalloc_noprof": 2,
    "kmem_cache_alloc": 2, "kmem_cache_alloc_noprof": 2,
    "kmalloc_trace": 2, "__kmalloc_cache_noprof": 2,
}


#: how a call's lock context is known: Features.context_source, recording
#: metadata ``context_source``, printed by doctor and the report
CONTEXT_SOURCES = {
    "preempt_count": "preempt_count() at entry (and the IRQ flag)",
    "preempt_rt": "PREEMPT_RT: preempt_count() stays 0 under a spinlock_t, which is a sleeping lock there; "
                  "a held one is read from the task's migration-disabled count and RCU read-side nesting",
    "unknown": "unknown: this kernel's preempt_count() cannot say whether a lock is held "
               "(the rules still apply by hook)",
}


@dataclasses.dataclass(frozen=True)
class Features:
    release: str                     # uname -r
    is_root: bool                    # euid 0: needed to load BPF and read kallsyms addresses
    kallsyms: bool                   # /proc/kallsyms readable with real (non-zero) addresses
    kprobes: bool                    # kprobe_events (tracefs/debugfs) or the kprobe PMU, and register_kprobe in kallsyms
    btf: bool                        # /sys/kernel/btf/vmlinux parses (CONFIG_DEBUG_INFO_BTF)
    headers: str | None              # /lib/modules/<rel>/build when it exists
    headers_release: str | None      # release string the headers were built for
    headers_match: bool              # headers_release == uname -r
    ringbuf: bool                    # BPF ring buffer (bpf_ringbuf_output in kallsyms; upstream 457f44363a88, 5.8)
    fentry_possible: bool            # a guess (BTF + bpf_trampoline_link_prog in kallsyms): fentry_verdict() tries for real
    mmu_notifiers: bool              # CONFIG_MMU_NOTIFIER (__mmu_notifier_invalidate_range_start in kallsyms)
    hooks: tuple                     # ((hook id, kernel symbol, stable name), ...) present in kallsyms
    registration: tuple              # registration functions present in kallsyms
    events: tuple                    # ((value, name), ...) of enum mmu_notifier_event, MMU_NOTIFY_ stripped, lower-case
    ops: tuple                       # member names of struct mmu_notifier_ops
    preempt_count_sym: str | None    # per-cpu symbol holding preempt_count (__preempt_count or pcpu_hot)
    preempt_count_addr: int | None   # its per-cpu address (+ member offset), to add to __per_cpu_offset[cpu]
    per_cpu_offset_addr: int | None  # address of the __per_cpu_offset[] array
    subs_list_off: int | None        # offsetof(struct mmu_notifier_subscriptions, list), private struct, from BTF
    sleepers: tuple                  # ((symbol, gfp arg index or 0 = always), ...) present in kallsyms
    gfp_direct_reclaim: int | None   # __GFP_DIRECT_RECLAIM bit value (BTF enum or header)
    layout: tuple | None = None      # ((MMNT_L_ name, value), ...): struct layouts from BTF (see btf_layout)
    subs_itree_off: int | None = None  # offsetof(struct mmu_notifier_subscriptions, itree), from BTF
    task_iter: bool = False          # BPF task iterators (bpf_iter_reg_target + BTF's bpf_iter_task): the start-up sweep
    iter_task_btf_id: int | None = None     # bpf_iter_task's BTF id (the sweep's attach target)
    raw_sched_switch: bool = False   # sched_switch's raw tracepoint passes prev_state (5.18+; BTF's btf_trace_sched_switch)
    preempt_rt: bool = False         # PREEMPT_RT: spinlock_t is a sleeping lock (rt_spin_lock in kallsyms)
    task_rt_offsets: tuple | None = None  # (migration_disabled, rcu_read_lock_nesting) offsets in task_struct, BTF
    mmap_array: bool = False         # BPF_F_MMAPABLE arrays (array_map_mmap in kallsyms; upstream fc9702273e2e, 5.5)
    kprobe_cookie: bool = False      # kprobe BPF links with a cookie (BTF's BPF_FUNC_get_attach_cookie, 5.15) and the kprobe PMU
    bpf_loop: bool = False           # the bpf_loop() helper (BTF's BPF_FUNC_loop, 5.17): the interval walk's steps as a callback
    probe_read_kernel: bool = False  # bpf_probe_read_kernel() (BTF's BPF_FUNC_probe_read_kernel, 5.5): bcc need not read kallsyms to ask
    preempt_count_var: tuple | None = None  # (BTF id of the per-CPU variable preempt_count_sym, the count's offset in it):
    #                                        every program reads it through bpf_this_cpu_ptr() (5.10)
    lean_headers: tuple | None = None  # (the include guards of the headers bcc's include chain pulls in for struct
    #                                    pt_regs and PAGE_SIZE alone, struct pt_regs's size and scalar members from
    #                                    BTF, the page size): see lean_headers(); codegen.py compiles without them

    @property
    def context_source(self) -> str:
        """How a call's lock context is determined: ``preempt_count`` (the
        per-CPU count), ``preempt_rt`` (PREEMPT_RT: the count, plus the task's
        migration-disabled and RCU read-side nesting that a spinlock_t sets),
        or ``unknown`` (neither readable)."""
        if self.preempt_rt and self.task_rt_offsets:
            return "preempt_rt"
        return "preempt_count" if self.preempt_count_addr and self.per_cpu_offset_addr else "unknown"

    def hook_symbol(self, hook: int) -> str | None:
        for h, sym, _n in self.hooks:
            if h == hook:
                return sym
        return None

    def has_op(self, name: str) -> bool:
        return name in self.ops


#: one /proc/kallsyms line: address, type, name, [module]
_KSYM_LINE = re.compile(r"^([0-9a-f]+) (\w) (\S+)(?:\t\[(\S+)\])?$", re.M)
#: text read and parsed at a time: the rows of one chunk are the only ones
#: alive as Python tuples (all 120 000 at once cost 25 MiB of peak memory)
_KSYM_CHUNK = 1 << 18


class SymbolTable:
    """/proc/kallsyms, compact: addresses in a numpy array, the names in one
    byte string with their offsets, types and modules as small codes. Row
    order is the file's. A name is found by its hash (a sorted array of the
    names' hashes, each row once): no Python object per symbol is kept (rows
    of tuples took 60 MiB for 120 000 symbols, a list of names and a dict
    from name to row 16 MiB, this 7), since the tracer holds the table
    while clang compiles (BENCHMARKS.md, peak RSS).

    ``names[i]``: row i's name; :meth:`rows_of`: every row of a name, first
    first (static functions of the same name in several files, a module's
    copy)."""

    def __init__(self, addrs, types: bytes, names, mods, mod_names: list[str]):
        """``names``: a list of the rows' names, or (blob, offsets, hashes) as
        :meth:`read` builds them chunk by chunk."""
        import numpy as np
        self.addrs = np.asarray(addrs, dtype=np.uint64)
        self.types = types
        self.mods = np.asarray(mods, dtype=np.uint16)
        self.mod_names = mod_names          # [0] is "" (vmlinux)
        blob, offs, hashes = names if isinstance(names, tuple) else _pack_names(list(names))
        self._blob = blob                   # every name followed by a newline
        self._offs = offs                   # row i's name starts at offs[i]; offs[n] = len(blob)
        # stable: numpy's default argsort of int64 (its AVX2 kernels) returned unsorted
        # orders in the lab's QEMU guests, 40 times out of 40 on 110,427 values
        order = np.argsort(hashes, kind="stable")
        self._hash = hashes[order]
        self._hrow = order
        self._index: dict[str, int] | None = None
        self.names = _Names(self)

    def name(self, i: int) -> str:
        return self._blob[int(self._offs[i]):int(self._offs[i + 1]) - 1].decode("utf-8", "replace")

    @property
    def index(self) -> dict[str, int]:
        """name -> its first row (built on first use and kept: nothing in the
        tracer's start-up needs the whole mapping; the table never changes)."""
        if self._index is None:
            out: dict[str, int] = {}
            for i in range(len(self)):
                out.setdefault(self.name(i), i)
            self._index = out
        return self._index

    @classmethod
    def read(cls, path: str = "/proc/kallsyms", attempts: int = 3) -> "SymbolTable":
        """Parse ``path`` chunk by chunk, each chunk's lines at once with numpy
        (:func:`_parse_lines`; line by line in Python took seconds per read in
        the lab's emulated guests, a regular expression per chunk 5.8-6.9 s in a
        6.12 guest, this 3.6-4.3 s). Unreadable: an empty table. A read that
        fails part way (the kernel refusing a seq_file buffer) is made again:
        a table cut short would say the kernel lacks what it has."""
        for left in range(attempts - 1, -1, -1):
            try:
                return cls._read(path, raise_midway=left > 0)
            except OSError as e:
                _debug(f"{path}: read failed part way ({e}); reading it again")
        raise AssertionError("unreachable")

    @classmethod
    def _read(cls, path: str, raise_midway: bool) -> "SymbolTable":
        import numpy as np
        parts: list[tuple] = []
        names: list[str] = []
        packed: list[tuple] = []
        mod_ids: dict[str, int] = {"": 0}
        try:
            with open(path) as f:
                rest = ""
                while True:
                    chunk = f.read(_KSYM_CHUNK)
                    text = rest + chunk
                    if chunk:
                        cut = text.rfind("\n") + 1
                        text, rest = text[:cut], text[cut:]
                    elif text and not text.endswith("\n"):
                        text += "\n"           # a last line without its newline
                    if text:
                        parts.append(_parse_lines(text, names, mod_ids))
                        packed.append(_pack_names(names))      # this chunk's names, as bytes
                        names.clear()
                    if not chunk:
                        break
        except OSError:
            if parts and raise_midway:
                raise
        if not parts:
            return cls(np.zeros(0, np.uint64), b"", [], np.zeros(0, np.uint16), list(mod_ids))
        blob = b"".join(p[0] for p in packed)
        starts = np.cumsum([0] + [len(p[0]) for p in packed[:-1]])
        offs = np.concatenate([p[1][:-1] + s for p, s in zip(packed, starts)] + [np.array([len(blob)])])
        return cls(np.concatenate([p[0] for p in parts]), b"".join(p[1] for p in parts),
                   (blob, offs, np.concatenate([p[2] for p in packed])),
                   np.concatenate([p[2] for p in parts]), list(mod_ids))

    def __len__(self) -> int:
        return len(self._offs) - 1

    def addresses_real(self) -> bool:
        """False where kallsyms hides addresses (zeros: not root, kptr_restrict)."""
        return bool(len(self.addrs)) and bool(self.addrs[:64].any())

    def address(self, name: str) -> int | None:
        rows = self.rows_of(name)
        return int(self.addrs[rows[0]]) if rows else None

    def rows_of(self, name: str) -> list[int]:
        """Every row named ``name``, first first."""
        import numpy as np
        h = np.int64(hash(name))
        lo, hi = np.searchsorted(self._hash, h, "left"), np.searchsorted(self._hash, h, "right")
        return sorted(r for r in self._hrow[lo:hi].tolist() if self.name(r) == name)     # (hashes may collide)

    def __contains__(self, name: str) -> bool:
        return bool(self.rows_of(name))

    def module(self, i: int) -> str | None:
        return self.mod_names[int(self.mods[i])] or None


_HEX_DIGIT = None      # byte -> its hex value, 255 if none (built on first use)


def _parse_lines(text: str, names: list[str], mod_ids: dict[str, int]):
    """Whole kallsyms lines ("ADDR T name" or "ADDR T name\\t[module]") ->
    (addresses, type bytes, module codes), their names appended to ``names``
    and new modules to ``mod_ids``. Numpy reads the fixed-width columns and
    ``str.split`` the names, all in C; a chunk of any other shape goes
    through the regular expression, line by line."""
    global _HEX_DIGIT
    import numpy as np
    from operator import itemgetter
    b = text.encode("ascii", "replace")     # one byte per character: offsets stay the text's
    buf = np.frombuffer(b, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    n = len(nl)
    w = b.find(b" ")            # the address's width: 16 hex digits (8 on 32-bit)
    ok = n > 0 and 0 < w
    if ok:
        starts = np.empty(n, dtype=np.int64)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        ok = bool((nl - starts > w + 3).all())
    if ok:
        ok = bool((buf[starts + w] == 32).all() and (buf[starts + w + 2] == 32).all())
    if ok:
        toks = text.split()
        tabs = np.flatnonzero(buf == 9)
        tab_line = np.searchsorted(nl, tabs)
        has_mod = np.zeros(n, dtype=bool)
        has_mod[tab_line] = True
        ok = (int(has_mod.sum()) == len(tabs) and len(toks) == 3 * n + len(tabs)
              and bool((buf[tabs + 1] == ord("[")).all() and (buf[nl[has_mod] - 1] == ord("]")).all()))
    if ok:
        if _HEX_DIGIT is None:
            h = np.full(256, 255, dtype=np.uint8)
            h[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)
            _HEX_DIGIT = h
        digits = _HEX_DIGIT[buf[starts[:, None] + np.arange(w)]]
        ok = bool((digits < 16).all())
    if not ok:
        return _parse_lines_slowly(text, names, mod_ids)
    addrs = np.zeros(n, dtype=np.uint64)
    for k in range(w):
        addrs = (addrs << np.uint64(4)) | digits[:, k].astype(np.uint64)
    first = np.cumsum(3 + has_mod) - (3 + has_mod)      # each line's first token
    got = itemgetter(*(first + 2).tolist())(toks)
    names.extend(got if n > 1 else (got,))
    mods = np.zeros(n, dtype=np.uint16)
    if has_mod.any():
        mods[has_mod] = [mod_ids.setdefault(toks[i][1:-1], len(mod_ids)) for i in (first[has_mod] + 3).tolist()]
    return addrs, buf[starts + w + 1].tobytes(), mods


def _parse_lines_slowly(text: str, names: list[str], mod_ids: dict[str, int]):
    import numpy as np
    rows = _KSYM_LINE.findall(text)
    names.extend(r[2] for r in rows)
    return (np.array([int(r[0], 16) for r in rows], dtype=np.uint64), "".join(r[1] for r in rows).encode(),
            np.array([mod_ids.setdefault(r[3], len(mod_ids)) for r in rows], dtype=np.uint16))


class _Names:
    """The rows' names as a read-only sequence over the table's byte string."""

    def __init__(self, t: SymbolTable):
        self._t = t

    def __len__(self) -> int:
        return len(self._t)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._t.name(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._t.name(i)

    def __iter__(self):
        return (self._t.name(i) for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)


def _pack_names(names: list[str]):
    """Names -> (their bytes, each followed by a newline; each one's offset
    there, and the end as a last entry; each one's hash)."""
    import numpy as np
    blob = ("\n".join(names) + "\n").encode("utf-8", "replace") if names else b""
    nl = np.flatnonzero(np.frombuffer(blob, dtype=np.uint8) == 10)
    offs = np.zeros(len(names) + 1, dtype=np.int64)
    offs[1:] = nl + 1
    return blob, offs, np.fromiter(map(hash, names), dtype=np.int64, count=len(names))


@functools.lru_cache(maxsize=1)
def symbol_table() -> SymbolTable:
    """The first read of /proc/kallsyms in this process: feature detection and
    the tracer's first symbol table share it."""
    return SymbolTable.read()


class _Kallsyms:
    """name -> address over the shared :class:`SymbolTable` (first occurrence
    wins; module symbols included): a read-only mapping."""

    def __init__(self, table: SymbolTable):
        self._t = table

    def __contains__(self, name) -> bool:
        return name in self._t

    def __getitem__(self, name: str) -> int:
        a = self._t.address(name)
        if a is None:
            raise KeyError(name)
        return a

    def get(self, name: str, default=None):
        a = self._t.address(name)
        return default if a is None else a

    def __len__(self) -> int:
        return len(self._t.index)

    def __bool__(self) -> bool:
        return len(self._t) > 0

    def __iter__(self):
        return iter(self._t.index)

    def keys(self):
        return self._t.index.keys()

    def values(self):
        return [int(self._t.addrs[i]) for i in self._t.index.values()]

    def items(self):
        return [(n, int(self._t.addrs[i])) for n, i in self._t.index.items()]


@functools.lru_cache(maxsize=1)
def kallsyms() -> _Kallsyms:
    """name -> address from /proc/kallsyms (first occurrence wins; module symbols included)."""
    return _Kallsyms(symbol_table())


def _headers_release(build: Path) -> str | None:
    # utsrelease.h first: Debian's include/config/kernel.release holds the upstream
    # version (6.1.192) while UTS_RELEASE is the real release (6.1.0-56-amd64)
    try:
        m = re.search(r'#define\s+UTS_RELEASE\s+"([^"]+)"',
                      (build / "include" / "generated" / "utsrelease.h").read_text())
        if m:
            return m.group(1)
    except OSError:
        pass
    try:
        return (build / "include" / "config" / "kernel.release").read_text().strip()
    except OSError:
        return None


def _header_text(build: Path | None, rel: str) -> str | None:
    """A header from the build tree or, for split packages (Debian's -common), the source tree."""
    if build is None:
        return None
    for root in (build, build.parent / "source"):
        try:
            return (root / rel).read_text()
        except OSError:
            continue
    return None


def _events_from_header(build: Path | None) -> tuple:
    text = _header_text(build, "include/linux/mmu_notifier.h")
    if text is None:
        return ()
    m = re.search(r"enum\s+mmu_notifier_event\s*\{(.*?)\}", text, re.S)
    if not m:
        return ()
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    out, nxt = [], 0
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, val = item.partition("=")
        nxt = int(val.strip(), 0) if val.strip() else nxt
        out.append((nxt, name.strip()))
        nxt += 1
    return tuple((v, n.removeprefix("MMU_NOTIFY_").lower()) for v, n in out)


def _gfp_from_header(build: Path | None) -> int | None:
    for rel in ("include/linux/gfp_types.h", "include/linux/gfp.h"):
        text = _header_text(build, rel)
        if text is None:
            continue
        m = re.search(r"#define\s+___GFP_DIRECT_RECLAIM\s+(0x[0-9a-fA-F]+|\d+)u?", text)
        if m:
            return int(m.group(1), 0)
    return None


def _kprobes_interface() -> bool:
    return any(os.path.exists(p) for p in ("/sys/kernel/tracing/kprobe_events",
                                          "/sys/kernel/debug/tracing/kprobe_events",
                                          "/sys/bus/event_source/devices/kprobe"))


@functools.lru_cache(maxsize=1)
def fentry_verdict() -> Verdict:
    """Does this kernel really load and attach fentry programs? (ok, reason):
    a trial attach of a no-op program (:mod:`mmntrace.trial`), once per
    process. ``Features.fentry_possible`` is only the cheap guess that
    :func:`probe` makes without a syscall; a kernel can have BTF and the
    trampoline code and still refuse. Run only where a backend is chosen
    (``record``/``daemon`` with ``auto`` or ``fentry``) and by ``doctor``."""
    from .trial import fentry_trial
    f = probe()
    return fentry_trial(targets=[sym for _h, sym, _n in f.hooks], btf=load_vmlinux())


@functools.lru_cache(maxsize=1)
def probe() -> Features:
    """Detect once what this kernel offers (cached). Cheap and syscall-free
    (it runs everywhere, lab guests included): whether fentry really works is
    :func:`fentry_verdict`'s to say."""
    rel = os.uname().release
    ks = kallsyms()
    addrs_real = symbol_table().addresses_real()
    b: Btf | None = load_vmlinux()
    build = Path("/lib/modules") / rel / "build"
    build_ok = build.is_dir()
    hrel = _headers_release(build) if build_ok else None

    found = []
    for h in sorted(hooks.HOOKS, key=lambda h: h.id):      # attached in id order
        sym = next((s for s in h.symbols if s in ks), None)
        if sym is not None:
            found.append((h.id, sym, h.name))

    events: tuple = ()
    if b is not None:
        e = b.enum("mmu_notifier_event")
        if e:
            events = tuple(sorted((v, n.removeprefix("MMU_NOTIFY_").lower()) for n, v in e.items()))
    if not events:
        events = _events_from_header(build if build_ok else None)

    ops: tuple = ()
    if b is not None:
        m = b.struct_members("mmu_notifier_ops")
        if m:
            ops = tuple(m)
    if not ops:
        text = _header_text(build if build_ok else None, "include/linux/mmu_notifier.h")
        mm_ = re.search(r"struct\s+mmu_notifier_ops\s*\{(.*?)\n\};", text or "", re.S)
        if mm_:
            ops = tuple(re.findall(r"\(\*(\w+)\)\s*\(", mm_.group(1)))

    pc_sym = pc_addr = None
    pc_off = 0                  # the count's offset in pc_sym
    if "__preempt_count" in ks:
        pc_sym, pc_addr = "__preempt_count", ks["__preempt_count"]
    elif "pcpu_hot" in ks and b is not None:
        pc_off = b.member_offset("pcpu_hot", "preempt_count")
        if pc_off is not None:
            pc_sym, pc_addr = "pcpu_hot", ks["pcpu_hot"] + pc_off

    pc_var = None               # the same variable in BTF (a per-CPU VAR where pahole emitted it)
    if pc_sym is not None and b is not None and b.enumerator("BPF_FUNC_this_cpu_ptr") is not None:
        vid = b.find(pc_sym, (btfmod.KIND_VAR,))
        if vid is not None:
            pc_var = (vid, pc_off)

    rt = "rt_spin_lock" in ks       # PREEMPT_RT's spinlock_t: a sleeping lock

    gfp = None
    if b is not None:
        bit = b.enumerator("___GFP_DIRECT_RECLAIM_BIT")
        gfp = (1 << bit) if bit is not None else b.enumerator("___GFP_DIRECT_RECLAIM")
    if gfp is None:
        gfp = _gfp_from_header(build if build_ok else None)

    return Features(
        release=rel,
        is_root=os.geteuid() == 0,
        kallsyms=addrs_real,
        kprobes=_kprobes_interface() and ("register_kprobe" in ks or "kprobe_ftrace_handler" in ks),
        btf=b is not None,
        headers=str(build) if build_ok else None,
        headers_release=hrel,
        headers_match=hrel == rel,
        ringbuf="bpf_ringbuf_output" in ks,
        mmap_array="array_map_mmap" in ks,
        fentry_possible=b is not None and "bpf_trampoline_link_prog" in ks,
        mmu_notifiers="__mmu_notifier_invalidate_range_start" in ks,
        hooks=tuple(found),
        registration=tuple(s for s in REGISTRATION if s in ks),
        events=events,
        ops=ops,
        preempt_count_sym=pc_sym,
        preempt_count_addr=pc_addr,
        per_cpu_offset_addr=ks.get("__per_cpu_offset"),
        subs_list_off=b.member_offset("mmu_notifier_subscriptions", "list") if b is not None else None,
        sleepers=tuple((s, a) for s, a in SLEEPER_CANDIDATES.items() if s in ks),
        gfp_direct_reclaim=gfp,
        layout=btf_layout(b, ops) if b is not None else None,
        subs_itree_off=b.member_offset("mmu_notifier_subscriptions", "itree") if b is not None else None,
        task_iter=b is not None and "bpf_iter_reg_target" in ks and b.has_func("bpf_iter_task"),
        iter_task_btf_id=b.find("bpf_iter_task", (btfmod.KIND_FUNC,)) if b is not None else None,
        raw_sched_switch=b is not None and (b.typedef_proto_params("btf_trace_sched_switch") or 0) >= 5,
        preempt_rt=rt,
        task_rt_offsets=_task_rt_offsets(b) if rt else None,
        # bpf_get_attach_cookie came with perf-event BPF links (upstream 82e6b1eee6a8,
        # 7adfc6c9b315, 5.15); the links are made on the kprobe PMU's events
        kprobe_cookie=(b is not None and b.enumerator("BPF_FUNC_get_attach_cookie") is not None
                       and Path("/sys/bus/event_source/devices/kprobe/type").exists()),
        # bpf_loop (5.17): its callback is verified as a call,
        # where a bounded loop is unrolled (bpf/discovery.h rb_next_of, mmntrace/subprog.py)
        bpf_loop=b is not None and b.enumerator("BPF_FUNC_loop") is not None,
        # what every bcc compile reads all of kallsyms to learn (mmntrace/nokallsyms.py)
        probe_read_kernel=b is not None and b.enumerator("BPF_FUNC_probe_read_kernel") is not None,
        preempt_count_var=pc_var,
        lean_headers=lean_headers(b, build if build_ok else None),
    )


#: the headers that bcc's own (helpers.h: linux/log2.h, asm/page.h) and the
#: program's one include (uapi/linux/ptrace.h, for struct pt_regs) pull in,
#: and through them some 120 more (bitops, percpu, paravirt types...), parsed
#: three times by each of bcc's compiles: 1.2-1.8 s of the 7.5 s the daemon's
#: program took in the lab's 6.1 guest, which reads each file through its
#: share. What the program needs of them: struct pt_regs, PAGE_SIZE and x86's
#: EFLAGS.IF (linux/log2.h serves only bcc's stack-map macro, which it does
#: not use), which BTF, the page size and bpf/mmntrace.bpf.c give instead.
#: {arch}: the kernel's source architecture.
LEAN_SKIPPED = ("arch/{arch}/include/asm/ptrace.h", "arch/{arch}/include/asm/page.h", "include/linux/log2.h")
_SRCARCH = {"x86_64": "x86", "aarch64": "arm64"}
_GUARD = re.compile(r"\A(?:\s|/\*.*?\*/|//[^\n]*\n)*#\s*ifndef\s+(\w+)\s*\n\s*#\s*define\s+(\w+)", re.S)


def header_guard(text: str) -> str | None:
    """The include guard of a header's text (``#ifndef X`` then ``#define X``
    before anything else but comments), None if it has none."""
    m = _GUARD.match(text)
    return m.group(1) if m and m.group(1) == m.group(2) else None


def lean_headers(b, build: Path | None, machine: str | None = None) -> tuple | None:
    """What a compile needs to leave out :data:`LEAN_SKIPPED` (each defined as
    already included, by its own guard, read from the kernel's headers):
    ``(guards, (pt_regs size, its scalar members), page size)``; None where a
    header, its guard, BTF or struct pt_regs is missing (the full headers then)."""
    arch = _SRCARCH.get(machine or os.uname().machine)
    if b is None or build is None or arch is None:
        return None
    guards = []
    for rel in LEAN_SKIPPED:
        text = _header_text(build, rel.format(arch=arch))
        g = header_guard(text) if text is not None else None
        if g is None:
            return None
        guards.append(g)
    regs = b.scalar_fields("pt_regs")
    if regs is None or not regs[1]:
        return None
    return tuple(guards), (regs[0], tuple(regs[1])), os.sysconf("SC_PAGE_SIZE")


def _task_rt_offsets(b) -> tuple | None:
    """task_struct's migration_disabled and rcu_read_lock_nesting offsets (BTF)."""
    if b is None:
        return None
    md, rcu = b.member_offset("task_struct", "migration_disabled"), b.member_offset("task_struct", "rcu_read_lock_nesting")
    return (md, rcu) if md is not None and rcu is not None else None


# What the BPF program reads from MM structs, as (struct, member). With all
# of them in BTF it needs no linux/mm_types.h: parsing that header is ~6 s of
# each bcc compile in the lab (of ~12 s), paid by every record and test.
_LAYOUT_MEMBERS = {
    "MM_SUBS": ("mm_struct", "notifier_subscriptions"),
    "SUB_HLIST": ("mmu_notifier", "hlist"),
    "SUB_OPS": ("mmu_notifier", "ops"),
    "ISUB_MM": ("mmu_interval_notifier", "mm"),
    "IOPS_INVALIDATE": ("mmu_interval_notifier_ops", "invalidate"),
    "ISUB_OPS": ("mmu_interval_notifier", "ops"),
    "ISUB_TREE": ("mmu_interval_notifier", "interval_tree"),
    "ITN_START": ("interval_tree_node", "start"),
    "ITN_LAST": ("interval_tree_node", "last"),
    "TASK_MM": ("task_struct", "mm"),
    "TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "TASK_PID": ("task_struct", "pid"),
    "TASK_TGID": ("task_struct", "tgid"),
    "TASK_NVCSW": ("task_struct", "nvcsw"),
    "RB_LEFT": ("rb_node", "rb_left"),
    "RB_RIGHT": ("rb_node", "rb_right"),
    "RB_PARENT": ("rb_node", "__rb_parent_color"),
    "RBC_LEFTMOST": ("rb_root_cached", "rb_leftmost"),
    "RANGE_MM": ("mmu_notifier_range", "mm"),
    "RANGE_START": ("mmu_notifier_range", "start"),
    "RANGE_END": ("mmu_notifier_range", "end"),
    "RANGE_FLAGS": ("mmu_notifier_range", "flags"),
    "RANGE_EVENT": ("mmu_notifier_range", "event"),
}


def btf_layout(b, ops: tuple) -> tuple | None:
    """MMNT_L_* values for bpf/mmntrace.bpf.c from BTF, or None (then it
    includes the kernel headers): member offsets, struct sizes, the offset
    of each mmu_notifier_ops member, and TASK_REPORT_MAX (a macro: taken
    from the sched_switch tracepoint's own format)."""
    out = {}
    for name, (st, mem) in _LAYOUT_MEMBERS.items():
        v = b.member_offset(st, mem)
        if v is None:
            return None
        out[name] = v
    out["RANGE_SIZE"] = b.struct_size("mmu_notifier_range")
    out["OPS_SIZE"] = b.struct_size("mmu_notifier_ops")
    m = b.struct_members("mmu_notifier_ops") or {}
    if not {"release", "clear_flush_young", "clear_young", "test_young", "invalidate_range_start",
            "invalidate_range_end"} <= set(m):
        return None          # the program names these unconditionally: the headers decide
    for op in ops:
        if op in m:
            out[f"OPS_{op}"] = m[op]
    trm = task_report_max()
    if None in out.values() or trm is None or out["RANGE_SIZE"] > 64 or max(
            out[k] for k in out if k.startswith("RANGE_") and k != "RANGE_SIZE") > 56:
        return None
    out["TASK_REPORT_MAX"] = trm
    return tuple(sorted(out.items()))


def task_report_max() -> int | None:
    """TASK_REPORT_MAX, the prev_state that sched_switch reports for a
    preempted task, read from the tracepoint's print format, where the
    kernel spells it out: ``REC->prev_state & (((0x0 | 0x1 | ...) + 1) << 1) ? "+" : ""``."""
    for base in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            text = Path(base, "events/sched/sched_switch/format").read_text()
        except OSError:
            continue
        m = re.search(r'REC->prev_state\s*&\s*([0-9a-fx|+<() ]+?)\s*\?\s*"\+"', text)
        return _eval_int_expr(m.group(1)) if m else None
    return None


def _eval_int_expr(expr: str) -> int | None:
    """Value of an integer expression of literals, |, +, << and parentheses; None otherwise."""
    import ast
    import operator
    ops = {ast.BitOr: operator.or_, ast.Add: operator.add, ast.LShift: operator.lshift}

    def ev(n):
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.BinOp) and type(n.op) in ops:
            return ops[type(n.op)](ev(n.left), ev(n.right))
        raise ValueError(n)
    try:
        v = ev(ast.parse(expr.strip(), mode="eval").body)
    except (SyntaxError, ValueError, RecursionError):
        return None
    return v if 0 < v < 1 << 32 else None


def require_recording(f: Features, backend: str = "auto") -> None:
    """Raise the matching :mod:`mmntrace.errors` exception if ``f`` cannot record.
    ``backend``: what was asked for; kprobes are needed by every backend (the
    fentry one calibrates with a kprobe, probes the registration functions
    with them and falls back to them), and one who asked for fentry by name
    is told so."""
    if not f.is_root:
        raise errors.NotRootError("recording needs root (loading BPF programs and reading kernel addresses): run it with sudo")
    if not f.kprobes:
        also = (", and --backend fentry needs them too (for calibration, the registration functions and any "
                "probe whose trampoline cannot attach)"
                if backend == "fentry" else "")
        raise errors.NoKprobesError("kprobes are not available on this kernel (CONFIG_KPROBES is off or tracefs is "
                                    f"missing){also}; a development checkout's `mmntrace lab` boots a kernel that has them")
    if not f.kallsyms:
        raise errors.NoKprobesError("/proc/kallsyms shows no real addresses (kptr_restrict): set kernel.kptr_restrict=0")
    if f.headers is None:
        if not f.btf:
            raise errors.NoKernelInfoError(f"this kernel has neither BTF nor headers: install linux-headers-{f.release}")
        raise errors.NoKernelInfoError(f"kernel headers for {f.release} are missing (/lib/modules/{f.release}/build): install linux-headers-{f.release}")
    if not f.headers_match:
        raise errors.HeadersMismatchError(
            f"the headers in {f.headers} are for {f.headers_release or 'an unknown release'}, not the running {f.release}: install linux-headers-{f.release}")
    if not f.mmu_notifiers:
        raise errors.NoMmuNotifierError("this kernel has no MMU notifiers (CONFIG_MMU_NOTIFIER is off): nothing to trace")
