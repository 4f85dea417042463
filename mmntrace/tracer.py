"""The tracing core: compile bpf/mmntrace.bpf.c with bcc, attach it, and hand
raw records to the caller.

    t = Tracer(kernel.probe())
    t.start()                    # compile, calibrate, attach (BpfLoadError on failure)
    raw = t.poll(100)            # bytes: concatenated struct mmnt_record
    ...
    t.stop()                     # nothing of ours left attached

Driver callbacks are found while tracing: the BPF side reports every ops table
it sees (registration, or the subscription list of an mm on its first hook),
and :meth:`poll` attaches the generic callback probes to each new op function.

Backends. ``kprobe`` attaches kprobes/kretprobes everywhere. ``fentry``
compiles one fentry/fexit program pair per kind of probe (hook, callback,
might-sleep function) and loads it on each function's BTF id
(mmntrace/fentry.py: bcc 0.26 binds a trampoline program to one vmlinux
function by name, and to none in a module). Driver callbacks get
trampolines only when fentry was asked for by name (a trampoline pins its
module; ``auto`` keeps drivers reloadable with kprobes). A function whose
trampoline cannot attach falls back to a kprobe; every probe's mechanism is
in :meth:`attached` (and the recording's metadata). ``auto`` is fentry only
where a trial attach works on this kernel (:func:`resolve_backend`,
mmntrace/trial.py). What bcc prints from C along the way is captured
(:func:`quiet_bpf_class`): MMNTRACE_DEBUG=1 shows it.

The parts the tracer uses, each with its own module: codegen.py (the
program's text and compile flags, pure functions of the kernel's features and
the options), fentry.py (the fentry backend's programs loaded per function,
which bcc 0.26 cannot), calibrate.py (what the probes themselves add to
preempt_count() and to a hook's time), sweep.py (the subscribers that exist
at start), histograms.py (the in-kernel histograms), transport.py (ring
buffer, mapped arrays), ksyms.py and probes.py. What stays here is the order
of things: load, attach with fallback, callbacks as they are found and
modules as they come and go, and what was lost.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from . import codegen
from . import hooks as hookmod
from . import kernel
from .errors import BpfLoadError, MmntraceError
from .codegen import BPF_DIR, BPF_SRC, bpf_text  # noqa: F401 (names older code imports from here)
from .calibrate import Calibration, fentry_calib_symbol
from .fentry import Trampolines
from .histograms import NR_EVIDX, NR_SERIES, NR_SLOTS, InKernelHistograms  # noqa: F401 (NR_*: older imports)
from .ksyms import KernelSymbols
from .layout import header, record_dtype
from . import sweep
from .probes import MAXACTIVE, kprobe_misses, remove_stale_kprobe_events, stale_kprobe_events, trampoline_in_place, trampoline_listed  # noqa: F401
from .transport import MappedArray, RingReader, fdinfo
from .quiet import debug, quietly

if TYPE_CHECKING:
    from .trial import Verdict


_H = header()
REC_HOOK = _H.defines["MMNT_REC_HOOK"]
REC_CALLBACK = _H.defines["MMNT_REC_CALLBACK"]
REC_SLEEP = _H.defines["MMNT_REC_SLEEP"]
REC_OPS = _H.defines["MMNT_REC_OPS"]
REC_REGISTER = _H.defines["MMNT_REC_REGISTER"]
REC_NAMES = {REC_HOOK: "hook", REC_CALLBACK: "callback", REC_SLEEP: "sleep", REC_OPS: "ops",
             REC_REGISTER: "register"}
SLEEP_DETECT = hookmod.SLEEP_DETECT
DROP_NAMES = {**REC_NAMES, _H.defines["MMNT_DROP_SERIES"]: "aggregate_series",
              _H.defines["MMNT_DROP_FOLLOW"]: "unfollowed_processes",
              _H.defines["MMNT_DROP_ITREE"]: "interval_uncounted",
              _H.defines["MMNT_DROP_EARLY_STOP"]: "early_stop_uncounted"}
#: the slots of the BPF side's drops[] (bpf/mmntrace.bpf.c)
DROP_SLOTS = range(16)
#: runs of the start-up sweep's interval-tree walk (each visits MMNT_ITREE_NODES = 32 notifiers
#: per mm; only the mms left unfinished are walked again): an mm with up to 256 x 32 = 8192
#: interval notifiers is walked to its end
SWEEP_ITREE_RUNS = 256
#: how old the probe misses a running session's drops(fresh=False) shows may be
MISSES_REFRESH_S = 10.0


#: the fentry backend's programs (entry, exit) by probe kind: each compiled
#: once and loaded on every function of its kind (mmntrace/fentry.py)
_FENTRY_PROGS = {"hook": ("hkf_entry", "hkf_exit"), "callback": ("cbf_entry", "cbf_exit"),
                 "sleeper": ("msf_entry", None)}
_IRQS_UNKNOWN = "IRQS_UNKNOWN"


def resolve_backend(backend: str, verdict: Verdict | None = None) -> str:
    """The backend to use for ``backend`` as asked: ``auto`` is fentry where a
    trial attach works on this kernel (:func:`kernel.fentry_verdict`), else
    kprobe; ``fentry`` where it does not is refused with the trial's reason,
    before anything is compiled. ``verdict``: the trial's answer, when known."""
    if backend not in ("auto", "kprobe", "fentry"):
        raise MmntraceError(f"unknown backend {backend!r}: use auto, kprobe or fentry")
    if backend == "kprobe":
        return backend          # no trial: nothing of fentry is used
    v = verdict if verdict is not None else kernel.fentry_verdict()
    if backend == "auto":
        if not v.ok:
            _debug(f"auto backend: kprobe, because {v.reason}")
        return "fentry" if v.ok else "kprobe"
    if not v.ok:
        raise MmntraceError(f"the fentry backend is unavailable on this kernel: {v.reason}; use --backend kprobe")
    return backend


