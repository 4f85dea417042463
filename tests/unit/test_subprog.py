"""mmntrace/subprog.py: a bpf_loop() callback linked into a program bcc compiled alone."""

import struct

import pytest

from mmntrace import subprog
from mmntrace.errors import BpfLoadError


def insn(op, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", op, dst | src << 4, off, imm)


def ld_imm64(dst, value, src=0):
    return insn(0x18, dst, src, 0, value & 0xffffffff) + insn(0, 0, 0, 0, (value >> 32) & 0xffffffff)


EXIT, MOV0 = insn(0x95), insn(0xb7, 0, 0, 0, 0)
CALL_LOOP = insn(0x85, 0, 0, 0, 181)
MAP_FD = ld_imm64(1, subprog.LOOP_FN_IMM, src=1)       # a map reference with the same number: not a site


def test_placeholders_become_references_to_the_appended_callback():
    prog = MOV0 + ld_imm64(2, subprog.LOOP_FN_IMM) + CALL_LOOP + ld_imm64(2, subprog.LOOP_FN_IMM) + CALL_LOOP + EXIT
    cb = insn(0xb7, 0, 0, 0, 1) + EXIT
    out = subprog.link(prog, cb)
    n = len(prog) // 8
    assert out[len(prog):] == cb and len(out) == len(prog) + len(cb)
    for at in (1, 4):                                   # instruction indexes of the two loads
        op, regs, _off, imm = struct.unpack_from("<BBhi", out, at * 8)
        assert op == 0x18 and regs >> 4 == 4 and regs & 0xf == 2      # BPF_PSEUDO_FUNC into r2
        assert at + 1 + imm == n                        # the callback's first instruction
        assert struct.unpack_from("<i", out, at * 8 + 12)[0] == 0
    assert out[:8] == prog[:8] and out[len(prog) - 8:len(prog)] == EXIT


def test_a_program_without_the_placeholder_is_unchanged():
    prog = MOV0 + MAP_FD + EXIT
    assert subprog.sites(prog) == []
    assert subprog.link(prog, MOV0 + EXIT) is prog
    calls = []
    assert subprog.linked(lambda n: calls.append(n) or prog, "hk_entry") is prog
    assert calls == [b"hk_entry"]                       # the callback is not even read


def test_linked_takes_the_callback_by_its_name():
    prog = ld_imm64(2, subprog.LOOP_FN_IMM) + CALL_LOOP + EXIT
    cb = MOV0 + EXIT
    got = subprog.linked({b"iter_itree": prog, b"mmnt_rb_step": cb}.__getitem__, "iter_itree")
    assert got.endswith(cb) and subprog.sites(got) == []


def test_a_callback_that_is_not_whole_instructions_is_an_error():
    with pytest.raises(BpfLoadError):
        subprog.link(ld_imm64(2, subprog.LOOP_FN_IMM) + EXIT, b"\x95\x00")
