"""Verifying a compiled program's functions side by side, before they are needed.

The kernel's verifier walks each BPF program as it is loaded, on the loading
thread's CPU: in the lab's 6.1 guest ``hk_entry`` took 0.9 s of it,
``hk_return`` 0.75 and the start-up sweep's interval iterator 0.7 (before
their interval walks became bpf_loop() callbacks: mmntrace/subprog.py), one
after the other, most of the time between the compile's end and
``--ready-file``. A bpf(2) call made through ctypes leaves the GIL, so loads
made from threads verify on as many CPUs at once.

:func:`preload` loads every program of bcc's module that a start attaches
through bcc (kprobes, tracepoints: bcc then keeps each by name, and the
attach finds it loaded), and any further loads it is given (the sweep's
iterators, mmntrace/sweep.py), the longest first, on one thread per CPU.
It is best effort: a program the kernel refuses here is loaded again where it
is attached, which says why. The fentry backend's programs are left out:
fentry.py loads a copy of them per function it probes.

Measured in the 6.1 guest (the daemon's configuration, before the callbacks):
the loads, calibration, sweep and attach took 4.35-4.40 s one by one and 2.8 s
with the guest's two CPUs on two host threads (MMNTRACE_LAB_TCG_THREAD=multi).
The lab's default runs a guest on one host thread, where threads buy nothing
(4.4 s either way): what a machine with CPUs to spare gains is not what the
lab's benchmark can show.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable

from . import subprog, sweep
from .attach import FENTRY_PROGS
from .quiet import debug

# bcc's program types (bcc/__init__.py BPF.KPROBE, TRACEPOINT, RAW_TRACEPOINT)
KPROBE, TRACEPOINT, RAW_TRACEPOINT = 2, 5, 17


def prog_type(name: str) -> int:
    """The bcc program type the tracer attaches function ``name`` as (its
    prefix says: bcc's own convention for tracepoint programs)."""
    if name.startswith("raw_tracepoint__"):
        return RAW_TRACEPOINT
    if name.startswith("tracepoint__"):
        return TRACEPOINT
    return KPROBE


def functions(bpf) -> list[tuple[str, int]]:
    """(name, instructions) of every function in bcc's compiled module."""
    from bcc import lib
    out = []
    for i in range(lib.bpf_num_functions(bpf.module)):
        name = lib.bpf_function_name(bpf.module, i)
        out.append((name.decode(), lib.bpf_function_size(bpf.module, name) // 8))
    return out


def workers() -> int:
    """Threads to verify on: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run(jobs: list[tuple[str, int, Callable[[], object]]], n: int | None = None) -> dict[str, object]:
    """Run ``jobs`` ((name, size, call)) on ``n`` threads, the largest first;
    each name's result, or the exception it raised."""
    out: dict[str, object] = {}
    jobs = sorted(jobs, key=lambda j: -j[1])
    n = min(n or workers(), len(jobs))
    if n <= 1:
        for name, _size, call in jobs:
            try:
                out[name] = call()
            except Exception as e:      # noqa: BLE001 - best effort, reported by the caller
                out[name] = e
        return out
    with concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="mmntrace-verify") as pool:
        futs = {name: pool.submit(call) for name, _size, call in jobs}
        for name, f in futs.items():
            try:
                out[name] = f.result()
            except Exception as e:      # noqa: BLE001
                out[name] = e
    return out


def preload(bpf, skip=(), extra: list[tuple[str, int, Callable[[], object]]] = (),
            n: int | None = None, funcs: list[tuple[str, int]] | None = None) -> dict[str, object]:
    """Load (verify) bcc's programs of ``bpf`` except those named in ``skip``,
    and run the ``extra`` loads with them; what each gave (a bcc Function, an
    fd, or the exception). Failures are left for the attach to report.
    ``funcs``: :func:`functions` of ``bpf``, where the caller has them."""
    loaded = getattr(bpf, "funcs", {})
    jobs = [(name, size, (lambda nm=name: bpf.load_func(nm.encode(), prog_type(nm))))
            for name, size in (functions(bpf) if funcs is None else funcs)
            if name not in skip and name.encode() not in loaded]
    out = run(jobs + list(extra), n)
    bad = {k: v for k, v in out.items() if isinstance(v, Exception)}
    if bad:
        debug("preload: not loaded here (loaded again where attached): "
              + "; ".join(f"{k}: {str(v).splitlines()[0] if str(v) else type(v).__name__}" for k, v in bad.items()))
    return out


#: loaded elsewhere: the fentry backend's programs (a copy per function,
#: mmntrace/fentry.py), the sweep's iterators (below) and the callbacks
#: (subprograms of the programs that pass them)
NOT_BCCS = frozenset({p for progs in FENTRY_PROGS.values() for p in progs if p} | {"calib_fentry", *sweep.ITERS,
                                                                                     *subprog.CALLBACKS})


def for_start(bpf, features) -> dict[str, int]:
    """Preload what a tracer's start attaches (bcc's programs of ``bpf``, and
    the sweep's iterators where ``features`` has task iterators); the
    iterators' fds by name, for the sweeps (the caller closes them)."""
    extra = []
    funcs = functions(bpf)
    sizes = dict(funcs)
    if getattr(features, "task_iter", False) and set(sweep.ITERS) <= set(sizes):
        try:
            tid = sweep.task_iter_btf_id(getattr(features, "iter_task_btf_id", None))
            extra = [(fn, sizes[fn], (lambda fn=fn: sweep.load(bpf, fn, tid))) for fn in sweep.ITERS]
        except OSError as e:
            debug(f"preload: no sweep iterators: {e}")
    got = preload(bpf, skip=NOT_BCCS, extra=extra, funcs=funcs)
    return {fn: fd for fn, fd in got.items() if fn in sweep.ITERS and isinstance(fd, int)}
