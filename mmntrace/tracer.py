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
generates one KFUNC_PROBE/KRETFUNC_PROBE pair per hook, might-sleep function
and getppid (calibration) of the running kernel, from its BTF, calling the
same BPF bodies. Driver callbacks stay kprobes with either backend: they are
found at run time in modules, and bcc (0.26, Debian 12) binds a trampoline
program to a vmlinux function by name at load. A vmlinux function whose
trampoline cannot attach falls back to a kprobe; every probe's mechanism is
in :meth:`attached` (and the recording's metadata). ``auto`` is fentry only
where a trial attach works on this kernel (:func:`resolve_backend`,
mmntrace/trial.py). What bcc prints from C along the way is captured
(:func:`quiet_bpf_class`): MMNTRACE_DEBUG=1 shows it.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import bpfsys
from . import btf as btfmod
from . import hooks as hookmod
from . import kernel
from .errors import BpfLoadError, MmntraceError
from .ksyms import KernelSymbols
from .layout import header, record_dtype
from .probes import remove_stale_kprobe_events, stale_kprobe_events, trampoline_in_place, trampoline_listed  # noqa: F401
from .transport import MappedArray, RingReader, fdinfo
from .quiet import debug, quietly

if TYPE_CHECKING:
    from .trial import Verdict

BPF_DIR = Path(__file__).resolve().parent / "bpf"     # package data: the BPF C sources
BPF_SRC = BPF_DIR / "mmntrace.bpf.c"
MAXACTIVE = 4096  # kretprobe instances: large, so that deep concurrency is not missed

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
# --aggregate arrays (bpf/mmntrace.bpf.c): series x event index x log2 slot
NR_SERIES, NR_EVIDX, NR_SLOTS = 128, 16, _H.defines["MMNT_NR_SLOTS"]
#: runs of the start-up sweep's interval-tree walk (each visits 128 notifiers per mm): an mm
#: with up to 64 x 128 = 8192 interval notifiers is walked to its end
SWEEP_ITREE_RUNS = 64


_CALIB_KPROBE, _CALIB_FENTRY = 0, 4   # bpf/context.h calib[] bases
_CALIB_RT = {_CALIB_KPROBE: 12, _CALIB_FENTRY: 14}   # PREEMPT_RT: lowest migration_disabled, rcu nesting
_CALIB_OVERHEAD = {"kprobe": 8, "fentry": 9}    # calib[] slots of probe_overhead()
_CALIB_NSAMPLES, _CALIB_MAX_SAMPLES = 10, 512
_HOOK_CALIB = _H.enums["mmnt_hook"]["MMNT_HOOK_CALIB"]   # in-kernel only: the calibration
#: the calibration's callback stand-in: getppid() calls it exactly once
#: (task_tgid_vnr -> __task_pid_nr_ns, kernel/sys.c, kernel/pid.c)
CALIB_INNER = "__task_pid_nr_ns"
CALIB_CALLS = 300
#: the fentry backend's programs (entry, exit) by probe kind: each compiled
#: once and loaded on every function of its kind (Tracer._try_raw_fentry)
_FENTRY_PROGS = {"hook": ("hkf_entry", "hkf_exit"), "callback": ("cbf_entry", "cbf_exit"),
                 "sleeper": ("msf_entry", None)}
_IRQS_UNKNOWN = "IRQS_UNKNOWN"


def bpf_text(path: Path = BPF_SRC) -> str:
    """bpf/mmntrace.bpf.c with its parts (``#include "state.h"``...) pasted in.

    bcc rewrites map calls (``m.lookup()``) and generates tracepoint argument
    structs in the main text only, so the parts by concern are joined here
    rather than by the preprocessor; mmntrace.h, the record layout that
    mmntrace/layout.py also reads, holds no code and stays an include."""
    out = []
    for line in path.read_text().splitlines():
        m = re.fullmatch(r'#include "([\w.]+)"', line.strip())
        part = path.parent / m.group(1) if m else None
        if part is not None and part.name != "mmntrace.h" and part.exists():
            out.append(f"/* ---- {part.name} ---- */")
            out.append(bpf_text(part))
        else:
            out.append(line)
    return "\n".join(out) + "\n"


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


def overhead_median(durations) -> float | None:
    """The median of the calibration's durations, the first tenth left out
    (the first calls of a freshly attached probe pay for cold caches)."""
    d = list(durations)[len(durations) // 10:]
    if not d:
        return None
    d.sort()
    m = len(d) // 2
    return float(d[m]) if len(d) % 2 else (d[m - 1] + d[m]) / 2


class _CbInfo(ctypes.Structure):
    _fields_ = [("func", ctypes.c_uint64), ("hook", ctypes.c_uint32), ("series", ctypes.c_uint32)]


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
        self._stack_ips: dict[int, list[int]] = {}
        self.calibration: int | None = None
        #: PREEMPT_RT: what the probe itself adds to migration_disabled and
        #: rcu_read_lock_nesting, by mechanism (None: unreadable, no RT context)
        self.calibration_rt: dict = {}
        self.calibration_irqs_off = False
        #: ns that one probed callback costs its hook beyond its programs' own
        #: time, by probe mechanism ("kprobe", "fentry"): _calibrate_overhead
        self.probe_overhead: dict[str, int] = {}
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
        self._series: dict[int, tuple[int, int]] = {}   # histogram series -> (callback, hook)
        self._series_of: dict[int, int] = {}            # callback address -> its series
        self._agg: dict[str, MappedArray] = {}
        self.task_storage = True
        self._raw: dict[int, list[int]] = {}             # callback -> fds of its fentry/fexit programs and links
        self._raw_insns: dict[str, bytes] = {}          # program name -> its instructions (bcc's compile)
        self._raw_missed = 0                             # recursion misses of raw programs since closed
        self._raw_run_ns = 0                             # and their run time
        self._raw_counted: set[int] = set()              # functions whose raw programs' misses are drops
        self._btf_objs: dict[str, tuple] = {}            # "vmlinux" or module -> (Btf, BTF object fd)

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
        f = self.f
        fl = ["-Wno-duplicate-decl-specifier", "-Wno-ignored-attributes", "-Wno-unknown-warning-option",
              f"-I{BPF_DIR}", f"-DMMNT_RINGBUF={1 if self.ringbuf else 0}",
              f"-DMMNT_RINGBUF_PAGES={self.ringbuf_pages}", f"-DMMNT_SELF_TGID={os.getpid()}"]
        if os.uname().machine == "aarch64":
            fl.append("-DMMNT_ARCH_ARM64")     # struct pt_regs differs (KP_IRQS_OFF)
        if f.preempt_count_addr is not None and f.per_cpu_offset_addr:
            fl += [f"-DMMNT_PC_ADDR={f.preempt_count_addr:#x}ULL",
                   f"-DMMNT_PCPU_OFF_ADDR={f.per_cpu_offset_addr:#x}ULL"]
        if f.preempt_rt and f.task_rt_offsets:
            fl += ["-DMMNT_RT", f"-DMMNT_TASK_MD_OFF={f.task_rt_offsets[0]}",
                   f"-DMMNT_TASK_RCU_OFF={f.task_rt_offsets[1]}"]
        if f.subs_list_off is not None:
            fl.append(f"-DMMNT_SUBS_LIST_OFF={f.subs_list_off}")
        if f.subs_itree_off is not None:
            fl.append(f"-DMMNT_SUBS_ITREE_OFF={f.subs_itree_off}")
        if getattr(f, "task_iter", False):
            fl.append("-DMMNT_ITER")
        if getattr(f, "raw_sched_switch", False):
            fl.append("-DMMNT_RAW_SWITCH")
        fl += [f"-D{d}" for d in hookmod.op_defines(f.ops)]     # the ops members this kernel has
        if f.gfp_direct_reclaim is not None:
            fl.append(f"-DMMNT_GFP_DIRECT_RECLAIM={f.gfp_direct_reclaim:#x}ULL")
        if self.layout == "btf":
            fl.append("-DMMNT_BTF_LAYOUT")
            fl += [f"-DMMNT_L_{k}={v}" for k, v in f.layout]
        if self.pid is not None:
            fl.append(f"-DMMNT_FILTER_PID={int(self.pid)}")
            if self.children:
                fl.append("-DMMNT_FILTER_TREE")
        if self.comm:
            c = self.comm[:15].replace("\\", "\\\\").replace('"', '\\"')
            fl.append(f'-DMMNT_FILTER_COMM="{c}"')
        if self.aggregate:
            fl.append("-DMMNT_AGGREGATE")
        if self.min_latency_ns is not None:
            fl.append(f"-DMMNT_MIN_LAT_NS={self.min_latency_ns}ULL")
        if self.task_storage:
            fl.append("-DMMNT_TASK_STORAGE")
        if self.sampling:
            fl.append("-DMMNT_SAMPLING")
        # only the programs this tracer can attach are compiled (each inlines
        # the bodies: seconds of compile and tens of MiB of clang per flavour)
        if self.backend == "fentry":
            fl.append("-DMMNT_FENTRY")
        if self.might_sleep:
            fl.append("-DMMNT_MIGHT_SLEEP")
        if self.sleep_detect == "count":
            fl.append("-DMMNT_SLEEP_COUNT")
        return fl

    def start(self) -> None:
        """Compile and load (unless load() already ran), then attach everything (`record`)."""
        if self.bpf is None:
            self.load()
        self.attach()

    def _find_calib_sym(self) -> str | None:
        """getppid's syscall function with BTF: the fentry calibration's target."""
        b = btfmod.load_vmlinux()
        # __do_sys_: the body the wrapper calls, where the wrapper has no BTF (6.12 PREEMPT_RT)
        for prefix in ("__x64_sys_", "__arm64_sys_", "__se_sys_", "sys_", "__do_sys_"):
            sym = prefix + "getppid"
            if sym in self._ksyms.by_name and b is not None and b.func_signature(sym) is not None:
                return sym
        return None

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
                self._calib_sym = self._find_calib_sym()
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
        try:
            t0 = time.monotonic()
            self._detach_all()
            self._calibrate()
            self._open_buffer()
            self._map_aggregates()
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

    def _map_aggregates(self) -> None:
        if self.kernel_hist and not self._agg:
            self._agg["hist"] = MappedArray(self.bpf[b"hist"], (NR_SERIES, NR_EVIDX, NR_SLOTS), np.uint64)
            self._agg["totals"] = MappedArray(self.bpf[b"totals"], (NR_SERIES, NR_EVIDX, 2), np.uint64)
            self._agg["via"] = MappedArray(self.bpf[b"via"], (NR_SERIES, kernel.NR_HOOKS + 1), np.uint64)

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
            self._ksyms._load()    # trampolines and programs got symbols as they attached

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
        fds: list[int] = []
        try:
            b = btfmod.load_vmlinux()
            tid = b.find("bpf_iter_task", (btfmod.KIND_FUNC,)) if b is not None else None
            if tid is None:
                raise OSError("no bpf_iter_task in BTF")
            raw = b""
            resume, resuming = self.bpf[b"itree_resume"], self.bpf[b"itree_resuming"]
            resume.clear()              # an earlier window's sweep (the daemon) left nothing to go on from
            resuming[ctypes.c_int(0)] = ctypes.c_uint32(0)
            for fn in (b"iter_subs", b"iter_itree"):
                insns = self.bpf.dump_func(fn)
                prog = bpfsys.load_tracing(insns, name=fn.decode(), attach=bpfsys.TRACE_ITER,
                                           btf_obj_fd=0, btf_id=tid)
                fds.append(prog)
                fds.append(bpfsys.iter_link(prog))
                raw += bpfsys.iter_read(fds[-1])
            # interval trees longer than one run visits: go on where each stopped
            runs = 1
            try:
                while len(resume) and runs < SWEEP_ITREE_RUNS:
                    resuming[ctypes.c_int(0)] = ctypes.c_uint32(1)
                    raw += bpfsys.iter_read(fds[-1])
                    runs += 1
            finally:
                resuming[ctypes.c_int(0)] = ctypes.c_uint32(0)
            self.sweep_unfinished = len(resume)
            self.timing["sweep_itree_runs"] = runs
        except Exception as e:      # subscribers are then found at their mm's first hook
            _debug(f"start-up sweep failed: {e}\n{getattr(e, 'log', '')}")
            self.timing["sweep_error"] = str(e)
            return
        finally:
            for x in reversed(fds):
                os.close(x)
        raw = raw[:len(raw) - len(raw) % self._dtype.itemsize]
        self.swept = len(raw) // self._dtype.itemsize
        self.process_discovery(raw, sent=False)
        self.timing["sweep_s"] = time.monotonic() - t0

    def _detach_all(self) -> None:
        self._detach_raw()
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
        for a in self._agg.values():
            a.zero()
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
        return [int(fn.fd) for fn in self.bpf.funcs.values()] + [fd for fds in self._raw.values() for fd in fds[::2]]

    def run_time_ns(self) -> int | None:
        """Nanoseconds our programs ran (kernel.bpf_stats_enabled), those since
        closed included (the fentry programs of a window are closed at its end)."""
        vals = [int(v) for v in (fdinfo(fd).get("run_time_ns") for fd in self.prog_fds()) if v is not None]
        return sum(vals) + self._raw_run_ns if vals else None

    def _calibrate(self) -> None:
        """preempt_count that the probe machinery itself adds, seen on getppid(),
        for kprobes and (fentry backend) for trampolines, which differ."""
        calib = self.bpf[b"calib"]
        for base in _CALIB_RT.values():     # PREEMPT_RT: a mechanism never calibrated reads no RT context
            for slot in (base, base + 1):
                calib[ctypes.c_int(slot)] = ctypes.c_uint32(0xFFFFFFFF)
        self.calibration = self._calibrate_one(_CALIB_KPROBE)
        self.calibration_fentry = self._calibrate_one(_CALIB_FENTRY) if self._calib_sym else None
        self._calibrate_overhead()

    def _calibrate_overhead(self) -> None:
        """What a probed callback costs the hook it runs in, beyond the time its
        own programs measure and take off (nested_ns): the probe machinery's
        dispatch around each program (ftrace, kprobe and rethook trampolines, or
        the BPF trampoline), which no program can see. Measured here on the
        tracer's own getppid() calls, as a hook with a callback inside: the
        syscall function probed as the hook, __task_pid_nr_ns (which it calls
        once) as the callback. The median hook duration with the callback probed
        minus the median without it is that cost, per mechanism; the BPF side
        adds it to nested_ns for each callback probe that fires inside a hook.
        Unmeasurable (symbols missing, a probe refused): 0, nothing taken off."""
        self.probe_overhead = {}
        outer = self.bpf.get_syscall_fnname(b"getppid").decode()
        oa = self._ksyms.by_name.get(outer, [None])[0]
        ia = self._ksyms.by_name.get(CALIB_INNER, [None])[0]
        if oa is None or ia is None:
            _debug(f"probe-overhead calibration: {outer} or {CALIB_INNER} not in kallsyms")
            return
        hook_ip, cb_info, calib = self.bpf[b"hook_ip"], self.bpf[b"cb_info"], self.bpf[b"calib"]
        for k in (oa, oa + 4):
            hook_ip[ctypes.c_uint64(k)] = ctypes.c_uint32(_HOOK_CALIB)
        for k in (ia, ia + 4):
            cb_info[ctypes.c_uint64(k)] = _CbInfo(ia, _HOOK_CALIB, 0)
        attached: list[tuple] = []
        try:
            for fn, kind in ((b"hk_return", "ret"), (b"hk_entry", "entry")):
                self._calib_attach(outer, fn, kind, attached)
            alone = self._calib_median()
            self._calib_attach(CALIB_INNER, b"cb_return", "ret", attached)
            self._calib_attach(CALIB_INNER, b"cb_entry", "entry", attached)
            with_kprobe = self._calib_median()
            for ev, fn, kind in reversed(attached[2:]):
                self._calib_detach(ev, fn, kind)
            del attached[2:]
            measured = {"kprobe": with_kprobe}
            if self.backend == "fentry":
                err = self._try_raw_fentry(CALIB_INNER, None, "cbf_entry", "cbf_exit", check_patched=False)
                if err is None:
                    measured["fentry"] = self._calib_median()
                    self._detach_raw(ia)
                else:
                    _debug(f"probe-overhead calibration, fentry on {CALIB_INNER}: {err}")
            for mech, with_probe in measured.items():
                if alone is not None and with_probe is not None:
                    cost = max(0, round(with_probe - alone))
                    self.probe_overhead[mech] = cost
                    calib[ctypes.c_int(_CALIB_OVERHEAD[mech])] = ctypes.c_uint32(cost)
        except Exception as e:      # calibration is best effort: nothing taken off
            _debug(f"probe-overhead calibration failed: {e}")
            for mech, slot in _CALIB_OVERHEAD.items():
                calib[ctypes.c_int(slot)] = ctypes.c_uint32(0)
            self.probe_overhead = {}
        finally:
            for ev, fn, kind in reversed(attached):
                self._calib_detach(ev, fn, kind)
            for table, keys in ((hook_ip, (oa, oa + 4)), (cb_info, (ia, ia + 4))):
                for k in keys:
                    try:
                        del table[ctypes.c_uint64(k)]
                    except KeyError:
                        pass
        _debug(f"probe overhead per probed callback: {self.probe_overhead}")

    def _calib_attach(self, event: str, fn: bytes, kind: str, attached: list) -> None:
        if kind == "ret":
            self.bpf.attach_kretprobe(event=event.encode(), fn_name=fn, maxactive=MAXACTIVE)
        else:
            self.bpf.attach_kprobe(event=event.encode(), fn_name=fn)
        attached.append((event, fn, kind))

    def _calib_detach(self, event: str, fn: bytes, kind: str) -> None:
        try:
            if kind == "ret":
                self.bpf.detach_kretprobe(event=event.encode(), fn_name=fn)
            else:
                self.bpf.detach_kprobe(event=event.encode(), fn_name=fn)
        except Exception as e:
            _debug(f"calibration: detaching {fn!r} from {event}: {e}")

    def _calib_median(self) -> float | None:
        """The median duration of CALIB_CALLS getppid() calls, as the hook
        programs measured them (None: none seen)."""
        calib, durs = self.bpf[b"calib"], self.bpf[b"calib_dur"]
        calib[ctypes.c_int(_CALIB_NSAMPLES)] = ctypes.c_uint32(0)
        for _ in range(CALIB_CALLS):
            os.getppid()
        n = min(calib[ctypes.c_int(_CALIB_NSAMPLES)].value, _CALIB_MAX_SAMPLES)
        return overhead_median([durs[ctypes.c_int(i)].value for i in range(n)])

    def _calibrate_one(self, base: int) -> int | None:
        calib = self.bpf[b"calib"]
        calib[ctypes.c_int(base + 1)] = ctypes.c_uint32(0xFFFFFFFF)    # RT slots: _calibrate set them
        if base == _CALIB_KPROBE:
            fn = self.bpf.get_syscall_fnname(b"getppid")
            self.bpf.attach_kprobe(event=fn, fn_name=b"calib_entry")
        else:
            err = self._try_raw_fentry(self._calib_sym, None, "calib_fentry", None, check_patched=False)
            if err is not None:
                _debug(f"fentry calibration on {self._calib_sym}: {err}")
                return None
        try:
            for _ in range(16):
                os.getppid()
        finally:
            if base == _CALIB_KPROBE:
                self.bpf.detach_kprobe(event=fn, fn_name=b"calib_entry")
            else:
                self._detach_raw(self._ksyms.by_name[self._calib_sym][0])
        hits = calib[ctypes.c_int(base + 2)].value
        raw = calib[ctypes.c_int(base + 1)].value
        if hits == 0 or raw == 0xFFFFFFFF:
            calib[ctypes.c_int(base)] = ctypes.c_uint32(0)
            return None  # preempt count unreadable: records say PC_UNKNOWN
        if base == _CALIB_KPROBE:
            self.calibration_irqs_off = calib[ctypes.c_int(base + 3)].value > 0
        if self.f.preempt_rt:
            md, rcu = (calib[ctypes.c_int(_CALIB_RT[base] + i)].value for i in (0, 1))
            self.calibration_rt["fentry" if base == _CALIB_FENTRY else "kprobe"] = (
                None if 0xFFFFFFFF in (md, rcu) else {"migration_disabled": md, "rcu_read_lock_nesting": rcu})
        calib[ctypes.c_int(base)] = ctypes.c_uint32(raw)
        return raw

    def _try_attach(self, kind: str, symbol: str, hook, module, entry: str, ret: str | None,
                    hook_id: int | None = None) -> bool:
        rec = dict(kind=kind, symbol=symbol, hook=hook, module=module, status="attached", hook_id=hook_id,
                   attach="kprobe")
        progs = _FENTRY_PROGS.get(kind)
        if progs and self.backend == "fentry" and (kind != "callback" or self.callback_fentry or not module):
            err = self._try_raw_fentry(symbol, module, *progs)
            if err is None:
                if kind != "sleeper":       # their recursion misses are drops (_prog_missed_raw)
                    self._raw_counted.add(self._ksyms.by_name[symbol][0])
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

    def _btf_obj(self, obj: str):
        """(parsed BTF, BTF object fd) of vmlinux or a module, cached."""
        if obj not in self._btf_objs:
            base = btfmod.load_vmlinux()
            b = base if obj == "vmlinux" else None
            if obj != "vmlinux" and base is not None and Path(f"/sys/kernel/btf/{obj}").exists():
                b = btfmod.Btf.load(f"/sys/kernel/btf/{obj}", base=base)
            fd = bpfsys.btf_obj_fd(obj) if b is not None else None
            self._btf_objs[obj] = (b, fd)
        return self._btf_objs[obj]

    def _insns(self, name: str) -> bytes:
        if name not in self._raw_insns:
            self._raw_insns[name] = self.bpf.dump_func(name.encode())
        return self._raw_insns[name]

    def _try_raw_fentry(self, symbol: str, module: str | None, entry: str, exit_: str | None,
                        check_patched: bool = True) -> str | None:
        """Put the fentry program ``entry`` (and the fexit program ``exit_``) on
        ``symbol``, loaded on its BTF function through mmntrace/bpfsys.py: one
        compiled program serves every function (bcc 0.26 binds a trampoline
        program to one vmlinux function by name, and to none in a module).
        The reason if not."""
        b, fd = self._btf_obj(module or "vmlinux")
        if b is None or fd is None:
            return f"no BTF for {module or 'vmlinux'}"
        tid = b.find(symbol, (btfmod.KIND_FUNC,))
        if tid is None:
            return f"{symbol} is not in the BTF of {module or 'vmlinux'}"
        addr = self._ksyms.by_name.get(symbol, [None])[0]
        if addr is None:
            return f"{symbol} is not in /proc/kallsyms"
        fds: list[int] = []
        try:
            # fexit first, as for kprobes (see _try_attach)
            for name, kind in ((exit_, bpfsys.TRACE_FEXIT), (entry, bpfsys.TRACE_FENTRY)):
                if name is None:
                    continue
                prog = bpfsys.load_tracing(self._insns(name), name=name, attach=kind, btf_obj_fd=fd, btf_id=tid)
                fds.append(prog)
                fds.append(bpfsys.attach_tracing(prog))
        except bpfsys.BpfSysError as e:
            for x in fds:
                os.close(x)
            _debug(f"fentry on {symbol}: {e}\n{e.log}")
            return str(e)
        if check_patched and not trampoline_in_place(symbol, module):
            # seen on 6.12: kvm_mmu_notifier_invalidate_range_end took both
            # programs and a link, yet its call site stayed a NOP and it
            # never ran them; a kprobe pair sees it (exactness first)
            for x in fds:
                os.close(x)
            return "the kernel took the programs but did not patch the function"
        self._raw[addr] = fds
        return None

    def _detach_raw(self, func: int | None = None) -> None:
        """Close the fentry/fexit programs and links of one callback (or all)."""
        for f in ([func] if func is not None else list(self._raw)):
            fds = self._raw.pop(f, [])
            if f in self._raw_counted:
                self._raw_missed += self._raw_misses(fds)
            self._raw_run_ns += self._raw_field(fds, "run_time_ns")
            for fd in reversed(fds):
                try:
                    os.close(fd)
                except OSError:
                    pass

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
                    table[ctypes.c_uint64(k)] = _CbInfo(a, gfp_arg, 0)
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
        series = self._series_of.get(func)
        if series is None:      # its own histogram series, kept across windows and re-probes
            series = kernel.NR_HOOKS + len(self._series)
            self._series_of[func] = series
            self._series[series] = (func, hook)
        for k in (func, func + 4):
            table[ctypes.c_uint64(k)] = _CbInfo(func, hook, series)
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
        if a.get("attach") == "fentry":
            self._detach_raw(a.get("addr"))
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

    def _walk_gen(self) -> int:
        return int(self.bpf[b"walk_gen"][ctypes.c_int(0)].value)

    def _check_modules(self, force: bool = False) -> None:
        """Every half second, and at once after a module load (``force``): did a
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
            self._close_btf_obj(m)
        self._ksyms._load()

    def _close_btf_obj(self, obj: str) -> None:
        b_fd = self._btf_objs.pop(obj, None)
        if b_fd and b_fd[1] is not None:
            os.close(b_fd[1])

    # -- queries -----------------------------------------------------------------
    def attached(self) -> list[dict]:
        return [dict(r) for r in self._attached]

    def drops(self) -> dict:
        if self.bpf is None and self._final:
            return dict(self._final["drops"])
        out = {name: 0 for name in DROP_NAMES.values()}
        if self.bpf is not None:
            d = self.bpf[b"drops"]
            for t, name in DROP_NAMES.items():
                out[name] = int(sum(d[ctypes.c_int(t)]))
        out["perf_lost"] = self._perf_lost
        out["untimed"] = sum(self.untimed().values())
        out["kretprobe_missed"] = self._kprobe_missed()
        out["prog_missed"] = self._prog_missed_raw() - self._missed_base
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
        total = self._raw_missed
        for name, fn in self.bpf.funcs.items():
            n = name.decode() if isinstance(name, bytes) else name
            if not n.startswith(("hk_", "cb_")):
                continue
            total += int(fdinfo(int(fn.fd)).get("recursion_misses", 0))
        for f, fds in self._raw.items():    # the hooks' and callbacks' fentry programs
            if f in self._raw_counted:
                total += self._raw_misses(fds)
        return total

    @classmethod
    def _raw_misses(cls, fds: list[int]) -> int:
        return cls._raw_field(fds, "recursion_misses")

    @staticmethod
    def _raw_field(fds: list[int], key: str) -> int:
        n = 0
        for fd in fds[::2]:                 # [prog, link, prog, link]
            try:
                n += int(fdinfo(fd).get(key, 0))
            except (OSError, ValueError):
                pass
        return n

    def _kprobe_missed_raw(self) -> int:
        suffix = f"_bcc_{os.getpid()}"
        total = 0
        for p in ("/sys/kernel/tracing/kprobe_profile", "/sys/kernel/debug/tracing/kprobe_profile"):
            try:
                with open(p) as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) == 3 and parts[0].endswith(suffix):
                            total += int(parts[2])
                return total
            except OSError:
                continue
        return total

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

    def _series_key(self, series: int) -> tuple[int, int] | None:
        """(callback address or 0 for the hook itself, hook) of a histogram series."""
        if series < kernel.NR_HOOKS:
            return 0, series
        return self._series.get(series)

    def histograms(self) -> list[tuple]:
        """(func, hook, event, slot, count) of the aggregated durations (func 0: the hook)."""
        if self.bpf is None and self._final:
            return list(self._final["hist"])
        if self.bpf is None or "hist" not in self._agg:
            return []
        h = self._agg["hist"].snapshot()
        out = []
        for series, ev, slot in zip(*np.nonzero(h)):
            key = self._series_key(int(series))
            if key is not None:
                out.append((key[0], key[1], int(ev) - 1, int(slot), int(h[series, ev, slot])))
        return sorted(out)

    def totals(self) -> list[tuple]:
        """(func, hook, event, count, sum_ns) of the aggregated durations."""
        if self.bpf is None and self._final:
            return list(self._final["totals"])
        if self.bpf is None or "totals" not in self._agg:
            return []
        t = self._agg["totals"].snapshot()
        out = []
        for series, ev in zip(*np.nonzero(t[:, :, 0])):
            key = self._series_key(int(series))
            if key is not None:
                out.append((key[0], key[1], int(ev) - 1, int(t[series, ev, 0]), int(t[series, ev, 1])))
        return sorted(out)

    def via(self) -> list[tuple]:
        """(func, hook, via, count) of the timed callback calls in the
        histograms: via is the hook whose invocation made them (None: none of
        ours was running). Before 6.6 invalidate_range_end calls the
        secondary-TLB ops itself: (func, secondary_tlb, invalidate_range_end, n)."""
        if self.bpf is None and self._final:
            return list(self._final.get("via", []))
        if self.bpf is None or "via" not in self._agg:
            return []
        v = self._agg["via"].snapshot()
        out = []
        for series, h in zip(*np.nonzero(v)):
            key = self._series_key(int(series))
            if key is not None and key[0]:
                out.append((key[0], key[1], int(h) if h < kernel.NR_HOOKS else None, int(v[series, h])))
        return sorted(out, key=lambda r: (r[0], r[1], -1 if r[2] is None else r[2]))

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
            for a in self._agg.values():
                a.close()
            self._agg.clear()
            self._detach_raw()
            for obj in list(self._btf_objs):
                self._close_btf_obj(obj)
            self.bpf.cleanup()
        finally:
            self.bpf = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
