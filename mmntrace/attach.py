"""Placing one probe, with the fentry-to-kprobe fallback, and the list of
everything placed or tried (the recording's metadata, ``attached``).

The tracer decides *what* to probe and in which order (mmntrace/tracer.py);
:class:`Probes` does the placing: a trampoline (mmntrace/fentry.py) where the
backend is fentry, else, or when the trampoline is refused, a kprobe and its
kretprobe; tracepoints raw where the kernel offers them. Every attempt leaves
one record, whatever its outcome, so that a report can say what was not
probed and why.

The hooks' and callbacks' entry kprobes go through :class:`KprobeLinks`
where the kernel has kprobe BPF links with a cookie (5.15+): the cookie
tells ``hk_entry`` its hook and ``cb_entry`` its callback, which they
otherwise look up by address in a hash map on every call.
"""

from __future__ import annotations

import os

from . import bpfsys
from .layout import header
from .probes import MAXACTIVE
from .quiet import debug


#: the fentry backend's programs (entry, exit) by probe kind: each compiled
#: once and loaded on every function of its kind (mmntrace/fentry.py)
FENTRY_PROGS = {"hook": ("hkf_entry", "hkf_exit"), "callback": ("cbf_entry", "cbf_exit"),
                "sleeper": ("msf_entry", None)}


_debug = debug

_H = header().defines
COOKIE_VALID = _H["MMNT_COOKIE_VALID"]
_CHAINED, _HOOK, _SERIES = _H["MMNT_COOKIE_CHAINED_SHIFT"], _H["MMNT_COOKIE_HOOK_SHIFT"], _H["MMNT_COOKIE_SERIES_SHIFT"]


def hook_cookie(hook: int) -> int:
    """hk_entry's cookie for hook id ``hook`` (bpf/mmntrace.h MMNT_COOKIE_*)."""
    if not 0 <= hook < 1 << 8:
        raise ValueError(f"hook id {hook} does not fit a cookie")
    return COOKIE_VALID | hook << _HOOK


def callback_cookie(func: int, hook: int, series: int, chained: bool) -> int:
    """cb_entry's cookie: its cb_info entry, the address's lower half only
    (the program takes the upper half from the probed address)."""
    if not (0 <= hook < 1 << 8 and 0 <= series < 1 << 16):
        raise ValueError(f"callback hook {hook} / series {series} do not fit a cookie")
    return COOKIE_VALID | int(bool(chained)) << _CHAINED | hook << _HOOK | series << _SERIES | (func & 0xffffffff)


class KprobeLinks:
    """Entry kprobes attached through BPF links with a cookie (bpfsys.kprobe_link),
    by function name; ``enabled`` False (no kprobe PMU, a kernel without
    perf-event links, a program compiled without MMNT_KPROBE_COOKIE): every
    attach says no and the caller takes bcc's attach_kprobe, whose programs
    read cookie 0 and look the address up instead."""

    def __init__(self, bpf, enabled: bool):
        self.bpf = bpf
        self.pmu = bpfsys.kprobe_pmu_type() if enabled else None
        self.fds: dict[str, tuple[int, int]] = {}      # function -> (perf event fd, link fd)

    def attach(self, symbol: str, fn_name: str, cookie: int) -> bool:
        """``fn_name`` (a kprobe program of bcc's) on ``symbol``'s entry with
        ``cookie``. False: not attached (the caller falls back to bcc, which
        says why a function cannot be probed); a kernel that refuses the
        links themselves turns them off for the rest of the session."""
        if self.pmu is None or symbol in self.fds:
            return False
        try:
            prog = self.bpf.load_func(fn_name.encode(), 2).fd      # BPF.KPROBE
            self.fds[symbol] = bpfsys.kprobe_link(prog, symbol, cookie, self.pmu)
            return True
        except bpfsys.BpfSysError as e:
            _debug(f"kprobe link on {symbol}: {e}; bcc's attach_kprobe instead")
            if str(e).startswith("LINK_CREATE"):
                self.pmu = None             # no perf-event links here (before 5.15)
            return False
        except Exception as e:
            _debug(f"kprobe link on {symbol}: {e}; bcc's attach_kprobe instead")
            return False

    def detach(self, symbol: str) -> bool:
        """Close ``symbol``'s link and event; False if it had none."""
        fds = self.fds.pop(symbol, None)
        if fds is None:
            return False
        for fd in reversed(fds):
            try:
                os.close(fd)
            except OSError:
                pass
        return True

    def detach_all(self) -> None:
        for symbol in list(self.fds):
            self.detach(symbol)


class KprobeHooksMissing(Exception):
    """A hook's trampoline was refused where the program was compiled without
    the hooks' kprobe pair (Tracer.kprobe_hooks): the tracer compiles it in."""

    def __init__(self, symbol: str, reason: str):
        super().__init__(f"{symbol}: {reason}")
        self.symbol, self.reason = symbol, reason


