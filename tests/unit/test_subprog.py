"""mmntrace/subprog.py: bpf_loop() callbacks linked into a program bcc compiled alone."""

import struct

import pytest

from mmntrace import subprog
from mmntrace.errors import BpfLoadError

RB, ITREE = subprog.CALLBACKS["mmnt_rb_step"], subprog.CALLBACKS["mmnt_itree_step"]


def insn(op, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", op, dst | src << 4, off, imm)


def ld_imm64(dst, value, src=0):
    return insn(0x18, dst, src, 0, value & 0xffffffff) + insn(0, 0, 0, 0, (value >> 32) & 0xffffffff)


EXIT, MOV0, MOV1 = insn(0x95), insn(0xb7, 0, 0, 0, 0), insn(0xb7, 0, 0, 0, 1)
CALL_LOOP = insn(0x85, 0, 0, 0, 181)
MAP_FD = ld_imm64(1, RB, src=1)       # a map reference with the same number: not a site


def refs(out):
    """(instruction, target instruction) of each BPF_PSEUDO_FUNC load."""
    got = []
    for i in range(0, len(out) - 15, 8):
        op, regs, _off, imm = struct.unpack_from("<BBhi", out, i)
        if op == 0x18 and regs >> 4 == 4:
            assert struct.unpack_from("<i", out, i + 12)[0] == 0
            got.append((i // 8, i // 8 + 1 + imm))
    return got


def test_each_placeholder_refers_to_its_callback_and_nested_ones_are_linked_once():
    # the program passes the interval step twice and the rb step once; the
    # interval step itself passes the rb step (a bpf_loop inside a callback)
    prog = (MOV0 + ld_imm64(2, ITREE) + CALL_LOOP + ld_imm64(2, RB) + CALL_LOOP
            + ld_imm64(2, ITREE) + CALL_LOOP + EXIT)
    itree = MOV0 + ld_imm64(2, RB) + CALL_LOOP + MOV1 + EXIT
    rb = MOV1 + EXIT
    dumps = {"mmnt_itree_step": itree, "mmnt_rb_step": rb}
    out = subprog.link(prog, dumps.__getitem__)
    n = len(prog) // 8
    # in the order first met: the interval step, then the rb step after it
    assert out.funcs == ((n, "mmnt_itree_step"), (n + len(itree) // 8, "mmnt_rb_step"))
    assert len(out) == len(prog) + len(itree) + len(rb) and out.endswith(rb)
    it, r = n, n + len(itree) // 8
    assert refs(out) == [(1, it), (4, r), (7, it), (it + 1, r)]
    assert subprog.sites(out) == []


def test_a_program_without_a_placeholder_is_unchanged_and_loads_plainly():
    prog = MOV0 + MAP_FD + EXIT
    assert subprog.sites(prog) == []
    assert subprog.link(prog, lambda n: pytest.fail("no callback is read")) is prog
    assert subprog.linked(lambda n: prog, "hk_entry") is prog
    assert subprog.load_args(prog) == {}


def test_load_args_gives_each_function_its_place(monkeypatch):
    monkeypatch.setattr(subprog.bpfsys, "func_btf", lambda names: 77)
    monkeypatch.setattr(subprog, "_btf_fd", None)
    out = subprog.link(ld_imm64(2, RB) + CALL_LOOP + EXIT, {"mmnt_rb_step": MOV1 + EXIT}.__getitem__)
    a = subprog.load_args(out)
    assert a["prog_btf_fd"] == 77
    assert a["func_info"] == [(0, 3), (4, 3 + subprog._BTF_NAMES.index("mmnt_rb_step"))]


def test_a_reference_that_link_did_not_make_is_refused():
    with pytest.raises(BpfLoadError):
        subprog.load_args(ld_imm64(2, 5, src=4) + CALL_LOOP + EXIT + MOV1 + EXIT)


def test_a_callback_that_is_not_whole_instructions_is_an_error():
    with pytest.raises(BpfLoadError):
        subprog.link(ld_imm64(2, RB) + EXIT, lambda n: b"\x95\x00")


class FakeBpf:
    module = object()

    def __init__(self, progs):
        self.progs, self.funcs = progs, {}

    def dump_func(self, name):
        return self.progs[name.decode()]


@pytest.fixture
def fake_bcc(monkeypatch):
    bcc = pytest.importorskip("bcc")
    monkeypatch.setattr(bcc, "lib", type("Lib", (), {"bpf_module_kern_version": staticmethod(lambda m: 0x60100)}))
    monkeypatch.setattr(subprog.bpfsys, "func_btf", lambda names: 77)
    monkeypatch.setattr(subprog, "_btf_fd", None)
    loads = []

    def load_prog(insns, **kw):
        loads.append((insns, kw))
        if kw["name"] == "refused":
            raise subprog.bpfsys.BpfSysError("loading refused", 13, "R2 type=scalar expected=func")
        return 42
    monkeypatch.setattr(subprog.bpfsys, "load_prog", load_prog)
    return loads


def test_bccs_load_is_left_to_bcc_where_there_is_no_callback(fake_bcc):
    b = FakeBpf({"cb_entry": MOV0 + EXIT, "hk_entry": ld_imm64(2, RB) + CALL_LOOP + EXIT})
    assert subprog.load_func(b, b"cb_entry", 2) is None
    b.funcs[b"hk_entry"] = "bcc's"
    assert subprog.load_func(b, b"hk_entry", 2) is None          # bcc holds it already
    assert fake_bcc == []


def test_a_program_with_a_callback_is_loaded_linked_and_kept_as_bccs(fake_bcc):
    b = FakeBpf({"hk_return": ld_imm64(2, ITREE) + CALL_LOOP + EXIT,
                 "mmnt_itree_step": ld_imm64(2, RB) + CALL_LOOP + MOV1 + EXIT, "mmnt_rb_step": MOV1 + EXIT})
    fn = subprog.load_func(b, "hk_return", 2)
    assert fn.fd == 42 and b.funcs[b"hk_return"] is fn and fn.name == b"hk_return"
    (insns, kw), = fake_bcc
    assert kw["prog_type"] == 2 and kw["kern_version"] == 0x60100 and kw["prog_btf_fd"] == 77
    assert [off for off, _tid in kw["func_info"]] == [0, 4, 9]     # main, interval step (5), rb step
    assert len(insns) == 4 * 8 + 5 * 8 + 2 * 8


def test_a_refusal_reads_as_bccs_with_the_verifiers_words(fake_bcc):
    b = FakeBpf({"refused": ld_imm64(2, RB) + CALL_LOOP + EXIT, "mmnt_rb_step": MOV1 + EXIT})
    with pytest.raises(Exception, match=r"(?s)Failed to load BPF program b'refused'.*expected=func"):
        subprog.load_func(b, b"refused", 2)
    assert b"refused" not in b.funcs


def test_a_kprobe_program_reading_preempt_count_is_loaded_with_the_variables_reference(fake_bcc):
    """Where vmlinux's BTF has preempt_count's per-CPU variable (codegen's
    MMNT_PC_VAR_OFF), read_pc()'s placeholder becomes a reference to it in
    bcc's kprobe programs too (they are loaded here, bcc's load could not make
    it), callbacks linked alongside; a program without the read, or a tracer
    without the variable, is bcc's to load."""
    read = ld_imm64(3, subprog.PC_VAR_IMM)
    b = FakeBpf({"cb_entry": read + MOV0 + EXIT, "cb_return": MOV0 + EXIT,
                 "hk_entry": read + ld_imm64(2, RB) + CALL_LOOP + EXIT, "mmnt_rb_step": MOV1 + EXIT})
    assert subprog.load_func(b, b"cb_entry", 2) is None                  # no variable known
    assert subprog.load_func(b, b"cb_return", 2, pc_var=8435) is None    # no read
    assert fake_bcc == []
    fn = subprog.load_func(b, b"cb_entry", 2, pc_var=8435)
    assert fn.fd == 42 and b.funcs[b"cb_entry"] is fn
    (insns, kw), = fake_bcc
    assert insns == ld_imm64(3, 8435, src=subprog.BPF_PSEUDO_BTF_ID) + MOV0 + EXIT
    assert "func_info" not in kw                                       # no callback: no BTF of its own
    subprog.load_func(b, b"hk_entry", 2, pc_var=8435)
    insns, kw = fake_bcc[1]
    assert insns[:16] == ld_imm64(3, 8435, src=subprog.BPF_PSEUDO_BTF_ID)
    assert [off for off, _tid in kw["func_info"]] == [0, 6]           # the callback still linked
