"""bpf_loop() callbacks for programs that bcc compiles one by one.

The interval-tree walk (bpf/discovery.h, ``rb_next_of``) takes its steps in a
``bpf_loop()`` callback where the kernel has the helper (5.17+; the compile
flag MMNT_BPF_LOOP): as bounded loops the verifier unrolled them at every
node visited, most of a second per program in the lab's guests.

bcc 0.26 links no subprograms: each program is one block of instructions,
and a function's address becomes a plain 0. So the callback is compiled as a
function of its own (``mmnt_rb_step``), and a program passes it as a
64-bit placeholder (MMNT_LOOP_FN_IMM, bpf/mmntrace.h). :func:`link` appends
the callback's instructions to the program's and turns each placeholder load
into a ``BPF_PSEUDO_FUNC`` reference to them, as libbpf does for a callback
in its ``.text``: ``src_reg`` 4 and the offset from the next instruction.
A program without the placeholder is returned unchanged. The kernel loads a
program with subprograms only with BTF func_info: :func:`load_args` gives
it, over a small BTF object of two static functions (bpfsys.func_btf).
"""

from __future__ import annotations

import struct

from . import bpfsys
from .errors import BpfLoadError
from .layout import header

LOOP_FN_IMM = header().defines["MMNT_LOOP_FN_IMM"]
#: the callbacks compiled as functions of their own: subprograms, never loaded alone
CALLBACKS = ("mmnt_rb_step",)
_LD_IMM64 = 0x18        # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_PSEUDO_FUNC = 4        # BPF_PSEUDO_FUNC: the immediate is a subprogram's offset


def sites(insns: bytes, placeholder: int = LOOP_FN_IMM) -> list[int]:
    """Byte offsets of the 64-bit immediate loads of ``placeholder`` (not a map
    reference: src_reg 0, upper half 0)."""
    return [i for i in range(0, len(insns) - 15, 8)
            if insns[i] == _LD_IMM64 and insns[i + 1] >> 4 == 0
            and struct.unpack_from("<iI", insns, i + 4) == (placeholder, 0) and insns[i + 8] == 0
            and struct.unpack_from("<i", insns, i + 12)[0] == 0]


def link(insns: bytes, callback: bytes) -> bytes:
    """``insns`` with ``callback`` appended as a subprogram and every placeholder
    load made a reference to it (unchanged where there is none)."""
    at = sites(insns)
    if not at:
        return insns
    if len(insns) % 8 or len(callback) % 8 or not callback:
        raise BpfLoadError("a program or its bpf_loop callback is not whole instructions")
    n = len(insns) // 8              # the callback's first instruction
    b = bytearray(insns) + callback
    for i in at:
        b[i + 1] = (b[i + 1] & 0x0f) | (_PSEUDO_FUNC << 4)
        struct.pack_into("<i", b, i + 4, n - (i // 8 + 1))
    return bytes(b)


def uses_callback(insns: bytes) -> bool:
    return bool(sites(insns))


def linked(dump, name: str) -> bytes:
    """Function ``name``'s instructions, taken by ``dump`` (bcc's
    ``BPF.dump_func``, by bytes name), with its callback linked in."""
    insns = dump(name.encode())
    if not sites(insns):
        return insns
    return link(insns, dump(CALLBACKS[0].encode()))


_btf_fd: int | None = None


def load_args(insns: bytes) -> dict:
    """What a program must be loaded with (bpfsys.load_prog's prog_btf_fd and
    func_info) where :func:`link` gave it a callback: the main function at
    instruction 0 and the callback where its references point. Nothing for
    a program without one."""
    global _btf_fd
    refs = [i for i in range(0, len(insns) - 15, 8) if insns[i] == _LD_IMM64 and insns[i + 1] >> 4 == _PSEUDO_FUNC]
    if not refs:
        return {}
    at = {i // 8 + 1 + struct.unpack_from("<i", insns, i + 4)[0] for i in refs}
    if len(at) != 1:
        raise BpfLoadError("a program refers to more than one bpf_loop callback")
    if _btf_fd is None:         # one small object for the process's programs
        _btf_fd = bpfsys.func_btf(("mmnt_prog", *CALLBACKS))
    return {"prog_btf_fd": _btf_fd, "func_info": [(0, 3), (at.pop(), 4)]}