_debug = debug


#: bcc methods that print from C (libbcc, libbpf, clang): a failed attach
#: (``bpf_attach_raw_tracepoint (kfunc): Unknown error 524``, ``cannot attach
#: kprobe``), a refused load with its verifier log, compiler warnings. The
#: tracer falls back from most of these failures, so the text is noise to
#: the user: captured, shown with MMNTRACE_DEBUG=1 or in the error sentence
#: of a call that fails for good (mmntrace/quiet.py).
_NOISY_BCC = ("__init__", "load_func", "attach_kprobe", "attach_kretprobe", "attach_kfunc", "attach_kretfunc",
              "attach_raw_tracepoint", "detach_raw_tracepoint",
              "attach_tracepoint", "detach_kprobe", "detach_kretprobe", "detach_kprobe_event", "detach_kfunc",
              "detach_kretfunc", "detach_tracepoint", "open_perf_buffer", "cleanup")


def quiet_bpf_class(BPF: type) -> type:
    """A subclass of bcc's BPF whose noisy methods (:data:`_NOISY_BCC`) keep
    what they print (fds 1 and 2) to themselves, and that attaches nothing as
    it loads."""

    class _BPF(BPF):
        # bcc attaches kfunc__/tracepoint__ programs as it loads them;
        # we attach in our own order, after calibration
        def _trace_autoload(self):
            pass

    for name in _NOISY_BCC:
        if hasattr(BPF, name):
            setattr(_BPF, name, quietly(getattr(BPF, name), _debug))
    return _BPF


