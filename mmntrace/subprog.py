"""bpf_loop() callbacks for programs that bcc compiles one by one.

The interval-tree walks (bpf/discovery.h: ``count_itree`` and its steps,
``rb_next_of``) run in ``bpf_loop()`` callbacks where the kernel has the
helper (5.17+; the compile flag MMNT_BPF_LOOP): as bounded loops the
verifier unrolled them at every node visited, most of a second per program
in the lab's guests.

bcc 0.26 links no subprograms: each program is one block of instructions,
and a function's address becomes a plain 0. So each callback is compiled as
a function of its own (:data:`CALLBACKS`), and a program passes it as a
64-bit placeholder (bpf/mmntrace.h MMNT_LOOP_*_IMM). :func:`link` appends
the callbacks a program uses (and those they use) to its instructions and
turns each placeholder load into a ``BPF_PSEUDO_FUNC`` reference, as libbpf
does for a callback in its ``.text``: ``src_reg`` 4 and the offset from the
next instruction. A program without a placeholder is returned unchanged.
The kernel loads a program with subprograms only with BTF func_info:
:func:`load_args` gives it, over a small BTF object of static functions
(bpfsys.func_btf).
"""

from __future__ import annotations

import struct
import threading
from typing import Callable

from . import bpfsys
from .errors import BpfLoadError
from .layout import header

_D = header().defines
#: the callbacks compiled as functions of their own (subprograms, never loaded
#: alone), and the placeholder a program loads for each
CALLBACKS = {"mmnt_rb_step": _D["MMNT_LOOP_RB_IMM"], "mmnt_itree_step": _D["MMNT_LOOP_ITREE_IMM"]}
_BY_IMM = {imm: name for name, imm in CALLBACKS.items()}
_LD_IMM64 = 0x18        # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_PSEUDO_FUNC = 4        # BPF_PSEUDO_FUNC: the immediate is a subprogram's offset


def imm_loads(insns: bytes) -> list[tuple[int, int]]:
    """(byte offset, value) of each plain 64-bit immediate load whose value fits
    31 bits (src_reg 0: not a map or function reference; upper half 0): where
    the programs' placeholders are (these callbacks', and the fentry copies'
    constants: :func:`with_imm`)."""
    out = []
    for i in range(0, len(insns) - 15, 8):
        if insns[i] == _LD_IMM64 and insns[i + 1] >> 4 == 0 and insns[i + 8] == 0:
            lo, hi = struct.unpack_from("<iI", insns, i + 4)
            if hi == 0 and struct.unpack_from("<i", insns, i + 12)[0] == 0:
                out.append((i, lo))
    return out


#: bpf/mmntrace.h: read_pc()'s placeholder for preempt_count's per-CPU variable
PC_VAR_IMM = header().defines["MMNT_PC_VAR_IMM"]
BPF_PSEUDO_BTF_ID = 3       # an ld_imm64's src_reg: imm is a kernel variable's BTF id (5.10)


def with_imm(insns: bytes, placeholder: int, value: int, what: str) -> bytes:
    """``insns`` with every 64-bit immediate load of ``placeholder`` (not a
    map reference: src_reg 0, upper half 0) set to ``value`` (64 bits): the
    verifier then knows it. Every copy the compiler made is set (it may
    duplicate an asm statement along two paths); none is an error."""
    b = bytearray(insns)
    at = [i for i, v in imm_loads(insns) if v == placeholder]
    if not at:
        raise BpfLoadError(f"the program has no place for its {what} "
                           "(bpf/mmntrace.bpf.c and the compiler disagree)")
    lo, hi = value & 0xffffffff, (value >> 32) & 0xffffffff
    for i in at:
        struct.pack_into("<I", b, i + 4, lo)
        struct.pack_into("<I", b, i + 12, hi)
    return bytes(b)


def percpu_var_id(features) -> int | None:
    """The BTF id every program's preempt_count read refers to (read_pc() in
    bpf/context.h, compiled in where codegen defines MMNT_PC_VAR_OFF): the
    per-CPU variable the kernel probe found (Features.preempt_count_var), or
    None without one. The one place both loaders take it from: bcc's kprobe
    programs (build.py) and the fentry backend's copies (fentry.py)."""
    var = getattr(features, "preempt_count_var", None)
    return var[0] if var else None


def with_percpu_var(insns: bytes, btf_id: int) -> bytes:
    """``insns`` with each load of the preempt_count placeholder (read_pc() in
    bpf/context.h) made a reference to vmlinux's variable ``btf_id`` (src_reg
    BPF_PSEUDO_BTF_ID, the second half's imm 0: vmlinux): bpf_this_cpu_ptr()
    then gives this CPU's copy of it. Unchanged where there is none (an exit
    program reads no count)."""
    b = bytearray(insns)
    for i, v in imm_loads(insns):
        if v == PC_VAR_IMM:
            b[i + 1] = (BPF_PSEUDO_BTF_ID << 4) | (b[i + 1] & 0x0f)
            struct.pack_into("<i", b, i + 4, btf_id)
    return bytes(b)


