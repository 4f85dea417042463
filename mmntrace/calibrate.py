"""Calibration: what the probe machinery itself adds, measured at start-up.

The tracer's BPF programs read preempt_count() (and on PREEMPT_RT the task's
migration_disabled and RCU nesting) to say whether a callback ran in atomic
context; a kprobe or a BPF trampoline adds its own share, which differs by
mechanism and kernel. And a probed callback costs the hook it runs in more
than its programs' own time can see. Both are measured on the tracer's own
getppid() calls, with the programs the tracer compiled, and written into the
``calib`` array the BPF side subtracts (bpf/context.h):

    c = Calibration(bpf, ksyms, trampolines, backend="fentry", preempt_rt=False,
                    fentry_sym=fentry_calib_symbol(ksyms.by_name)).run()
    c.kprobe, c.fentry, c.irqs_off, c.rt, c.probe_overhead
"""

from __future__ import annotations

import ctypes
import os

from . import btf as btfmod
from .attach import callback_cookie
from .layout import header
from .probes import MAXACTIVE
from .quiet import debug as _debug

_H = header()
_CALIB_KPROBE, _CALIB_FENTRY = 0, 4   # bpf/context.h calib[] bases
_CALIB_RT = {_CALIB_KPROBE: 12, _CALIB_FENTRY: 14}   # PREEMPT_RT: lowest migration_disabled, rcu nesting
#: calib[] slots of probe_overhead(), by mechanism and whether the callback had
#: its entry probe alone (chained) or an exit probe too
_CALIB_OVERHEAD = {("kprobe", False): 8, ("fentry", False): 9, ("kprobe", True): 16, ("fentry", True): 17}
_CALIB_NSAMPLES, _CALIB_MAX_SAMPLES = 10, 512
_HOOK_CALIB = _H.enums["mmnt_hook"]["MMNT_HOOK_CALIB"]   # in-kernel only: the calibration
#: the calibration's callback stand-in: getppid() calls it exactly once
#: (task_tgid_vnr -> __task_pid_nr_ns, kernel/sys.c, kernel/pid.c)
CALIB_INNER = "__task_pid_nr_ns"
CALIB_CALLS = 300
#: each phase (no callback probe, kprobe, trampoline) is measured this many
#: times, alternating, and its least median kept: a host that stalls the
#: machine during one phase only lengthens it (a lab guest's 6.1 run took
#: 1,672 ns per fentry callback off every hook call, where 331-890 were seen)
CALIB_ROUNDS = 2


def least(values) -> float | None:
    """The smallest of a phase's medians (None where none was measured)."""
    vals = [v for v in values if v is not None]
    return min(vals) if vals else None