class Tracer:
    def __init__(self, features: kernel.Features, *, backend: str = "kprobe", hooks=None,
                 pid: int | None = None, comm: str | None = None, aggregate: bool = False,
                 ringbuf_pages: int = 256, ringbuf: bool | None = None, layout: str = "auto",
                 might_sleep: bool = False, sampling: bool = False, modules=None, callbacks=None,
                 min_latency_ns: int | None = None, children: bool = False, sleep_detect: str = "switch"):
        """``pid``: only this process; with ``children``, also every process it
        forks while traced, and theirs (threads are the process's own).
        ``sleep_detect``: how real sleeps in must-not-sleep sections are seen:
        ``switch``, a sched_switch program (the sleep's own stack; it runs on
        every context switch of the machine), or ``count``, the task's
        voluntary-switch count at each such section's return (nothing runs
        outside notifier calls; no stack at the sleep). ``modules``, ``callbacks``: probe only the driver callbacks of these
        modules (``vmlinux``: built-in subscribers) or with these symbol names
        (either selects; None: every callback). The hooks are traced in full.
        ``min_latency_ns`` (streaming only): send only the hook and callback
        calls at least this long; every call still goes to the in-kernel
        histograms (:meth:`histograms`), so counts and quantiles stay whole."""
        self.f = features
        self.modules = frozenset(modules) if modules else None
        self.callbacks = frozenset(callbacks) if callbacks else None
        self._unselected: set[int] = set()   # callback addresses left unprobed by that choice
        self.sampling = sampling       # set_sampling() allowed (the daemon's event budget)
        # driver callbacks through trampolines only when fentry was asked for
        # by name: a trampoline on a module function pins the module (rmmod
        # fails while attached), and `auto` must let a driver be reloaded
        # while it is traced; kprobes do not pin
        self.callback_fentry = backend == "fentry"
        # might_sleep=False: no probe on might-sleep functions (they fire on
        # every allocation and lock of the machine: the ambient tax); real
        # sleeps inside must-not-sleep callbacks are still caught (sched_switch)
        self.might_sleep = might_sleep
        if sleep_detect not in SLEEP_DETECT:
            raise MmntraceError(f"unknown sleep detection {sleep_detect!r}: use {' or '.join(SLEEP_DETECT)}")
        self.sleep_detect = sleep_detect
        self.backend = resolve_backend(backend)
        # ringbuf=False forces the perf-buffer transport (kernels before 5.8 have
        # no BPF ring buffer; tests use it to exercise that path on newer ones)
        self.ringbuf = features.ringbuf if ringbuf is None else (bool(ringbuf) and features.ringbuf)
        # struct layouts for the BPF program: from BTF where it has them all
        # (no mm headers to parse), else from the kernel headers
        if layout not in ("auto", "btf", "headers"):
            raise MmntraceError(f"unknown layout source {layout!r}")
        can_btf = features.layout is not None and features.gfp_direct_reclaim is not None
        if layout == "btf" and not can_btf:
            raise MmntraceError("this kernel's BTF lacks the MMU-notifier struct layouts")
        self.layout = "btf" if layout != "headers" and can_btf else "headers"
        self._ring: RingReader | None = None
        self._calib_sym: str | None = None
        self._missed_base = 0
        self._misses: tuple | None = None     # (when, kretprobe misses, program misses): drops()
        self._kprobe_missed_base = 0
        self._mods_checked = 0.0
        self._gen_seen = 0              # walk_gen when the modules were last checked
        self._cb_names: dict[int, str] = {}    # callback address -> "name [module]", kept after an unload
        self._mod_state: dict[str, str | None] = {}   # module -> its load (address, sysfs inode) when probed
        self.hooks = self._hook_ids(hooks)
        self.pid = pid
        # children: the pid filter takes in the processes it forks from now
        # on, and theirs (record -- CMD, as perf record follows its workload)
        self.children = bool(children) and pid is not None
        self.comm = comm
        self.aggregate = aggregate
        if min_latency_ns is not None and (aggregate or min_latency_ns <= 0):
            raise MmntraceError("a minimum latency is for streaming recordings, and must be positive")
        self.min_latency_ns = int(min_latency_ns) if min_latency_ns is not None else None
        self.ringbuf_pages = ringbuf_pages
        self.bpf = None
        #: drops and walk_gen mapped into memory where the kernel can (MMNT_MMAP_ARRAYS)
        self._views: dict[bytes, MappedArray] = {}
        self._stack_ips: dict[int, list[int]] = {}
        #: what the probes themselves add, measured at load (mmntrace/calibrate.py);
        #: read through calibration, calibration_fentry, calibration_rt, probe_overhead
        self.calib: Calibration | None = None
        self.timing: dict[str, float] = {}
        self.swept: int | None = None     # ops records the start-up sweep reported (None: no sweep)
        self.sweep_unfinished = 0         # mms whose interval tree the sweep could not walk to its end
        self._ops_handled = 0             # OPS records from the buffer whose callbacks were probed
        self._attached: list[dict] = []
        self._cb_known: dict[int, dict] = {}
        self._chunks: list[bytes] = []
        self._perf_lost = 0
        self._ksyms: KernelSymbols | None = None
        self._dtype = record_dtype()
        self._final: dict | None = None
        self._hist = InKernelHistograms()      # --aggregate, --min-latency (mmntrace/histograms.py)
        self.task_storage = True
        # the fentry backend's programs, loaded per function (mmntrace/fentry.py)
        self._tramp = Trampolines(lambda name: self.bpf.dump_func(name.encode()), lambda: self._ksyms.by_name)

    @staticmethod
    def _hook_ids(hooks) -> set[int]:
        if hooks is None:
            return set(range(kernel.NR_HOOKS))
        out = set()
        for h in hooks:
            if isinstance(h, int):
                out.add(h)
            elif hookmod.by_name(h) is not None:     # the stable name, an old one, an ops member
                out.add(hookmod.by_name(h).id)
            else:
                raise MmntraceError(f"unknown hook {h!r}")
        return out

    # -- start ----------------------------------------------------------------
    def _cflags(self) -> list[str]:
        """The compile flags of this tracer's program (mmntrace/codegen.py)."""
        return codegen.cflags(self.f, backend=self.backend, ringbuf=self.ringbuf, ringbuf_pages=self.ringbuf_pages,
                              layout=self.layout, pid=self.pid, children=self.children, comm=self.comm,
                              aggregate=self.aggregate, min_latency_ns=self.min_latency_ns,
                              task_storage=self.task_storage, sampling=self.sampling,
                              might_sleep=self.might_sleep, sleep_detect=self.sleep_detect)

    def start(self) -> None:
        """Compile and load (unless load() already ran), then attach everything (`record`)."""
        if self.bpf is None:
            self.load()
        self.attach()

    def load(self) -> None:
        """Compile and load the BPF program, calibrate, open the ring buffer.
        Nothing stays attached: see attach()/detach() (the daemon's windows)."""
        kernel.require_recording(self.f)
        try:
            from bcc import BPF
        except ImportError as e:
            raise BpfLoadError(f"the bcc Python module is missing ({e}): install python3-bpfcc") from e

        self._BPF = _BPF = quiet_bpf_class(BPF)
        t0 = time.monotonic()
        self.stale_kprobes_removed = remove_stale_kprobe_events()
        self._ksyms = KernelSymbols()
        self.timing["kallsyms_s"] = time.monotonic() - t0
        try:
            text = bpf_text()
            if self.backend == "fentry":
                self._calib_sym = fentry_calib_symbol(self._ksyms.by_name)
            t0 = time.monotonic()
            self.bpf = _BPF(text=text.encode(), cflags=self._cflags())
            if not self._loads():
                # per-task state in task-local storage needs a kernel whose
                # kprobe programs may use it (5.12+): else a tid-keyed hash
                _debug("task-local storage refused: per-task state in a hash")
                self.bpf.cleanup()
                self.task_storage = False
                self.bpf = _BPF(text=text.encode(), cflags=self._cflags())
        except Exception as e:
            raise BpfLoadError(f"compiling {BPF_SRC.name} failed: {str(e).splitlines()[0] if str(e) else e} "
                               "(MMNTRACE_DEBUG=1 shows everything the compiler and bcc printed)") from e
        self.timing["compile_s"] = time.monotonic() - t0
        _debug(f"timing: {self.timing}")
        self._map_counters()
        try:
            t0 = time.monotonic()
            self._detach_all()
            self._calibrate()
            self._open_buffer()
            if self.kernel_hist:
                self._hist.map(self.bpf)
            self.timing["calibrate_s"] = time.monotonic() - t0
        except Exception as e:
            self.stop()
            raise BpfLoadError(f"loading the probes failed: {e}") from e

    def _loads(self) -> bool:
        """Does the kernel take the hook program (the feature test for task storage)?"""
        if not self.task_storage:
            return True
        # cb_entry uses the per-task state as the hook programs do
        try:
            self.bpf.load_func(b"cb_entry", self._BPF.KPROBE)
            return True
        except Exception as e:
            _debug(f"loading cb_entry failed: {e}")
            return False

    @property
    def kernel_hist(self) -> bool:
        """Durations go to in-kernel histograms: --aggregate, --min-latency."""
        return self.aggregate or self.min_latency_ns is not None

    def attach(self) -> None:
        """Attach every hook, registration, might-sleep and known callback probe."""
        t1 = time.monotonic()
        known = [(a["addr"], a["hook_id"]) for a in self._attached
                 if a["kind"] == "callback" and a["status"] == "attached"]
        self._attached = []
        self._cb_known = {}
        try:
            # registrations first, then the sweep of the subscribers that exist:
            # between the two, none can come and go unseen
            self._attach_module_load()
            if self.children:
                self._follow_children()
            self._attach_registration()
            self._sweep()
            self._attach_hooks()
            if self.might_sleep:
                self._attach_sleepers()
            if self.sleep_detect == "switch":
                self._attach_sched_switch()
            for func, hook in known:      # callbacks found in an earlier window
                if func not in self._cb_known:      # (the sweep may have probed it again)
                    self._attach_callback(func, hook)
        except BpfLoadError:
            self.stop()
            raise
        except Exception as e:
            self.stop()
            raise BpfLoadError(f"attaching the probes failed: {e}") from e
        self.timing["attach_s"] = time.monotonic() - t1
        _debug(f"timing: {self.timing}")
        if self.backend == "fentry":
            # trampolines and programs got symbols as they attached. Streaming
            # symbolizes stacks as it goes: read the table again now. --aggregate
            # looks up at discovery and at its end: at its next lookup, not on
            # the way to --ready-file (2 s of every start in the lab's guests)
            if self.aggregate:
                self._ksyms.mark_stale()
            else:
                self._ksyms._load()

    def _attach_tracepoint(self, category: str, name: str, *, raw: bool = True,
                           on_failure: str | None = None) -> None:
        """category:name as a raw tracepoint where ``raw`` and it attaches (its
        arguments as the kernel passes them: no perf record built per event),
        else the perf tracepoint. ``on_failure``: what a failed perf attach
        leaves (kept as its status) instead of an error."""
        info = dict(kind="tracepoint", symbol=f"{category}:{name}", hook=None, module=None, status="attached")
        if raw:
            try:
                self.bpf.attach_raw_tracepoint(tp=name.encode(), fn_name=f"raw_tracepoint__{name}".encode())
                self._attached.append(info | {"attach": "raw_tracepoint"})
                return
            except Exception as e:
                _debug(f"raw tracepoint {name}: {e}; the perf tracepoint instead")
        try:
            self.bpf.attach_tracepoint(tp=f"{category}:{name}".encode(),
                                       fn_name=f"tracepoint__{category}__{name}".encode())
        except Exception as e:
            if on_failure is None:
                raise
            self._attached.append(info | {"status": f"failed: {e}; {on_failure}"})
            return
        self._attached.append(info | {"attach": "tracepoint"})

    def _follow_children(self) -> None:
        """The traced process in the table the pid filter reads, and the
        tracepoints that add the processes it forks and drop those freed."""
        self.bpf[b"filter_tgids"][ctypes.c_uint32(int(self.pid))] = ctypes.c_uint8(1)
        for name in ("sched_process_fork", "sched_process_free"):
            try:
                self.bpf.attach_raw_tracepoint(tp=name.encode(), fn_name=f"raw_tracepoint__{name}".encode())
            except Exception as e:
                raise BpfLoadError(f"following the traced command's child processes needs the raw "
                                   f"tracepoint {name}, which did not attach: {e}") from e
            self._attached.append(dict(kind="tracepoint", symbol=f"sched:{name}", hook=None, module=None,
                                       status="attached", attach="raw_tracepoint"))

    def _attach_sched_switch(self) -> None:
        """Real sleeps: sched_switch as a raw tracepoint where it carries
        prev_state (no perf record per context switch), else the perf tracepoint."""
        self._attach_tracepoint("sched", "sched_switch", raw=getattr(self.f, "raw_sched_switch", False))

    def _attach_module_load(self) -> None:
        """Module loads start a new generation of what the BPF side has seen
        (bpf/mmntrace.bpf.c module_loaded()): a driver reloaded at the same
        address gets its ops tables reported and its callbacks re-probed, with
        the calls before that counted untimed. Without it, only the half-second
        module check notices a reload, and the calls of a subscriber that came
        before it were lost."""
        self._attach_tracepoint("module", "module_load",
                                on_failure="a driver reloaded at the same address is noticed by a check every 0.5 s")

    def _sweep(self) -> None:
        """Report every subscriber that exists now (a BPF task iterator walks each
        process's regular and interval subscriptions) and probe their callbacks,
        so that --ready-file means they are all probed."""
        t0 = time.monotonic()
        self.swept = None
        self.sweep_unfinished = 0
        if not getattr(self.f, "task_iter", False):
            return
        try:
            raw, runs, self.sweep_unfinished = sweep.walk(self.bpf, SWEEP_ITREE_RUNS)
            self.timing["sweep_itree_runs"] = runs
        except Exception as e:      # subscribers are then found at their mm's first hook
            _debug(f"start-up sweep failed: {e}\n{getattr(e, 'log', '')}")
            self.timing["sweep_error"] = str(e)
            return
        raw = raw[:len(raw) - len(raw) % self._dtype.itemsize]
        self.swept = len(raw) // self._dtype.itemsize
        self.process_discovery(raw, sent=False)
        self.timing["sweep_s"] = time.monotonic() - t0

    def _detach_all(self) -> None:
        self._tramp.detach()
        for ev in list(self.bpf.kprobe_fds):
            self.bpf.detach_kprobe_event(ev)
        for tp in list(self.bpf.tracepoint_fds):
            self.bpf.detach_tracepoint(tp)
        for tp in list(self.bpf.raw_tracepoint_fds):
            self.bpf.detach_raw_tracepoint(tp)

    def detach(self) -> None:
        """Detach every probe; the program stays loaded (no overhead) for the next attach()."""
        if self.bpf is not None:
            self._detach_all()

    def set_sampling(self, n: int) -> None:
        """Trace 1 hook invocation in n (and its callbacks); 1 = all."""
        if not self.sampling:
            raise MmntraceError("this tracer was built without sampling (Tracer(sampling=True))")
        self.bpf[b"sampling"][ctypes.c_int(0)] = ctypes.c_uint32(max(1, int(n)))

    def reset_window(self) -> None:
        """Zero the in-kernel histograms, totals and drop counters."""
        self._hist.zero()
        if b"drops" in self._views:
            self._views[b"drops"].zero()
        else:
            d = self.bpf[b"drops"]
            for k in list(d.keys()):
                d[k] = d.Leaf()
        self.bpf[b"cb_expected"].clear()
        self.bpf[b"cb_seen"].clear()
        self._perf_lost = 0
        self._kprobe_missed_base = self._kprobe_missed_raw()
        self._missed_base = self._prog_missed_raw()

    def prog_fds(self) -> list[int]:
        """Every program loaded now: bcc's, and the fentry programs loaded per function."""
        if self.bpf is None:
            return []
        return [int(fn.fd) for fn in self.bpf.funcs.values()] + self._tramp.prog_fds()

    def run_time_ns(self) -> int | None:
        """Nanoseconds our programs ran (kernel.bpf_stats_enabled), those since
        closed included (the fentry programs of a window are closed at its end)."""
        vals = [int(v) for v in (fdinfo(fd).get("run_time_ns") for fd in self.prog_fds()) if v is not None]
        return sum(vals) + self._tramp.closed_run_ns if vals else None

    def _calibrate(self) -> None:
        """What the probe machinery itself adds, measured on getppid()
        (mmntrace/calibrate.py): its preempt_count, PREEMPT_RT context and cost."""
        c = Calibration(self.bpf, self._ksyms, self._tramp, backend=self.backend,
                        preempt_rt=self.f.preempt_rt, fentry_sym=self._calib_sym)
        c.run()
        self.calib = c

    @property
    def calibration(self) -> int | None:
        """The preempt_count a kprobe adds (None: unreadable, or not calibrated yet)."""
        return self.calib.kprobe if self.calib else None

    @property
    def calibration_fentry(self) -> int | None:
        """The preempt_count a trampoline adds."""
        return self.calib.fentry if self.calib else None

    @property
    def calibration_rt(self) -> dict:
        """PREEMPT_RT: what the probe itself adds to migration_disabled and
        rcu_read_lock_nesting, by mechanism (empty: no RT context)."""
        return self.calib.rt if self.calib else {}

    @property
    def probe_overhead(self) -> dict[str, int]:
        """ns that one probed callback costs its hook beyond its programs' own
        time, by probe mechanism ("kprobe", "fentry")."""
        return self.calib.probe_overhead if self.calib else {}

    def _try_attach(self, kind: str, symbol: str, hook, module, entry: str, ret: str | None,
                    hook_id: int | None = None) -> bool:
        rec = dict(kind=kind, symbol=symbol, hook=hook, module=module, status="attached", hook_id=hook_id,
                   attach="kprobe")
        progs = _FENTRY_PROGS.get(kind)
        if progs and self.backend == "fentry" and (kind != "callback" or self.callback_fentry or not module):
            err = self._tramp.attach(symbol, module, *progs, hook=hook_id if kind == "hook" else None)
            if err is None:
                if kind != "sleeper":       # their recursion misses are drops (_prog_missed_raw)
                    self._tramp.counted.add(self._ksyms.by_name[symbol][0])
                rec["attach"] = "fentry"
                self._attached.append(rec)
                return True
            rec["fentry_error"] = err     # falls back to a kprobe (pair)
        # the return probe first: a call that meets only the entry probe would
        # be seen (and not counted untimed) yet leave no record
        if ret:
            try:
                self.bpf.attach_kretprobe(event=symbol.encode(), fn_name=ret.encode(), maxactive=MAXACTIVE)
            except Exception as e:
                rec["status"] = f"skipped: kretprobe: {str(e).split(',')[0]}"
                self._attached.append(rec)
                return False
        try:
            self.bpf.attach_kprobe(event=symbol.encode(), fn_name=entry.encode())
        except Exception as e:
            if ret:
                self.bpf.detach_kretprobe(event=symbol.encode(), fn_name=ret.encode())
            rec["status"] = f"skipped: {str(e).split(',')[0]}"
            self._attached.append(rec)
            return False
        self._attached.append(rec)
        return True

    def _attach_hooks(self) -> None:
        n = 0
        for hook, sym, name in self.f.hooks:
            if hook not in self.hooks:
                continue
            # the kprobe pair (also the fallback from fentry) finds its hook by address
            for a in self._ksyms.by_name.get(sym, [])[:1]:
                for k in (a, a + 4):    # with IBT the probe sits after endbr64
                    self.bpf[b"hook_ip"][ctypes.c_uint64(k)] = ctypes.c_uint32(hook)
            n += self._try_attach("hook", sym, name, None, "hk_entry", "hk_return", hook)
        if n == 0:
            raise BpfLoadError("no MMU-notifier hook function could be probed on this kernel")

    def _attach_registration(self) -> None:
        progs = {"__mmu_notifier_register": "reg_register", "mmu_notifier_unregister": "reg_unregister",
                 "mmu_interval_notifier_insert": "reg_insert", "mmu_interval_notifier_insert_locked": "reg_insert",
                 "mmu_interval_notifier_remove": "reg_remove"}
        for sym in self.f.registration:
            self._try_attach("register", sym, None, None, progs[sym], None)

    def _attach_sleepers(self) -> None:
        table = self.bpf[b"sleeper_info"]
        for sym, gfp_arg in self.f.sleepers:
            addrs = self._ksyms.by_name.get(sym, [])
            for a in addrs[:1]:
                for k in (a, a + 4):  # with IBT the probe sits after endbr64
                    table[ctypes.c_uint64(k)] = table.Leaf(a, gfp_arg, 0)     # struct cbinfo
            self._try_attach("sleeper", sym, None, None, "ms_entry", None)

    def _open_buffer(self) -> None:
        chunks = self._chunks
        string_at = ctypes.string_at

        if self.ringbuf:
            self._ring = RingReader(self.bpf[b"events"].map_fd, self._dtype.itemsize)

            def poll(timeout_ms):
                raw = self._ring.poll(timeout_ms)
                if raw:
                    chunks.append(raw)
            self._poll = poll
        else:
            rec_size = self._dtype.itemsize

            def cb(_cpu, data, size):
                # perf pads each sample so that size + 4 is a multiple of 8
                # (112-byte records arrive as 116 bytes): keep the record only
                if size >= rec_size:
                    chunks.append(string_at(data, rec_size))

            def lost(n):
                self._perf_lost += n
            self.bpf[b"events"].open_perf_buffer(cb, page_cnt=self.ringbuf_pages, lost_cb=lost)
            self._poll = self.bpf.perf_buffer_poll

    # -- running ---------------------------------------------------------------
    def watch(self, fd: int) -> bool:
        """Make :meth:`poll` return early when ``fd`` is readable (a signal's
        wakeup socket, a child's pidfd: mmntrace/wake.py). False where the
        buffer is polled by bcc (the perf buffer): poll's timeout is then the
        only way out of it."""
        if self._ring is None:
            return False
        self._ring.watch(fd)
        return True

    def unwatch(self, fd: int) -> None:
        if self._ring is not None:
            self._ring.unwatch(fd)

    def poll(self, timeout_ms: int = 100) -> bytes:
        """Raw records (concatenated struct mmnt_record) received since the last poll.
        New ops tables among them get their callbacks probed before returning."""
        if self.bpf is None:
            return b""
        self._poll(timeout_ms)
        # a module load moved the generation (bpf/discovery.h): check at once,
        # before the ops tables it made the BPF side report again are handled
        gen = self._walk_gen()
        moved, self._gen_seen = gen != self._gen_seen, gen   # (a check that bumps it sets it again)
        self._check_modules(force=moved)
        if not self._chunks:
            return b""
        raw = b"".join(self._chunks)
        self._chunks.clear()
        self.process_discovery(raw)
        return raw

    def process_discovery(self, raw: bytes, sent: bool = True) -> None:
        """Probe the callbacks of the ops tables among ``raw``. ``sent``: they came
        through the record buffer, whose OPS records the BPF side counts; once as
        many are handled here, hooks stop counting untimed calls (bpf/discovery.h)."""
        if not raw:
            return
        recs = np.frombuffer(raw, self._dtype)
        ops = recs[recs["type"] == REC_OPS]
        self._process_ops(ops)
        if sent and len(ops):
            self._ops_handled += len(ops)
            self.bpf[b"disc"][ctypes.c_int(1)] = ctypes.c_uint64(self._ops_handled)

    def _process_ops(self, ops) -> None:
        for r in ops:
            func, hook = int(r["func"]), int(r["hook"])
            _debug(f"ops table {int(r['addr']):#x}: hook {hook} -> {func:#x} (known: {func in self._cb_known})")
            if func in self._cb_known or hook not in self.hooks:
                continue
            self._attach_callback(func, hook)
            # each attach takes a while (tracefs, kallsyms): keep the buffer
            # drained meanwhile; what comes in is returned by the next poll
            self._poll(0)

    def _attach_callback(self, func: int, hook: int) -> None:
        hit = self._ksyms.lookup(func, exact=True, force=True)
        info = dict(kind="callback", symbol=hex(func), hook=kernel.HOOK_NAMES.get(hook, str(hook)),
                    module=None, status="attached", addr=func, hook_id=hook)
        self._cb_known[func] = info
        if hit is None:
            info["status"] = "skipped: no symbol at this address"
            self._attached.append(info)
            return
        name, mod, _ = hit
        info["symbol"], info["module"] = name, mod
        if not self.selected(name, mod):
            info["status"] = "not selected: " + self.selection_text()
            self._unselected.add(func)
            self._attached.append(info)
            return
        self._retire_stale(name, func)
        if len(set(self._ksyms.by_name.get(name, []))) > 1 and self._ksyms.by_name[name][0] != func:
            info["status"] = "skipped: symbol name is ambiguous"
            self._attached.append(info)
            return
        table = self.bpf[b"cb_info"]
        series = self._hist.series_for(func, hook)   # its own, kept across windows and re-probes
        for k in (func, func + 4):
            table[ctypes.c_uint64(k)] = table.Leaf(func, hook, series)   # struct cbinfo
        rec_before = len(self._attached)
        self._cb_names[func] = f"{name} [{mod}]" if mod else name
        if mod and mod not in self._mod_state:   # its load address now: _check_modules compares with it
            self._mod_state[mod] = self._modules({mod}).get(mod)
        ok = self._try_attach("callback", name, info["hook"], mod, "cb_entry", "cb_return", hook)
        self._attached[rec_before]["addr"] = func
        self._cb_known[func] = self._attached[rec_before]
        if not ok:
            self._forget_cb_info(func)

    def selected(self, symbol: str, module: str | None) -> bool:
        """Is this driver callback to be probed (``modules``/``callbacks``)?"""
        if self.modules is None and self.callbacks is None:
            return True
        return bool((self.modules and (module or "vmlinux") in self.modules)
                    or (self.callbacks and symbol in self.callbacks))

    def selection_text(self) -> str:
        """The choice of callbacks as the options say it ("" for all)."""
        out = []
        if self.modules:
            out.append("--module " + ",".join(sorted(self.modules)))
        if self.callbacks:
            out.append("--callback " + ",".join(sorted(self.callbacks)))
        return " ".join(out)

    def _forget_cb_info(self, func: int) -> None:
        table = self.bpf[b"cb_info"]
        for k in (func, func + 4):
            try:
                del table[ctypes.c_uint64(k)]
            except KeyError:
                pass

    def _retire_callback(self, a: dict) -> None:
        """Detach a callback whose module went away (the kernel already disarmed its
        probe) so that the name can be probed again; its entry stays in the
        metadata as "detached: module unloaded"."""
        if a.get("attach") == "fentry" and a.get("addr") is not None:
            self._tramp.detach(a.get("addr"))
        for detach in (self.bpf.detach_kretprobe, self.bpf.detach_kprobe):
            try:
                detach(event=a["symbol"].encode())
            except Exception:
                pass
        if a.get("addr") is not None:
            self._forget_cb_info(a["addr"])
            self._cb_known.pop(a["addr"], None)
        a["status"] = "detached: module unloaded"

    def _retire_stale(self, name: str, func: int) -> None:
        """A driver module was unloaded and loaded again between two module checks:
        its callback has the same name at a new address."""
        for a in self._attached:
            if (a.get("kind") == "callback" and a.get("symbol") == name and a.get("addr") not in (None, func)
                    and a.get("status") == "attached"):
                self._retire_callback(a)

    @staticmethod
    def _modules(names) -> dict[str, str]:
        """Each of these loaded modules -> what identifies this load of it."""
        out = {}
        try:
            with open("/proc/modules") as f:
                for line in f:
                    p = line.split()
                    if len(p) >= 6 and p[0] in names:
                        # load address + the inode of its sysfs directory, new at
                        # every load (a reload may reuse the address); not the state,
                        # which goes from Loading to Live in one load
                        try:
                            ino = os.stat(f"/sys/module/{p[0]}").st_ino
                        except OSError:
                            ino = 0
                        out[p[0]] = f"{p[5]} {ino}"
        except OSError:
            pass
        return out

    def _map_counters(self) -> None:
        """Map the counters read while the probes run (drops, at each overhead
        check; walk_gen, at every poll) where the kernel lets arrays be mapped:
        read from memory, with no bpf() lookup (one per poll and nine per
        drops() before), which holds its CPU's bpf_prog_active meanwhile, when
        kprobe programs on that CPU are skipped (bpf/mmntrace.bpf.c,
        MMNT_MMAP_ARRAYS)."""
        if not getattr(self.f, "mmap_array", False):
            return
        for name, n, dtype in ((b"drops", len(DROP_SLOTS), np.uint64), (b"walk_gen", 1, np.uint32)):
            try:
                self._views[name] = MappedArray(self.bpf[name], (n,), dtype)
            except (OSError, ValueError, KeyError) as e:
                _debug(f"{name.decode()} read by bpf() lookups: mapping it failed ({e})")

    def _unmap_counters(self) -> None:
        for v in self._views.values():
            v.close()
        self._views = {}

    def _walk_gen(self) -> int:
        v = self._views.get(b"walk_gen")
        if v is not None:
            return int(v.a[0])
        return int(self.bpf[b"walk_gen"][ctypes.c_int(0)].value)

    def _drop_counts(self) -> list[int]:
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

    def _check_modules(self, force: bool = False) -> None:
        """At a poll at most every half second (a poll ends at a record, a signal
        or the recorder's next deadline: mmntrace/wake.py), and at once after a
        module load (``force``, seen by the first poll after it): did a
        module with probed callbacks go away or come back (maybe at the same
        address, where the kernel will not re-arm the old probes: its sysfs
        directory is new)? Then retire its callbacks and forget the ops tables
        and mms seen, so that the BPF side reports them again and they are
        re-probed."""
        now = time.monotonic()
        if not force and now - self._mods_checked < 0.5:
            return
        self._mods_checked = now
        mods = {a["module"] for a in self._attached if a.get("kind") == "callback" and a.get("module")
                and a.get("status") == "attached"}
        if not mods:
            return
        cur = self._modules(mods)
        changed = {m for m in mods if m in self._mod_state and cur.get(m) != self._mod_state[m]}
        if not changed:
            return
        _debug(f"modules changed: {sorted(changed)}")
        for a in self._attached:
            if a.get("kind") == "callback" and a.get("module") in changed and a.get("status") == "attached":
                self._retire_callback(a)
        self.bpf[b"seen_ops"].clear()
        self.bpf[b"seen_mm"].clear()
        g = self.bpf[b"walk_gen"]          # tasks' cached walks are stale too
        g[ctypes.c_int(0)] = ctypes.c_uint32(g[ctypes.c_int(0)].value + 1)
        self._gen_seen = self._walk_gen()
        for m in changed:
            del self._mod_state[m]     # taken again when its callbacks are re-probed
            self._tramp.close_btf_obj(m)
        self._ksyms._load()

    # -- queries -----------------------------------------------------------------
    def attached(self) -> list[dict]:
        return [dict(r) for r in self._attached]

    def drops(self, fresh: bool = True) -> dict:
        """Drops by kind, and their total. ``fresh=False`` (a running session's
        periodic look: its overhead guard, status line, metadata kept if it is
        killed) may reuse the recursion and kretprobe misses read up to
        MISSES_REFRESH_S ago: reading them opens a file per program (an fdinfo
        each, and tracefs), which in a lab guest cost a quarter of a CPU at the
        session's pace, taken from the workload it watches."""
        if self.bpf is None and self._final:
            return dict(self._final["drops"])
        out = {name: 0 for name in DROP_NAMES.values()}
        if self.bpf is not None:
            counts = self._drop_counts()
            for t, name in DROP_NAMES.items():
                out[name] = counts[t]
        out["perf_lost"] = self._perf_lost
        out["untimed"] = sum(self.untimed().values())
        now = time.monotonic()
        if fresh or self._misses is None or now - self._misses[0] >= MISSES_REFRESH_S:
            self._misses = (now, self._kprobe_missed(), self._prog_missed_raw() - self._missed_base)
        out["kretprobe_missed"], out["prog_missed"] = self._misses[1:]
        out["total"] = sum(out.values())
        return out

    def untimed(self) -> dict[int, int]:
        """callback address -> its calls counted but not timed (made before its
        probe was attached: a subscriber that registered and was invalidated at once,
        or unregistered at once, mmu_notifier_unregister() calling its release)."""
        if self.bpf is None:
            return dict(self._final.get("untimed", {})) if self._final else {}
        seen = {int(k.value): int(v.value) for k, v in self.bpf[b"cb_seen"].items()}
        out = {}
        for k, v in self.bpf[b"cb_expected"].items():
            n = int(v.value) - seen.get(int(k.value), 0)
            if n > 0 and int(k.value) not in self._unselected:   # not probed by choice: no loss
                out[int(k.value)] = n
        return out

    def _kprobe_missed(self) -> int:
        return self._kprobe_missed_raw() - self._kprobe_missed_base

    def _prog_missed_raw(self) -> int:
        """Runs of our hook and callback programs the kernel skipped because a BPF
        program was already running on that CPU (fdinfo recursion_misses, 5.12+).
        Might-sleep programs are left out: they fire on every mutex_lock in the
        system, and skip ones inside bpf() syscalls that could never be ours."""
        if self.bpf is None:
            return 0
        total = self._tramp.missed()       # the hooks' and callbacks' fentry programs
        for name, fn in self.bpf.funcs.items():
            n = name.decode() if isinstance(name, bytes) else name
            if not n.startswith(("hk_", "cb_")):
                continue
            total += int(fdinfo(int(fn.fd)).get("recursion_misses", 0))
        return total

    def _kprobe_missed_raw(self) -> int:
        return kprobe_misses(f"_bcc_{os.getpid()}")

    def callback_symbol(self, addr: int) -> str:
        """A driver callback's name as it was when probed: records still in flight
        when its module unloads are named right, not after whatever is there now."""
        return self._cb_names.get(addr) or self.ksym(addr)

    def ksym(self, addr: int) -> str:
        hit = self._ksyms.lookup(addr) if self._ksyms else None
        if hit is None:
            return f"{addr:#x}"
        name, mod, off = hit
        s = name if off == 0 else f"{name}+{off:#x}"
        return f"{s} [{mod}]" if mod else s

    def stack(self, stack_id: int) -> list[str]:
        """Symbolized frames of a stack id, innermost first ([] for -1/-2/-3)."""
        if stack_id < 0:
            return []
        if stack_id not in self._stack_ips and self.bpf is not None:
            # ids are content-keyed and never reused, so a stack is read once
            t = self.bpf[b"stack_by_id"]
            try:
                self._stack_ips[stack_id] = [a for a in t[t.Key(stack_id)].ip if a]
            except KeyError:
                return []
        frames = [self.ksym(a) for a in self._stack_ips.get(stack_id, [])]
        # fentry stacks start inside our program and its trampoline: drop them
        while frames and frames[0].startswith(("bpf_prog_", "bpf_trampoline_")):
            frames.pop(0)
        return frames

    def histograms(self) -> list[tuple]:
        """(func, hook, event, slot, count) of the aggregated durations (func 0: the hook)."""
        if self.bpf is None:
            return list(self._final["hist"]) if self._final else []
        return self._hist.histograms()

    def totals(self) -> list[tuple]:
        """(func, hook, event, count, sum_ns) of the aggregated durations."""
        if self.bpf is None:
            return list(self._final["totals"]) if self._final else []
        return self._hist.totals()

    def via(self) -> list[tuple]:
        """(func, hook, via, count): the hook whose invocation made a callback's
        timed calls (InKernelHistograms.via)."""
        if self.bpf is None:
            return list(self._final.get("via", [])) if self._final else []
        return self._hist.via()

    def stop(self) -> None:
        """Detach and unload everything; drops and histograms stay readable."""
        if self.bpf is None:
            return
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        try:
            try:
                self._final = dict(drops=self.drops(), hist=self.histograms(), totals=self.totals(),
                                   via=self.via(), untimed=self.untimed())
                for k, v in self.bpf[b"stack_by_id"].items():   # readable after unload
                    self._stack_ips.setdefault(k.value, [a for a in v.ip if a])
            except Exception:
                self._final = None
            self._hist.close()
            self._unmap_counters()
            self._tramp.close()
            self.bpf.cleanup()
        finally:
            self.bpf = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