def sites(insns: bytes) -> list[tuple[int, str]]:
    """(byte offset, callback) of each load of a callback's placeholder."""
    return [(i, _BY_IMM[v]) for i, v in imm_loads(insns) if v in _BY_IMM]


def uses_callback(insns: bytes) -> bool:
    return bool(sites(insns))


def link(insns: bytes, dump: Callable[[str], bytes]) -> bytes:
    """``insns`` with every callback it passes appended as a subprogram (and
    those the callbacks pass, once each), every placeholder load made a
    reference to its callback; unchanged where there is none. ``dump``: a
    callback's instructions by name."""
    if not sites(insns):
        return insns
    b = bytearray(insns)
    start: dict[str, int] = {}          # callback -> its first instruction
    scan = 0
    while scan < len(b):
        end = len(b)
        for _off, name in sites(bytes(b[scan:end])):
            if name not in start:
                cb = dump(name)
                if len(cb) % 8 or not cb:
                    raise BpfLoadError(f"the bpf_loop callback {name} is not whole instructions")
                start[name] = len(b) // 8
                b += cb
        scan = end
    for off, name in sites(bytes(b)):
        b[off + 1] = (b[off + 1] & 0x0f) | (_PSEUDO_FUNC << 4)
        struct.pack_into("<i", b, off + 4, start[name] - (off // 8 + 1))
    out = Linked(b)
    out.funcs = tuple(sorted((at, name) for name, at in start.items()))
    return out


def linked(dump, name: str) -> bytes:
    """Function ``name``'s instructions, taken by ``dump`` (bcc's
    ``BPF.dump_func``, by bytes name), with its callbacks linked in."""
    return link(dump(name.encode()), lambda cb: dump(cb.encode()))


_btf_fd: int | None = None
_btf_lock = threading.Lock()        # preload.py's threads may load the first linked program
_BTF_NAMES = ("mmnt_prog", *CALLBACKS)      # BTF ids 3, 4...: bpfsys.func_btf


def load_args(insns: bytes) -> dict:
    """What a program that :func:`link` gave callbacks must be loaded with
    (bpfsys.load_prog's prog_btf_fd and func_info): the main function at
    instruction 0, each callback where link() put it. Nothing for a program
    without callbacks."""
    global _btf_fd
    funcs = getattr(insns, "funcs", ())
    if not funcs:
        if any(insns[i] == _LD_IMM64 and insns[i + 1] >> 4 == _PSEUDO_FUNC for i in range(0, len(insns) - 15, 8)):
            raise BpfLoadError("a program refers to a subprogram that was not linked here")
        return {}
    with _btf_lock:
        if _btf_fd is None:     # one small object for the process's programs
            _btf_fd = bpfsys.func_btf(_BTF_NAMES)
    return {"prog_btf_fd": _btf_fd, "func_info": [(0, 3)] + [(at, 3 + _BTF_NAMES.index(n)) for at, n in funcs]}


class Linked(bytes):
    """A program's instructions with its callbacks appended: ``funcs`` says
    where each begins ((instruction, name), in order)."""
    funcs: tuple = ()


def load_func(bpf, func_name, prog_type: int, device=None, attach_type: int = -1, pc_var: int | None = None):
    """For bcc's ``BPF.load_func`` (mmntrace/build.py's subclass): a program
    of ``bpf`` that passes a callback, loaded with it linked in, or one that
    reads preempt_count through its per-CPU variable (``pc_var``: its BTF id;
    bpf/context.h read_pc, MMNT_PC_VAR_OFF), loaded with the reference made
    (:func:`with_percpu_var`); either kept by bcc by name as its own (its
    attach calls find it; its cleanup closes it). None where bcc's own load is
    the one to make: neither, a program it holds already, a device."""
    name = func_name if isinstance(func_name, bytes) else func_name.encode()
    if name in bpf.funcs or device is not None:
        return None
    insns = linked(bpf.dump_func, name.decode())
    patched = with_percpu_var(insns, pc_var) if pc_var is not None else insns
    if patched != insns:        # it reads preempt_count: bcc's load cannot make the reference
        funcs, insns = getattr(insns, "funcs", ()), Linked(patched)
        insns.funcs = funcs
    if not isinstance(insns, Linked):
        return None
    from bcc import BPF, lib
    try:
        fd = bpfsys.load_prog(insns, name=name.decode(), prog_type=prog_type, attach=max(attach_type, 0),
                              kern_version=lib.bpf_module_kern_version(bpf.module), **load_args(insns))
    except bpfsys.BpfSysError as e:      # as bcc says it, with the verifier's words
        raise Exception(f"Failed to load BPF program {name!r}: {e.strerror}\n{e.log}") from e
    bpf.funcs[name] = BPF.Function(bpf, name, fd)
    return bpf.funcs[name]
