"""The start-up sweep: every subscriber that exists when the tracer starts.

Callbacks are probed as their ops tables are reported (bpf/discovery.h). A
subscriber that registered before the tracer started has its table reported
here, at once, rather than at its mm's first hook: two BPF task iterators
(bpf_iter_task, 5.8+) walk each process's regular subscriptions
(``iter_subs``) and interval notifiers (``iter_itree``), writing one OPS
record per table. One run of the interval walk visits 32 notifiers per mm
(the verifier walks each of them when it loads the program: 128 took 4.3 s of
every start in the lab's 6.12 guest);
where a tree is longer, the next run goes on where it stopped (the
``itree_resume`` map), up to ``max_runs``.
"""

from __future__ import annotations

import ctypes
import os

from . import bpfsys
from . import btf as btfmod


def walk(bpf, max_runs: int, btf_id: int | None = None) -> tuple[bytes, int, int]:
    """Run the iterators of a loaded program (bcc's BPF object): (the records
    they wrote, runs of the interval walk, mms whose tree it did not finish).
    ``btf_id``: bpf_iter_task's (kernel.Features; else read from BTF here).
    Raises where the kernel has no task iterator or refuses one."""
    tid = btf_id
    if tid is None:
        b = btfmod.load_vmlinux()
        tid = b.find("bpf_iter_task", (btfmod.KIND_FUNC,)) if b is not None else None
    if tid is None:
        raise OSError("no bpf_iter_task in BTF")
    fds: list[int] = []
    raw = b""
    resume, resuming = bpf[b"itree_resume"], bpf[b"itree_resuming"]
    try:
        resume.clear()              # an earlier window's sweep (the daemon) left nothing to go on from
        resuming[ctypes.c_int(0)] = ctypes.c_uint32(0)
        for fn in (b"iter_subs", b"iter_itree"):
            prog = bpfsys.load_tracing(bpf.dump_func(fn), name=fn.decode(), attach=bpfsys.TRACE_ITER,
                                       btf_obj_fd=0, btf_id=tid)
            fds.append(prog)
            fds.append(bpfsys.iter_link(prog))
            raw += bpfsys.iter_read(fds[-1])
        # interval trees longer than one run visits: go on where each stopped
        runs = 1
        try:
            while len(resume) and runs < max_runs:
                resuming[ctypes.c_int(0)] = ctypes.c_uint32(1)
                raw += bpfsys.iter_read(fds[-1])
                runs += 1
        finally:
            resuming[ctypes.c_int(0)] = ctypes.c_uint32(0)
        return raw, runs, len(resume)
    finally:
        for x in reversed(fds):
            os.close(x)