def overhead_median(durations) -> float | None:
    """The median of the calibration's durations, the first tenth left out
    (the first calls of a freshly attached probe pay for cold caches)."""
    d = list(durations)[len(durations) // 10:]
    if not d:
        return None
    d.sort()
    m = len(d) // 2
    return float(d[m]) if len(d) % 2 else (d[m - 1] + d[m]) / 2


def overhead_key(mech: str, chained: bool) -> str:
    """probe_overhead's key: ``kprobe``/``fentry`` for a probe pair, ``kprobe_entry``
    /``fentry_entry`` for a chained callback's entry probe alone."""
    return f"{mech}_entry" if chained else mech


def fentry_calib_symbol(by_name) -> str | None:
    """getppid's syscall function with BTF: the fentry calibration's target."""
    b = btfmod.load_vmlinux()
    # __do_sys_: the body the wrapper calls, where the wrapper has no BTF (6.12 PREEMPT_RT)
    for prefix in ("__x64_sys_", "__arm64_sys_", "__se_sys_", "sys_", "__do_sys_"):
        sym = prefix + "getppid"
        if sym in by_name and b is not None and b.func_signature(sym) is not None:
            return sym
    return None


class Calibration:
    """One calibration run over a loaded program (``bpf``, bcc's), the
    tracer's symbols and its fentry loader (mmntrace/fentry.py). Results:
    ``kprobe``, ``fentry``: the preempt_count a kprobe and a trampoline add
    (None: unreadable); ``irqs_off``: kprobes run with interrupts off here;
    ``rt``: PREEMPT_RT context the probe adds, by mechanism;
    ``probe_overhead``: ns a probed callback costs its hook, by mechanism."""

    def __init__(self, bpf, ksyms, tramp, *, backend: str, preempt_rt: bool, fentry_sym: str | None,
                 modes: frozenset[bool] = frozenset({False}), links=None, kprobe_hooks: bool = True):
        self.bpf, self.ksyms, self.tramp = bpf, ksyms, tramp
        # False: the program has no hook kprobe pair; the overhead's outer
        # function takes the hooks' trampoline programs (on fentry_sym)
        self.kprobe_hooks = kprobe_hooks
        # the callbacks' entry kprobes go through BPF links with a cookie where
        # attach.KprobeLinks can make them: the cost measured is theirs then
        self.links = links
        # how the callbacks are probed, each way calibrated: True, their entry alone
        # (MMNT_CHAIN); False, entry and exit (Tracer._calibrated_modes)
        self.modes = frozenset(modes)
        self.backend, self.preempt_rt, self.fentry_sym = backend, preempt_rt, fentry_sym
        self.kprobe: int | None = None
        self.fentry: int | None = None
        self.irqs_off = False
        self.rt: dict = {}
        self.probe_overhead: dict[str, int] = {}
        self._getppid: str | None = None

    def _syscall_fn(self) -> str:
        """getppid's syscall function, named as bcc's get_syscall_fnname names
        it (the first of its prefixes under which sys_bpf exists), from the
        tracer's symbol table: bcc reads kallsyms again for each (seconds in
        the lab's emulated guests)."""
        if self._getppid is None:
            for prefix in ("sys_", "__x64_sys_", "__x32_compat_sys_", "__ia32_compat_sys_", "__arm64_sys_",
                           "__s390x_sys_", "__s390_sys_"):
                if prefix + "bpf" in self.ksyms.by_name:
                    self._getppid = prefix + "getppid"
                    break
            else:
                self._getppid = self.bpf.get_syscall_fnname(b"getppid").decode()
        return self._getppid

    def run(self) -> "Calibration":
        """preempt_count that the probe machinery itself adds, seen on getppid(),
        for kprobes and (fentry backend) for trampolines, which differ; then
        what a probed callback costs its hook (:meth:`_overhead`)."""
        calib = self.bpf[b"calib"]
        for base in _CALIB_RT.values():     # PREEMPT_RT: a mechanism never calibrated reads no RT context
            for slot in (base, base + 1):
                calib[ctypes.c_int(slot)] = ctypes.c_uint32(0xFFFFFFFF)
        self.kprobe = self._one(_CALIB_KPROBE)
        self.fentry = self._one(_CALIB_FENTRY) if self.fentry_sym else None
        self._overhead()
        return self

    def _overhead(self) -> None:
        """What a probed callback costs the hook it runs in, beyond the time its
        own programs measure and take off (nested_ns): the probe machinery's
        dispatch around each program (ftrace, kprobe and rethook trampolines, or
        the BPF trampoline), which no program can see. Measured here on the
        tracer's own getppid() calls, as a hook with a callback inside: the
        syscall function probed as the hook, __task_pid_nr_ns (which it calls
        once) as the callback, probed each way the tracer probes callbacks
        (:attr:`modes`: its entry alone where they are chained, entry and exit
        where not). The median hook duration with the callback probed
        minus the median without it is that cost, per mechanism and way, each
        phase the least of CALIB_ROUNDS alternating measurements; the BPF side
        adds it to nested_ns for each callback probe that fires inside a hook
        (a way not calibrated takes the other's figure: release ops).
        Unmeasurable (symbols missing, a probe refused): 0, nothing taken off."""
        self.probe_overhead = {}
        hook_fentry = not self.kprobe_hooks
        outer = self.fentry_sym if hook_fentry else self._syscall_fn()
        oa = self.ksyms.by_name.get(outer, [None])[0] if outer else None
        ia = self.ksyms.by_name.get(CALIB_INNER, [None])[0]
        if oa is None or ia is None:
            _debug(f"probe-overhead calibration: {outer} or {CALIB_INNER} not in kallsyms")
            return
        hook_ip, cb_info, calib = self.bpf[b"hook_ip"], self.bpf[b"cb_info"], self.bpf[b"calib"]
        for k in (oa, oa + 4):
            hook_ip[ctypes.c_uint64(k)] = ctypes.c_uint32(_HOOK_CALIB)
        modes = sorted(self.modes)
        attached: list[tuple] = []
        hooked = None
        try:
            if hook_fentry:
                err = self.tramp.attach(outer, None, "hkf_entry", "hkf_exit", check_patched=False, hook=_HOOK_CALIB)
                if err is not None:
                    raise RuntimeError(f"the hook programs on {outer}: {err}")
                hooked = oa
            else:
                for fn, kind in ((b"hk_return", "ret"), (b"hk_entry", "entry")):
                    self._attach(outer, fn, kind, attached)
            hook_probes = len(attached)     # the callback probes come and go after them
            runs: dict[tuple, list] = {}
            alone_runs: list = []
            fentry = self.backend == "fentry"
            for _ in range(CALIB_ROUNDS):
                alone_runs.append(self._median())
                for chained in modes:
                    for k in (ia, ia + 4):      # struct cbinfo, as bcc read it: chained as probed
                        cb_info[ctypes.c_uint64(k)] = cb_info.Leaf(ia, _HOOK_CALIB, 0, chained)
                    if not chained:
                        self._attach(CALIB_INNER, b"cb_return", "ret", attached)
                    self._attach(CALIB_INNER, b"cb_entry", "entry", attached,
                                 cookie=callback_cookie(ia, _HOOK_CALIB, 0, chained))
                    runs.setdefault(("kprobe", chained), []).append(self._median())
                    for ev, fn, kind in reversed(attached[hook_probes:]):
                        self._detach(ev, fn, kind)
                    del attached[hook_probes:]
                    if fentry:
                        err = self.tramp.attach(CALIB_INNER, None, "cbf_entry", None if chained else "cbf_exit",
                                                check_patched=False, cb=(ia, _HOOK_CALIB, 0, chained))
                        if err is None:
                            runs.setdefault(("fentry", chained), []).append(self._median())
                            self.tramp.detach(ia)
                        else:
                            _debug(f"probe-overhead calibration, fentry on {CALIB_INNER}: {err}")
                            fentry = False
            alone = least(alone_runs)
            costs = {}
            for (mech, chained), v in runs.items():
                with_probe = least(v)
                if alone is not None and with_probe is not None:
                    costs[(mech, chained)] = max(0, round(with_probe - alone))
                    self.probe_overhead[overhead_key(mech, chained)] = costs[(mech, chained)]
            for (mech, chained), slot in _CALIB_OVERHEAD.items():
                cost = costs.get((mech, chained), costs.get((mech, not chained), 0))
                calib[ctypes.c_int(slot)] = ctypes.c_uint32(cost)
        except Exception as e:      # calibration is best effort: nothing taken off
            _debug(f"probe-overhead calibration failed: {e}")
            for slot in _CALIB_OVERHEAD.values():
                calib[ctypes.c_int(slot)] = ctypes.c_uint32(0)
            self.probe_overhead = {}
        finally:
            for ev, fn, kind in reversed(attached):
                self._detach(ev, fn, kind)
            if hooked is not None:
                self.tramp.detach(hooked)
            for table, keys in ((hook_ip, (oa, oa + 4)), (cb_info, (ia, ia + 4))):
                for k in keys:
                    try:
                        del table[ctypes.c_uint64(k)]
                    except KeyError:
                        pass
        _debug(f"probe overhead per probed callback: {self.probe_overhead}")

    def _attach(self, event: str, fn: bytes, kind: str, attached: list, cookie: int | None = None) -> None:
        if kind == "ret":
            self.bpf.attach_kretprobe(event=event.encode(), fn_name=fn, maxactive=MAXACTIVE)
        elif cookie is not None and self.links is not None and self.links.attach(event, fn.decode(), cookie):
            kind = "link"
        else:
            self.bpf.attach_kprobe(event=event.encode(), fn_name=fn)
        attached.append((event, fn, kind))

    def _detach(self, event: str, fn: bytes, kind: str) -> None:
        try:
            if kind == "link":
                self.links.detach(event)
            elif kind == "ret":
                self.bpf.detach_kretprobe(event=event.encode(), fn_name=fn)
            else:
                self.bpf.detach_kprobe(event=event.encode(), fn_name=fn)
        except Exception as e:
            _debug(f"calibration: detaching {fn!r} from {event}: {e}")

    def _median(self) -> float | None:
        """The median duration of CALIB_CALLS getppid() calls, as the hook
        programs measured them (None: none seen)."""
        calib, durs = self.bpf[b"calib"], self.bpf[b"calib_dur"]
        calib[ctypes.c_int(_CALIB_NSAMPLES)] = ctypes.c_uint32(0)
        for _ in range(CALIB_CALLS):
            os.getppid()
        n = min(calib[ctypes.c_int(_CALIB_NSAMPLES)].value, _CALIB_MAX_SAMPLES)
        return overhead_median([durs[ctypes.c_int(i)].value for i in range(n)])

    def _one(self, base: int) -> int | None:
        calib = self.bpf[b"calib"]
        calib[ctypes.c_int(base + 1)] = ctypes.c_uint32(0xFFFFFFFF)    # RT slots: run() set them
        if base == _CALIB_KPROBE:
            fn = self._syscall_fn().encode()
            self.bpf.attach_kprobe(event=fn, fn_name=b"calib_entry")
        else:
            err = self.tramp.attach(self.fentry_sym, None, "calib_fentry", None, check_patched=False)
            if err is not None:
                _debug(f"fentry calibration on {self.fentry_sym}: {err}")
                return None
        try:
            for _ in range(16):
                os.getppid()
        finally:
            if base == _CALIB_KPROBE:
                self.bpf.detach_kprobe(event=fn, fn_name=b"calib_entry")
            else:
                self.tramp.detach(self.ksyms.by_name[self.fentry_sym][0])
        hits = calib[ctypes.c_int(base + 2)].value
        raw = calib[ctypes.c_int(base + 1)].value
        if hits == 0 or raw == 0xFFFFFFFF:
            calib[ctypes.c_int(base)] = ctypes.c_uint32(0)
            return None  # preempt count unreadable: records say PC_UNKNOWN
        if base == _CALIB_KPROBE:
            self.irqs_off = calib[ctypes.c_int(base + 3)].value > 0
        if self.preempt_rt:
            md, rcu = (calib[ctypes.c_int(_CALIB_RT[base] + i)].value for i in (0, 1))
            self.rt["fentry" if base == _CALIB_FENTRY else "kprobe"] = (
                None if 0xFFFFFFFF in (md, rcu) else {"migration_disabled": md, "rcu_read_lock_nesting": rcu})
        calib[ctypes.c_int(base)] = ctypes.c_uint32(raw)
        return raw
