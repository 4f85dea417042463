"""The BPF program as this kernel and these options want it: its text and its compile flags.

Pure functions of the kernel's features (mmntrace/kernel.py) and the tracer's
options, testable without a kernel: what gets compiled is decided here, what
is loaded and attached in mmntrace/tracer.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from . import hooks as hookmod

BPF_DIR = Path(__file__).resolve().parent / "bpf"     # package data: the BPF C sources
BPF_SRC = BPF_DIR / "mmntrace.bpf.c"

#: The program is optimized once, by bcc. clang runs its own -O2 pipeline as
#: it emits the module, and bcc then runs its -O3 one over the result
#: (BPFModule::run_pass_manager, with the always-inliner that inlines every
#: function into each program): the first pass is redundant. Without it, in
#: a 6.1 lab guest, the daemon's program compiled in 9.0 s instead of 11.8
#: (three runs each, alternating) into the same programs, within 5 of 4,734
#: instructions. A clang that does not know the flag: see
#: :func:`without_optimize_once`.
OPTIMIZE_ONCE = ("-Xclang", "-disable-llvm-passes")


def without_optimize_once(flags: list[str]) -> list[str]:
    """``flags`` less :data:`OPTIMIZE_ONCE` (the compile's fallback)."""
    n = len(OPTIMIZE_ONCE)
    for i in range(len(flags) - n + 1):
        if tuple(flags[i:i + n]) == OPTIMIZE_ONCE:
            return flags[:i] + flags[i + n:]
    return list(flags)


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


#: C type of a struct pt_regs member by its size (bytes)
_SCALAR = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long"}


def pt_regs_members(size: int, fields) -> str:
    """The body of a ``struct pt_regs`` whose members sit at the offsets BTF
    gives (kernel.Features.lean_headers): an anonymous union of one padded
    anonymous struct per member (members that share bytes, such as x86's cs
    and csx since FRED, stay apart) and of the struct's size in bytes."""
    parts = []
    for name, off, esize, count in fields:
        decl = f"{_SCALAR[esize]} {name}" + (f"[{count}]" if count else "")
        pad = f"char __mmnt_pad_{name}[{off}]; " if off else ""
        parts.append(f"struct {{ {pad}{decl}; }};")
    parts.append(f"char __mmnt_size[{size}];")
    return "union { " + " ".join(parts) + " };"


def lean_header_flags(lean) -> list[str]:
    """The flags that leave kernel.LEAN_SKIPPED's headers out of a compile
    (each one's include guard defined, so that its #include reads nothing),
    and give the program what it took from them: struct pt_regs's members
    from BTF (bpf/mmntrace.bpf.c declares it with MMNT_PT_REGS_MEMBERS), the
    page size. [] where the kernel does not allow it (``lean``: None)."""
    if not lean:
        return []
    guards, (size, fields), page = lean
    if not all(f[2] in _SCALAR for f in fields):
        return []
    return ([f"-D{g}" for g in guards]
            + ["-DMMNT_LEAN_HEADERS", f"-DPAGE_SIZE={page}", f"-DMMNT_PT_REGS_MEMBERS={pt_regs_members(size, fields)}"])


def cflags(f, *, backend: str, ringbuf: bool, ringbuf_pages: int, layout: str, pid: int | None = None,
           children: bool = False, comm: str | None = None, aggregate: bool = False, chain: bool = False,
           min_latency_ns: int | None = None, task_storage: bool = True, sampling: bool = False,
           might_sleep: bool = False, sleep_detect: str = "count", self_tgid: int | None = None,
           machine: str | None = None, bpf_loop: bool | None = None, kprobe_hooks: bool = True,
           lean_headers: bool = True) -> list[str]:
    """The compiler flags (-D...) of the program for kernel features ``f``
    (kernel.Features) and the tracer's options (mmntrace.tracer.Tracer's
    arguments, resolved: ``backend`` kprobe or fentry, ``layout`` btf or
    headers). ``self_tgid``: the tracer's own process, whose calls are not
    traced (default: this one); ``machine``: os.uname().machine; ``bpf_loop``:
    False compiles the interval walks as bounded loops where the kernel has the
    helper (its verifier refused the callbacks; default: ``f.bpf_loop``);
    ``kprobe_hooks``: False leaves out the hooks' kprobe pair (fentry backend,
    every hook function with BTF: their trampolines serve them);
    ``lean_headers``: False includes every header bcc and the program name
    (the fallback where the lean compile fails: :func:`lean_header_flags`)."""
    fl = ["-Wno-duplicate-decl-specifier", "-Wno-ignored-attributes", "-Wno-unknown-warning-option",
          *OPTIMIZE_ONCE, f"-I{BPF_DIR}", f"-DMMNT_RINGBUF={1 if ringbuf else 0}",
          f"-DMMNT_RINGBUF_PAGES={ringbuf_pages}", f"-DMMNT_SELF_TGID={self_tgid if self_tgid is not None else os.getpid()}"]
    if (machine or os.uname().machine) == "aarch64":
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
    if getattr(f, "mmap_array", False):
        fl.append("-DMMNT_MMAP_ARRAYS")     # drops and walk_gen read by mmap, no bpf() call
    if getattr(f, "bpf_loop", False) if bpf_loop is None else bpf_loop:
        fl.append("-DMMNT_BPF_LOOP")        # the interval walk's steps in a bpf_loop() callback (mmntrace/subprog.py)
    if getattr(f, "probe_read_kernel", False):
        fl.append("-DMMNT_PROBE_READ_KERNEL")   # the helper's own name, whatever bcc guessed (mmntrace/nokallsyms.py)
    if getattr(f, "kprobe_cookie", False):
        fl.append("-DMMNT_KPROBE_COOKIE")   # hk_entry/cb_entry read their link's cookie (attach.KprobeLinks)
    fl += [f"-D{d}" for d in hookmod.op_defines(f.ops)]     # the ops members this kernel has
    if f.gfp_direct_reclaim is not None:
        fl.append(f"-DMMNT_GFP_DIRECT_RECLAIM={f.gfp_direct_reclaim:#x}ULL")
    if layout == "btf":
        fl.append("-DMMNT_BTF_LAYOUT")
        fl += [f"-DMMNT_L_{k}={v}" for k, v in f.layout]
        if lean_headers:
            fl += lean_header_flags(getattr(f, "lean_headers", None))
    if pid is not None:
        fl.append(f"-DMMNT_FILTER_PID={int(pid)}")
        if children:
            fl.append("-DMMNT_FILTER_TREE")
    if comm:
        c = comm[:15].replace("\\", "\\\\").replace('"', '\\"')
        fl.append(f'-DMMNT_FILTER_COMM="{c}"')
    if aggregate:
        fl.append("-DMMNT_AGGREGATE")
    if chain:           # callbacks by entry probes only (bpf/mmntrace.bpf.c; callbacks.chained_hooks)
        fl.append("-DMMNT_CHAIN")
    if min_latency_ns is not None:
        fl.append(f"-DMMNT_MIN_LAT_NS={min_latency_ns}ULL")
    if task_storage:
        fl.append("-DMMNT_TASK_STORAGE")
    if sampling:
        fl.append("-DMMNT_SAMPLING")
    # only the programs this tracer can attach are compiled (each inlines
    # the bodies: seconds of compile and tens of MiB of clang per flavour)
    if backend != "fentry" or kprobe_hooks:
        fl.append("-DMMNT_KPROBE_HOOKS")
    if backend == "fentry":
        fl.append("-DMMNT_FENTRY")
    if getattr(f, "preempt_count_var", None):
        # every program reads preempt_count through the per-CPU variable
        # (read_pc(); subprog.with_percpu_var() makes the reference as each
        # is loaded: fentry.py, subprog.load_func)
        fl.append(f"-DMMNT_PC_VAR_OFF={f.preempt_count_var[1]}")
    if might_sleep:
        fl.append("-DMMNT_MIGHT_SLEEP")
    if sleep_detect == "count":
        fl.append("-DMMNT_SLEEP_COUNT")
    return fl