class Probes:
    """The probes of one loaded program (``bpf``: bcc's BPF object).

    ``records``: one dict per probe placed or tried, in order: kind (hook,
    callback, register, sleeper, tracepoint), symbol, hook, module, status
    ("attached", "skipped: why", later "detached: module unloaded"), attach
    (kprobe, fentry, raw_tracepoint, tracepoint) and, where a trampoline was
    refused, fentry_error. ``callback_fentry``: driver callbacks get
    trampolines too (a trampoline pins its module: only when fentry was asked
    for by name); ``hook_fentry``: the hooks do (not when streaming under
    `auto`: see Tracer.hook_fentry)."""

    def __init__(self, bpf, tramp, ksyms, *, fentry: bool, callback_fentry: bool, hook_fentry: bool = True,
                 links: KprobeLinks | None = None, kprobe_hooks: bool = True):
        self.bpf = bpf
        self.tramp = tramp
        self.ksyms = ksyms
        self.fentry = fentry
        self.callback_fentry = callback_fentry
        self.hook_fentry = hook_fentry
        self.kprobe_hooks = kprobe_hooks        # False: no hk_entry/hk_return to fall back to
        self.links = links if links is not None else KprobeLinks(bpf, False)
        self.records: list[dict] = []

    def probe(self, kind: str, symbol: str, hook, module, entry: str, ret: str | None,
              hook_id: int | None = None, cb: tuple | None = None) -> bool:
        """Probe ``symbol``: its kind's trampoline programs where the backend
        takes them, else (or when refused) ``entry`` as a kprobe and ``ret`` as
        its kretprobe (``ret`` None: the entry alone, both ways). ``cb``: a
        callback's (func, hook, series, chained), which its trampoline copy
        carries, and its kprobe's link cookie where :class:`KprobeLinks` makes
        one (else the kprobe reads cb_info). True when it is in place."""
        rec = dict(kind=kind, symbol=symbol, hook=hook, module=module, status="attached", hook_id=hook_id,
                   attach="kprobe")
        progs = FENTRY_PROGS.get(kind)
        if progs and ret is None:       # an entry probe only (a chained callback, a sleeper)
            progs = (progs[0], None)
        if progs and self.fentry and (kind != "callback" or self.callback_fentry or not module) \
                and (kind != "hook" or self.hook_fentry):
            err = self.tramp.attach(symbol, module, *progs, hook=hook_id if kind == "hook" else None,
                                    cb=cb if kind == "callback" else None)
            if err is None:
                if kind != "sleeper":       # their recursion misses are drops (Counters.prog_missed)
                    self.tramp.counted.add(self.ksyms.by_name[symbol][0])
                rec["attach"] = "fentry"
                self.records.append(rec)
                return True
            if kind == "hook" and not self.kprobe_hooks:
                raise KprobeHooksMissing(symbol, err)
            rec["fentry_error"] = err     # falls back to a kprobe (pair)
        # the return probe first: a call that meets only the entry probe would
        # be seen (and not counted untimed) yet leave no record
        if ret:
            try:
                self.bpf.attach_kretprobe(event=symbol.encode(), fn_name=ret.encode(), maxactive=MAXACTIVE)
            except Exception as e:
                rec["status"] = f"skipped: kretprobe: {str(e).split(',')[0]}"
                self.records.append(rec)
                return False
        cookie = None
        if kind == "hook" and hook_id is not None:
            cookie = hook_cookie(hook_id)
        elif kind == "callback" and cb is not None:
            cookie = callback_cookie(*cb)
        if cookie is not None and self.links.attach(symbol, entry, cookie):
            rec["cookie"] = True        # the program reads what it serves from its link
            self.records.append(rec)
            return True
        try:
            self.bpf.attach_kprobe(event=symbol.encode(), fn_name=entry.encode())
        except Exception as e:
            if ret:
                self.bpf.detach_kretprobe(event=symbol.encode(), fn_name=ret.encode())
            rec["status"] = f"skipped: {str(e).split(',')[0]}"
            self.records.append(rec)
            return False
        self.records.append(rec)
        return True

    def tracepoint(self, category: str, name: str, *, raw: bool = True, on_failure: str | None = None) -> bool:
        """category:name as a raw tracepoint where ``raw`` and it attaches (its
        arguments as the kernel passes them: no perf record built per event),
        else the perf tracepoint. ``on_failure``: what a failed perf attach
        leaves (kept as its status) instead of an error. True: attached."""
        info = dict(kind="tracepoint", symbol=f"{category}:{name}", hook=None, module=None, status="attached")
        if raw:
            try:
                self.bpf.attach_raw_tracepoint(tp=name.encode(), fn_name=f"raw_tracepoint__{name}".encode())
                self.records.append(info | {"attach": "raw_tracepoint"})
                return True
            except Exception as e:
                _debug(f"raw tracepoint {name}: {e}; the perf tracepoint instead")
        try:
            self.bpf.attach_tracepoint(tp=f"{category}:{name}".encode(),
                                       fn_name=f"tracepoint__{category}__{name}".encode())
        except Exception as e:
            if on_failure is None:
                raise
            self.records.append(info | {"status": f"failed: {e}; {on_failure}"})
            return False
        self.records.append(info | {"attach": "tracepoint"})
        return True

    def raw_tracepoint(self, category: str, name: str) -> None:
        """category:name as a raw tracepoint, or an exception (no fallback)."""
        self.bpf.attach_raw_tracepoint(tp=name.encode(), fn_name=f"raw_tracepoint__{name}".encode())
        self.records.append(dict(kind="tracepoint", symbol=f"{category}:{name}", hook=None, module=None,
                                 status="attached", attach="raw_tracepoint"))

    def unprobe(self, rec: dict) -> None:
        """Take one function's probes away (its trampolines, kprobe, kretprobe),
        whichever it has; the record stays, its status for the caller to set."""
        if rec.get("attach") == "fentry" and rec.get("addr") is not None:
            self.tramp.detach(rec.get("addr"))
        self.links.detach(rec["symbol"])
        for detach in (self.bpf.detach_kretprobe, self.bpf.detach_kprobe):
            try:
                detach(event=rec["symbol"].encode())
            except Exception:
                pass

    def detach_all(self) -> None:
        """Every probe of this program off; the program stays loaded."""
        self.tramp.detach()
        self.links.detach_all()
        for ev in list(self.bpf.kprobe_fds):
            self.bpf.detach_kprobe_event(ev)
        for tp in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(tp)
        for tp in list(self.bpf.raw_tracepoint_fds):
            self.bpf.detach_raw_tracepoint(tp)
