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
(build.quiet_bpf_class): MMNTRACE_DEBUG=1 shows it.

The parts the tracer uses, each with its own module: codegen.py (the
program's text and compile flags, pure functions of the kernel's features and
the options), build.py (bcc's compile of it, and the fallbacks a kernel or a
clang forces), fentry.py (the fentry backend's programs loaded per function,
which bcc 0.26 cannot), calibrate.py (what the probes themselves add to
preempt_count() and to a hook's time), sweep.py (the subscribers that exist
at start), histograms.py (the in-kernel histograms), transport.py (ring
buffer, mapped arrays), ksyms.py and probes.py; attach.py (one probe placed,
with the fentry-to-kprobe fallback, and the list of all of them),
callbacks.py (driver callbacks probed as they are found, the user's choice of
them, modules as they come and go) and losses.py (what was lost: drops[],
the kernel's misses of our probes). What stays here is the order of things:
compile and load, what is attached in which order, the poll loop, and the
queries the recorder and the daemon make.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import TYPE_CHECKING

from . import btf as btfmod
from . import codegen
from . import hooks as hookmod
from . import kernel
from .errors import BpfLoadError, MmntraceError
from .codegen import BPF_DIR, BPF_SRC, bpf_text  # noqa: F401 (names older code imports from here)
from .calibrate import Calibration, fentry_calib_symbol
from .attach import KprobeHooksMissing, KprobeLinks, Probes
from . import preload, subprog
from .build import Builder, Choices
from .callbacks import DriverCallbacks, Selection, chained_hooks
from .fentry import Trampolines
from .heap import give_back_memory
from .histograms import NR_EVIDX, NR_SERIES, NR_SLOTS, InKernelHistograms  # noqa: F401 (NR_*: older imports)
from .ksyms import KernelSymbols
from .layout import record_dtype
from .losses import DROP_NAMES, DROP_SLOTS, MISSES_REFRESH_S, REC_NAMES, Counters, drops_by_name, lost  # noqa: F401
from . import sweep
from .probes import MAXACTIVE, kprobe_misses, remove_stale_kprobe_events, stale_kprobe_events, trampoline_in_place, trampoline_listed  # noqa: F401
from .transport import EventBuffer, prog_counter
from .quiet import debug, quietly

if TYPE_CHECKING:
    from .trial import Verdict


SLEEP_DETECT = hookmod.SLEEP_DETECT
#: runs of the start-up sweep's interval-tree walk (each visits MMNT_ITREE_NODES = 32 notifiers
#: per mm; only the mms left unfinished are walked again): an mm with up to 256 x 32 = 8192
#: interval notifiers is walked to its end
SWEEP_ITREE_RUNS = 256
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


class Tracer:
    def __init__(self, features: kernel.Features, *, backend: str = "kprobe", hooks=None,
                 pid: int | None = None, comm: str | None = None, aggregate: bool = False,
                 ringbuf_pages: int = 256, ringbuf: bool | None = None, layout: str = "auto",
                 might_sleep: bool = False, sampling: bool = False, modules=None, callbacks=None,
                 min_latency_ns: int | None = None, children: bool = False, sleep_detect: str = "count"):
        """``pid``: only this process; with ``children``, also every process it
        forks while traced, and theirs (threads are the process's own).
        ``sleep_detect``: how real sleeps in must-not-sleep sections are seen:
        ``count`` (the default), the task's voluntary-switch count at each
        such section's entry and return (nothing runs outside notifier calls;
        no stack at the sleep), or ``switch``, a sched_switch program (the
        sleep's own stack; it runs on every context switch of the machine). ``modules``, ``callbacks``: probe only the driver callbacks of these
        modules (``vmlinux``: built-in subscribers) or with these symbol names
        (either selects; None: every callback). The hooks are traced in full.
        ``min_latency_ns`` (streaming only): send only the hook and callback
        calls at least this long; every call still goes to the in-kernel
        histograms (:meth:`histograms`), so counts and quantiles stay whole."""
        self.f = features
        self.selection = Selection.of(modules, callbacks)
        self.sampling = sampling       # set_sampling() allowed (the daemon's event budget)
        # driver callbacks through trampolines only when fentry was asked for
        # by name: a trampoline on a module function pins the module (rmmod
        # fails while attached), and `auto` must let a driver be reloaded
        # while it is traced; kprobes do not pin
        self.callback_fentry = backend == "fentry"
        # might_sleep=False: no probe on might-sleep functions (they fire on
        # every allocation and lock of the machine: the ambient tax); real
        # sleeps inside must-not-sleep callbacks are still caught (sleep_detect)
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
        self._buffer: EventBuffer | None = None    # where the records arrive (transport.py)
        self._calib_sym: str | None = None
        self.hooks = self._hook_ids(hooks)
        self.pid = pid
        # children: the pid filter takes in the processes it forks from now
        # on, and theirs (record -- CMD, as perf record follows its workload)
        self.children = bool(children) and pid is not None
        self.comm = comm
        self.aggregate = aggregate
        # a driver callback timed from its entry to the next one's or to its hook's
        # return (bpf/mmntrace.bpf.c, MMNT_CHAIN): one probe per call, not two; with
        # --aggregate every hook's but release's, streaming the hooks whose ops return
        # nothing (callbacks.chained_hooks). It needs every hook probed: with --hook,
        # a callback could run where no hook of ours would end it
        self.chain = self.hooks == set(range(kernel.NR_HOOKS))
        self.chained_hooks = chained_hooks(self.chain, aggregate)
        # streaming under `auto`: the hooks by kprobe. Each hook record names its
        # caller: a kprobe reads range start's and end's return address from its
        # registers, a trampoline has to unwind the stack, the costliest step of
        # a hook's probe (25-35 us a call under fentry in the lab's emulator, against
        # 2-3 us for the rest of the program: BENCHMARKS.md's in-kernel cost table)
        self.hook_fentry = self.backend == "fentry" and (backend == "fentry" or aggregate)
        # the hooks' kprobe pair is compiled unless their trampolines serve them
        # all (load(): each hook function has BTF); one refused at attach
        # compiles it in (attach(): hook_refused says which, and why)
        self.kprobe_hooks = True
        self.hook_refused: str | None = None
        if min_latency_ns is not None and (aggregate or min_latency_ns <= 0):
            raise MmntraceError("a minimum latency is for streaming recordings, and must be positive")
        self.min_latency_ns = int(min_latency_ns) if min_latency_ns is not None else None
        self.ringbuf_pages = ringbuf_pages
        self.bpf = None
        # the parts of a loaded program (load()): its probes (mmntrace/attach.py), its
        # counters of what was lost (mmntrace/losses.py), the driver callbacks as they
        # are found (mmntrace/callbacks.py)
        self._probes: Probes | None = None
        self._counters: Counters | None = None
        self._cbs: DriverCallbacks | None = None
        self._stack_ips: dict[int, list[int]] = {}
        #: what the probes themselves add, measured at load (mmntrace/calibrate.py);
        #: read through calibration, calibration_fentry, calibration_rt, probe_overhead
        self.calib: Calibration | None = None
        self.timing: dict[str, float] = {}
        self.swept: int | None = None     # ops records the start-up sweep reported (None: no sweep)
        self.sweep_unfinished = 0         # mms whose interval tree the sweep could not walk to its end
        self._ksyms: KernelSymbols | None = None
        self._dtype = record_dtype()
        self._final: dict | None = None
        self._hist = InKernelHistograms()      # --aggregate, --min-latency (mmntrace/histograms.py)
        # what the compile settles on where the kernel may refuse the first choice
        # (mmntrace/build.py): task-local storage, the interval walks' steps as
        # bpf_loop() callbacks where the kernel has the helper
        self.choices = Choices(bpf_loop=bool(getattr(features, "bpf_loop", False)))
        # the fentry backend's programs, loaded per function (mmntrace/fentry.py)
        self._tramp = Trampolines(lambda name: subprog.linked(self.bpf.dump_func, name), lambda: self._ksyms.by_name,
                                  pc_var=subprog.percpu_var_id(features))
        self._links: KprobeLinks | None = None
        self._iter_progs: dict[str, int] = {}     # the sweep's iterators, loaded once (_preload)

    @property
    def modules(self) -> frozenset | None:
        """The modules whose driver callbacks are probed (None: every module)."""
        return self.selection.modules

    @property
    def callbacks(self) -> frozenset | None:
        """The driver callbacks probed by name (None: every one)."""
        return self.selection.callbacks

    @property
    def task_storage(self) -> bool:
        """Per-task state in task-local storage (else a tid-keyed hash)."""
        return self.choices.task_storage

    @property
    def bpf_loop(self) -> bool:
        """The interval walks' steps are bpf_loop() callbacks (else bounded loops)."""
        return self.choices.bpf_loop

    @property
    def lean_headers(self) -> bool:
        """The compile left out the kernel headers of struct pt_regs and
        PAGE_SIZE, BTF giving them (codegen.lean_header_flags)."""
        return (self.layout == "btf" and self.choices.lean_headers
                and bool(codegen.lean_header_flags(getattr(self.f, "lean_headers", None))))

    @property
    def compile_skipped_kallsyms(self) -> bool:
        """bcc's compile spared its read of kallsyms (mmntrace/nokallsyms.py)."""
        return self.choices.skipped_kallsyms

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
    def _cflags(self, choices: Choices | None = None) -> list[str]:
        """The compile flags of this tracer's program (mmntrace/codegen.py)
        under ``choices`` (default: the tracer's)."""
        c = choices if choices is not None else self.choices
        return codegen.cflags(self.f, backend=self.backend, ringbuf=self.ringbuf, ringbuf_pages=self.ringbuf_pages,
                              layout=self.layout, pid=self.pid, children=self.children, comm=self.comm,
                              aggregate=self.aggregate, chain=self.chain, min_latency_ns=self.min_latency_ns,
                              task_storage=c.task_storage, sampling=self.sampling,
                              might_sleep=self.might_sleep, sleep_detect=self.sleep_detect, bpf_loop=c.bpf_loop,
                              kprobe_hooks=self.kprobe_hooks, lean_headers=c.lean_headers)

    def start(self) -> None:
        """Compile and load (unless load() already ran), then attach everything (`record`)."""
        if self.bpf is None:
            self.load()
        self.attach()

    def load(self, beside_compile=None, after_compile=None) -> None:
        """Compile and load the BPF program, calibrate, open the ring buffer.
        Nothing stays attached: see attach()/detach() (the daemon's windows).
        ``beside_compile``: called as the compile begins, once the memory
        the start-up no longer needs has gone back (a thread it starts would
        keep that from happening: mmntrace/heap.py); ``after_compile``: once
        the compile's memory has gone back, before the programs are loaded
        and verified; what it returns, if anything, is called once they are,
        before the calibration (which times our own probes: nothing of ours
        is to run beside it); its time is ``imports_s``."""
        kernel.require_recording(self.f)
        try:
            from bcc import BPF
        except ImportError as e:
            raise BpfLoadError(f"the bcc Python module is missing ({e}): install python3-bpfcc") from e

        builder = Builder(BPF, self.f, self._cflags, self.choices)
        t0 = time.monotonic()
        self.stale_kprobes_removed = remove_stale_kprobe_events()
        self._ksyms = KernelSymbols()
        self.timing["kallsyms_s"] = time.monotonic() - t0
        try:
            text = bpf_text()
            if self.backend == "fentry":
                self._calib_sym = fentry_calib_symbol(self._ksyms.by_name)
                self.kprobe_hooks = self.hook_refused is not None or not (self.hook_fentry and self._hooks_have_btf())
            if self.backend == "kprobe":
                # the kprobe backend reads nothing more from the kernel's BTF (its
                # answers are in the features): the parsed blob, ~12 MiB, is not
                # held beside clang's memory (BENCHMARKS.md, peak RSS)
                btfmod.release_vmlinux()
            # what reading kallsyms and BTF left free in the C heap goes back before
            # clang adds its own on top (the peak): 7 of the table's 16 MiB on the host
            give_back_memory()
            if beside_compile is not None:
                beside_compile()
            t0 = time.monotonic()
            self.bpf = builder.build(text)
        except Exception as e:
            raise BpfLoadError(f"compiling {BPF_SRC.name} failed: {str(e).splitlines()[0] if str(e) else e} "
                               "(MMNTRACE_DEBUG=1 shows everything the compiler and bcc printed)") from e
        self.timing["compile_s"] = time.monotonic() - t0
        give_back_memory()      # what clang freed: a daemon runs for days
        finish = after_compile() if after_compile is not None else None
        _debug(f"timing: {self.timing}")
        self._counters = Counters(self.bpf, self._tramp, mmap_arrays=getattr(self.f, "mmap_array", False))
        # entry kprobes that read their hook or callback from their link's cookie
        # where the program was compiled for it (codegen: MMNT_KPROBE_COOKIE)
        self._links = KprobeLinks(self.bpf, enabled=getattr(self.f, "kprobe_cookie", False))
        self._probes = Probes(self.bpf, self._tramp, self._ksyms, fentry=self.backend == "fentry",
                              callback_fentry=self.callback_fentry, hook_fentry=self.hook_fentry,
                              links=self._links, kprobe_hooks=self.kprobe_hooks)
        self._cbs = DriverCallbacks(self.bpf, self._probes, self._ksyms, self._hist, self._counters,
                                    hooks=self.hooks, selection=self.selection, drain=lambda: self._buffer.fill(0),
                                    chain=self.chained_hooks)
        try:
            t0 = time.monotonic()
            self._preload()
            self.timing["verify_s"] = time.monotonic() - t0
            if finish is not None:
                t0 = time.monotonic()
                finish()
                self.timing["imports_s"] = time.monotonic() - t0
            t0 = time.monotonic()
            self._probes.detach_all()
            self._calibrate()
            self._open_buffer()
            if self.kernel_hist:
                self._hist.map(self.bpf)
            self.timing["calibrate_s"] = time.monotonic() - t0
        except Exception as e:
            self.stop()
            raise BpfLoadError(f"loading the probes failed: {e}") from e

    def _hooks_have_btf(self) -> bool:
        """Every hook function this tracer probes has a BTF signature (what a
        trampoline is loaded on), as has getppid's syscall function (the
        calibration's hook then: calibrate.py)."""
        b = btfmod.load_vmlinux()
        syms = [sym for hook, sym, _name in self.f.hooks if hook in self.hooks]
        return (b is not None and self._calib_sym is not None and bool(syms)
                and all(b.func_signature(sym) is not None for sym in syms))

    def _preload(self) -> None:
        """Verify the programs the start will attach, on every CPU at once
        (mmntrace/preload.py); the sweep's iterators are kept for each sweep
        (the daemon sweeps at every window)."""
        self._iter_progs = quietly(preload.for_start, _debug)(self.bpf, self.f)

    @property
    def kernel_hist(self) -> bool:
        """Durations go to in-kernel histograms: --aggregate, --min-latency."""
        return self.aggregate or self.min_latency_ns is not None

    def attach(self) -> None:
        """Attach every hook, registration, might-sleep and known callback probe."""
        t1 = time.monotonic()
        known = self._cbs.attached()
        self._probes.records = []
        self._cbs.known = {}
        try:
            # registrations first, then the sweep of the subscribers that exist:
            # between the two, none can come and go unseen
            self._attach_module_load()
            if self.children:
                self._follow_children()
            self._attach_registration()
            self._sweep()
            self._attach_hooks()
            self._attach_chain_ends()
            if self.might_sleep:
                self._attach_sleepers()
            if self.sleep_detect == "switch":
                self._attach_sched_switch()
            for func, hook in known:      # callbacks found in an earlier window
                if func not in self._cbs.known:      # (the sweep may have probed it again)
                    self._cbs.attach(func, hook)
        except BpfLoadError:
            self.stop()
            raise
        except KprobeHooksMissing as e:
            # a hook function with BTF whose trampoline was refused all the same:
            # the program again, with the hooks' kprobe pair to fall back to
            _debug(f"hook trampoline refused ({e}): compiling the hooks' kprobe pair in")
            self.stop()
            self.hook_refused = str(e)
            self.load()
            return self.attach()
        except Exception as e:
            self.stop()
            raise BpfLoadError(f"attaching the probes failed: {e}") from e
        self.timing["attach_s"] = time.monotonic() - t1
        _debug(f"timing: {self.timing}")
        if self.backend == "fentry":
            # trampolines and programs got symbols as they attached: the table is
            # read again at the first lookup that needs them (an address in the
            # module area: ksyms.py), not on the way to --ready-file (2 s of every
            # start in the lab's guests). A hook's caller, in the kernel's own
            # text, and a callback, named as probed, never need them
            self._ksyms.mark_stale()

    def _follow_children(self) -> None:
        """The traced process in the table the pid filter reads, and the
        tracepoints that add the processes it forks and drop those freed."""
        self.bpf[b"filter_tgids"][ctypes.c_uint32(int(self.pid))] = ctypes.c_uint8(1)
        for name in ("sched_process_fork", "sched_process_free"):
            try:
                self._probes.raw_tracepoint("sched", name)
            except Exception as e:
                raise BpfLoadError(f"following the traced command's child processes needs the raw "
                                   f"tracepoint {name}, which did not attach: {e}") from e

    def _attach_sched_switch(self) -> None:
        """Real sleeps: sched_switch as a raw tracepoint where it carries
        prev_state (no perf record per context switch), else the perf tracepoint."""
        self._probes.tracepoint("sched", "sched_switch", raw=getattr(self.f, "raw_sched_switch", False))

    def _attach_module_load(self) -> None:
        """Module loads start a new generation of what the BPF side has seen
        (bpf/mmntrace.bpf.c module_loaded()): a driver reloaded at the same
        address gets its ops tables reported and its callbacks re-probed, with
        the calls before that counted untimed. Without it, only the half-second
        module check notices a reload, and the calls of a subscriber that came
        before it were lost."""
        self._cbs.load_events = self._probes.tracepoint(
            "module", "module_load", on_failure="a driver reloaded at the same address is noticed by a check every 0.5 s")

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
            raw, runs, self.sweep_unfinished = sweep.walk(self.bpf, SWEEP_ITREE_RUNS,
                                                          getattr(self.f, "iter_task_btf_id", None),
                                                          progs=self._iter_progs)
            self.timing["sweep_itree_runs"] = runs
        except Exception as e:      # subscribers are then found at their mm's first hook
            _debug(f"start-up sweep failed: {e}\n{getattr(e, 'log', '')}")
            self.timing["sweep_error"] = str(e)
            return
        raw = raw[:len(raw) - len(raw) % self._dtype.itemsize]
        self.swept = len(raw) // self._dtype.itemsize
        self._cbs.process(raw, sent=False)
        self.timing["sweep_s"] = time.monotonic() - t0

    def detach(self) -> None:
        """Detach every probe; the program stays loaded (no overhead) for the next attach()."""
        if self.bpf is not None:
            self._probes.detach_all()

    def set_sampling(self, n: int) -> None:
        """Trace 1 hook invocation in n (and its callbacks); 1 = all."""
        if not self.sampling:
            raise MmntraceError("this tracer was built without sampling (Tracer(sampling=True))")
        self.bpf[b"sampling"][ctypes.c_int(0)] = ctypes.c_uint32(max(1, int(n)))

    def reset_window(self) -> None:
        """Zero the in-kernel histograms, totals and drop counters."""
        self._hist.zero()
        self._counters.reset()

    def prog_fds(self) -> list[int]:
        """Every program loaded now: bcc's, and the fentry programs loaded per function."""
        if self.bpf is None:
            return []
        return [int(fn.fd) for fn in self.bpf.funcs.values()] + self._tramp.prog_fds()

    def run_time_ns(self) -> int | None:
        """Nanoseconds our programs ran (kernel.bpf_stats_enabled), those since
        closed included (the fentry programs of a window are closed at its end)."""
        vals = [v for v in (prog_counter(fd, "run_time_ns") for fd in self.prog_fds()) if v is not None]
        return sum(vals) + self._tramp.closed_run_ns if vals else None

    def _calibrate(self) -> None:
        """What the probe machinery itself adds, measured on getppid()
        (mmntrace/calibrate.py): its preempt_count, PREEMPT_RT context and cost."""
        c = Calibration(self.bpf, self._ksyms, self._tramp, backend=self.backend,
                        preempt_rt=self.f.preempt_rt, fentry_sym=self._calib_sym, modes=self._calibrated_modes(),
                        links=self._links, kprobe_hooks=self.kprobe_hooks)
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

    def _attach_hooks(self) -> None:
        n = 0
        for hook, sym, name in self.f.hooks:
            if hook not in self.hooks:
                continue
            # the kprobe pair (also the fallback from fentry) finds its hook by address
            for a in self._ksyms.by_name.get(sym, [])[:1]:
                for k in (a, a + 4):    # with IBT the probe sits after endbr64
                    self.bpf[b"hook_ip"][ctypes.c_uint64(k)] = ctypes.c_uint32(hook)
            n += self._probes.probe("hook", sym, name, None, "hk_entry", "hk_return", hook)
        if n == 0:
            raise BpfLoadError("no MMU-notifier hook function could be probed on this kernel")

    def _calibrated_modes(self) -> frozenset[bool]:
        """How the callbacks that run in the hot hooks are probed, for the
        calibration of their dispatch: True, entry probe only (chained), False,
        entry and exit. Release ops (once per process exit) take what is measured."""
        hot = set(self.hooks) - {kernel.HOOK_RELEASE}
        return frozenset(h in self.chained_hooks for h in hot) or frozenset({False})

    def _attach_chain_ends(self) -> None:
        """Chained interval-notifier calls (--aggregate): the release hook's last
        one ends where the core waits for SRCU readers (bpf/mmntrace.bpf.c,
        rel_sync), not at the hook's return, after the grace period."""
        if (kernel.HOOK_INTERVAL not in self.chained_hooks or kernel.HOOK_RELEASE not in self.hooks
                or "synchronize_srcu" not in self._ksyms.by_name):
            return
        self._probes.probe("chain_end", "synchronize_srcu", "release", None, "rel_sync", None)

    def _attach_registration(self) -> None:
        progs = {"__mmu_notifier_register": "reg_register", "mmu_notifier_unregister": "reg_unregister",
                 "mmu_interval_notifier_insert": "reg_insert", "mmu_interval_notifier_insert_locked": "reg_insert",
                 "mmu_interval_notifier_remove": "reg_remove"}
        for sym in self.f.registration:
            self._probes.probe("register", sym, None, None, progs[sym], None)

    def _attach_sleepers(self) -> None:
        table = self.bpf[b"sleeper_info"]
        for sym, gfp_arg in self.f.sleepers:
            addrs = self._ksyms.by_name.get(sym, [])
            for a in addrs[:1]:
                for k in (a, a + 4):  # with IBT the probe sits after endbr64
                    table[ctypes.c_uint64(k)] = table.Leaf(a, gfp_arg, 0)     # struct cbinfo
            self._probes.probe("sleeper", sym, None, None, "ms_entry", None)

    def _open_buffer(self) -> None:
        def lost(n):
            self._counters.perf_lost += n
        self._buffer = EventBuffer(self.bpf, self._dtype.itemsize, ringbuf=self.ringbuf, pages=self.ringbuf_pages,
                                   on_lost=lost)

    # -- running ---------------------------------------------------------------
    def watch(self, fd: int) -> bool:
        """Make :meth:`poll` return early when ``fd`` is readable (a signal's
        wakeup socket, a child's pidfd: mmntrace/wake.py). False where the
        buffer is polled by bcc (the perf buffer): poll's timeout is then the
        only way out of it."""
        return self._buffer.watch(fd) if self._buffer is not None else False

    def unwatch(self, fd: int) -> None:
        if self._buffer is not None:
            self._buffer.unwatch(fd)

    def woken(self) -> bool:
        """Did a watched fd wake :meth:`poll` since the last call?"""
        return self._buffer.woken() if self._buffer is not None else True

    def poll(self, timeout_ms: int = 100) -> bytes:
        """Raw records (concatenated struct mmnt_record) received since the last poll.
        New ops tables among them get their callbacks probed before returning."""
        if self.bpf is None:
            return b""
        self._buffer.fill(timeout_ms)
        # modules gone or back (at once after a module load: before the ops tables
        # it made the BPF side report again are handled)
        self._cbs.check_modules()
        raw = self._buffer.take()
        if raw:
            self._cbs.process(raw)
        return raw

    # -- queries -----------------------------------------------------------------
    def attached(self) -> list[dict]:
        """Every probe placed or tried, in order (mmntrace/attach.py Probes.records)."""
        return [dict(r) for r in self._probes.records] if self._probes else []

    def probe_state(self) -> list[tuple]:
        """(symbol, status) of every probe: what --ready-file follows, looked at
        after every poll (no copy of the records, as attached() makes)."""
        return [(r.get("symbol"), r.get("status")) for r in self._probes.records] if self._probes else []

    def drops(self, fresh: bool = True, untimed: dict | None = None) -> dict:
        """Drops by kind, and their total (mmntrace/losses.py). ``fresh=False``: a
        running session's periodic look, which may reuse the probe misses read
        up to MISSES_REFRESH_S ago. ``untimed``: :meth:`untimed` if the caller
        has just read it (it walks two maps)."""
        if self.bpf is None:
            if self._final:
                return dict(self._final["drops"])
            return drops_by_name([], perf_lost=0, untimed=0, kretprobe_missed=0, prog_missed=0)
        return self._counters.drops(sum((self.untimed() if untimed is None else untimed).values()), fresh=fresh)

    def ops_unsent(self) -> int:
        """Ops-table records lost to a full buffer, each table reported again
        later (bpf/discovery.h ops_unsent): metadata ``ops_records_lost``."""
        if self.bpf is None:
            return int(self._final.get("ops_unsent", 0)) if self._final else 0
        return self._counters.ops_unsent()

    def lost(self, fresh: bool = True) -> int:
        """Records lost: the drops' total less the calls counted untimed
        (losses.lost), without reading the untimed counts (the overhead guard's
        and the status line's look, every second or two)."""
        if self.bpf is None:
            return lost(self.drops(fresh))
        return lost(self._counters.drops(0, fresh=fresh))

    def untimed(self, fresh: bool = True) -> dict[int, int]:
        """callback address -> its calls counted but not timed (made before its
        probe was attached: a subscriber that registered and was invalidated at once,
        or unregistered at once, mmu_notifier_unregister() calling its release)."""
        if self.bpf is None:
            return dict(self._final.get("untimed", {})) if self._final else {}
        return self._counters.untimed(self._cbs.unselected, fresh=fresh)

    def callback_symbol(self, addr: int) -> str:
        """A driver callback's name as it was when probed: records still in flight
        when its module unloads are named right, not after whatever is there now.
        One not probed yet (its calls counted untimed before its ops record was
        read) is a function's own address: found exactly in a table gone stale,
        without reading all of /proc/kallsyms again (2 s in the lab's guest,
        during the first calls of a new subscriber)."""
        name = self._cbs.name(addr) if self._cbs else None
        if name:
            return name
        hit = self._ksyms.lookup(addr, exact=True) if self._ksyms else None
        return _sym_text(hit) if hit is not None else self.ksym(addr)

    def ksym(self, addr: int) -> str:
        hit = self._ksyms.lookup(addr) if self._ksyms else None
        if hit is None:
            return f"{addr:#x}"
        return _sym_text(hit)

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
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None
        try:
            try:
                self._final = dict(drops=self.drops(), hist=self.histograms(), totals=self.totals(),
                                   via=self.via(), untimed=self.untimed(), ops_unsent=self.ops_unsent())
                for k, v in self.bpf[b"stack_by_id"].items():   # readable after unload
                    self._stack_ips.setdefault(k.value, [a for a in v.ip if a])
            except Exception:
                self._final = None
            self._hist.close()
            self._counters.close()
            self._tramp.close()
            for fd in self._iter_progs.values():
                os.close(fd)
            self._iter_progs = {}
            if self._links is not None:
                self._links.detach_all()
            self.bpf.cleanup()
        finally:
            self.bpf = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def _sym_text(hit: tuple) -> str:
    """(name, module, offset) -> "name+0x10 [module]"."""
    name, mod, off = hit
    s = name if off == 0 else f"{name}+{off:#x}"
    return f"{s} [{mod}]" if mod else s
