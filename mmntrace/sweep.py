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
from . import subprog
from . import btf as btfmod


#: the two iterator programs, in the order they run
ITERS = ("iter_subs", "iter_itree")


def task_iter_btf_id(btf_id: int | None = None) -> int:
    """bpf_iter_task's BTF id (``btf_id`` when the features have it)."""
    if btf_id is None:
        b = btfmod.load_vmlinux()
        btf_id = b.find("bpf_iter_task", (btfmod.KIND_FUNC,)) if b is not None else None
    if btf_id is None:
        raise OSError("no bpf_iter_task in BTF")
    return btf_id


def load(bpf, name: str, btf_id: int) -> int:
    """Load iterator ``name`` of bcc's compiled module ``bpf``; its fd."""
    insns = subprog.linked(bpf.dump_func, name)
    return bpfsys.load_tracing(insns, name=name, attach=bpfsys.TRACE_ITER, btf_obj_fd=0, btf_id=btf_id,
                               **subprog.load_args(insns))


def walk(bpf, max_runs: int, btf_id: int | None = None, progs: dict[str, int] | None = None
         ) -> tuple[bytes, int, int]:
    """Run the iterators of a loaded program (bcc's BPF object): (the records
    they wrote, runs of the interval walk, mms whose tree it did not finish).
    ``btf_id``: bpf_iter_task's (kernel.Features; else read from BTF here).
    ``progs``: the iterators already loaded (name -> fd, mmntrace/preload.py;
    they stay open), else they are loaded here and closed after the walk.
    Raises where the kernel has no task iterator or refuses one."""
    progs = dict(progs or {})
    fds: list[int] = []
    raw = b""
    resume, resuming = bpf[b"itree_resume"], bpf[b"itree_resuming"]
    try:
        resume.clear()              # an earlier window's sweep (the daemon) left nothing to go on from
        resuming[ctypes.c_int(0)] = ctypes.c_uint32(0)
        for fn in ITERS:
            prog = progs.get(fn)
            if prog is None:
                prog = load(bpf, fn, task_iter_btf_id(btf_id))
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
