"""The Python views of the C layouts are derived from the headers: check the
derivation against what the C compiler says."""

import subprocess
from pathlib import Path
import textwrap

import numpy as np
import pytest

from mmntrace import layout
from mmnlab import testmod


def _c_sizeof(header, structs):
    src = f'#include <stddef.h>\n#include <stdio.h>\ntypedef unsigned char __u8; typedef unsigned short __u16; typedef short __s16;\n' \
          f'typedef unsigned int __u32; typedef int __s32; typedef unsigned long long __u64; typedef long long __s64;\n' \
          f'#include "{header}"\nint main(void) {{\n' + \
          "".join(f'printf("%zu\\n", sizeof(struct {s}));\n' for s in structs) + "return 0; }\n"
    return src


def _compile_and_run(tmp_path, src, extra=()):
    c = tmp_path / "t.c"
    c.write_text(src)
    exe = tmp_path / "t"
    subprocess.run(["cc", "-o", str(exe), str(c), *extra], check=True)
    return [int(x) for x in subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()]


def test_record_dtype_matches_c(tmp_path):
    if subprocess.run(["which", "cc"], capture_output=True).returncode:
        pytest.skip("no C compiler")
    structs = ["mmnt_record", "mmnt_hist_key"]
    sizes = _compile_and_run(tmp_path, _c_sizeof(str(layout.BPF_HEADER), structs))
    h = layout.header(layout.BPF_HEADER)
    assert sizes == [h.structs[s].itemsize for s in structs]


def test_testmod_dtypes_match_c(tmp_path):
    structs = ["mmnt_test_info", "mmnt_test_register", "mmnt_test_interval", "mmnt_test_behave",
               "mmnt_test_record", "mmnt_test_counts"]
    src = '#include <stdio.h>\n#include "%s"\nint main(void){\n%s return 0;}\n' % (
        testmod.TESTMOD_HEADER, "".join(f'printf("%zu\\n", sizeof(struct {s}));\n' for s in structs))
    sizes = _compile_and_run(tmp_path, src)
    assert sizes == [testmod._H.structs[s].itemsize for s in structs]


def test_ioctl_numbers_match_c(tmp_path):
    names = ["MMNT_IOC_INFO", "MMNT_IOC_REGISTER", "MMNT_IOC_UNREGISTER", "MMNT_IOC_INTERVAL",
             "MMNT_IOC_BEHAVE", "MMNT_IOC_COUNTS", "MMNT_IOC_RESET", "MMNT_IOC_DSLEEP"]
    src = '#include <stdio.h>\n#include "%s"\nint main(void){\n%s return 0;}\n' % (
        testmod.TESTMOD_HEADER, "".join(f'printf("%lu\\n", (unsigned long){n});\n' for n in names))
    vals = _compile_and_run(tmp_path, src)
    ours = [getattr(testmod, "IOC_" + n[len("MMNT_IOC_"):]) for n in names]
    assert vals == ours


def test_header_parser_enums_defines_arrays():
    h = layout.Header(textwrap.dedent("""
        #define N 3
        #define F (1u << 4)
        enum e { A = 2, B, C = N, D };
        struct s {
            __u8 a;   /* comment */
            __u64 b;
            __u32 arr[N];
            char name[8];
        };
    """))
    assert h.enums["e"] == {"A": 2, "B": 3, "C": 3, "D": 4}
    assert h.defines["F"] == 16
    dt = h.structs["s"]
    assert dt.names == ("a", "b", "arr", "name")
    assert dt.fields["b"][1] == 8 and dt["arr"].shape == (3,) and dt.itemsize == 40


def test_header_parser_rejects_unknown_field():
    with pytest.raises(ValueError, match="cannot parse"):
        layout.Header("struct s { float x; };")


def test_hook_numbering_shared_with_test_module():
    bpf = layout.header(layout.BPF_HEADER).enums["mmnt_hook"]
    mod = layout.header(testmod.TESTMOD_HEADER).enums["mmnt_test_hook"]
    pairs = {"START": "START", "END": "END", "SECONDARY_TLB": "SECONDARY_TLB", "RELEASE": "RELEASE",
             "CLEAR_FLUSH_YOUNG": "CLEAR_FLUSH_YOUNG", "CLEAR_YOUNG": "CLEAR_YOUNG",
             "TEST_YOUNG": "TEST_YOUNG", "CHANGE_PTE": "CHANGE_PTE", "INTERVAL": "INTERVAL"}
    for b, m in pairs.items():
        assert bpf["MMNT_HOOK_" + b] == mod["MMNT_T_" + m]


# --- struct layouts from BTF: TASK_REPORT_MAX out of sched_switch's format ---

SCHED_SWITCH_FMT = (
    'print fmt: "prev_comm=%s prev_pid=%d prev_prio=%d prev_state=%s%s ==> next_comm=%s next_pid=%d '
    'next_prio=%d", REC->prev_comm, REC->prev_pid, REC->prev_prio, (REC->prev_state & ((((0x00000000 | '
    '0x00000001 | 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | 0x00000020 | 0x00000040) + 1) << 1) - 1)) ? '
    '__print_flags(REC->prev_state & ((((0x00000000 | 0x00000001) + 1) << 1) - 1), "|", { 0x00000001, "S" }) : "R", '
    'REC->prev_state & (((0x00000000 | 0x00000001 | 0x00000002 | 0x00000004 | 0x00000008 | 0x00000010 | '
    '0x00000020 | 0x00000040) + 1) << 1) ? "+" : "", REC->next_comm, REC->next_pid, REC->next_prio\n')


def test_task_report_max_from_the_tracepoint_format(tmp_path, monkeypatch):
    from mmntrace import kernel
    real = Path.read_text
    fmt = tmp_path / "format"
    fmt.write_text(SCHED_SWITCH_FMT)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: real(fmt if self.name == "format" else self, *a, **k))
    assert kernel.task_report_max() == 0x100
    fmt.write_text(SCHED_SWITCH_FMT.replace('? "+"', '? "?"'))
    assert kernel.task_report_max() is None


def test_int_expression_evaluator_takes_only_literals_and_three_operators():
    from mmntrace.kernel import _eval_int_expr
    assert _eval_int_expr("((0x1 | 0x2) + 1) << 1") == 8
    for bad in ("__import__('os')", "1 - 1", "(1 << 40)", "a | 1", "1 if 1 else 2", ""):
        assert _eval_int_expr(bad) is None, bad


def test_decode_bench_mirrors_the_record_in_ctypes():
    """bench/decode_bench.py's per-event baseline rebuilds the record as a
    ctypes.Structure from the same dtype: every field kind the header uses
    (arrays such as the padding after ``rt`` included) must map, byte for byte."""
    import ctypes
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import decode_bench
    from mmntrace.layout import record_dtype
    rec = decode_bench.ctypes_struct()
    dt = record_dtype()
    assert ctypes.sizeof(rec) == dt.itemsize
    assert [f[0] for f in rec._fields_] == list(dt.names)
    assert all(getattr(rec, n).offset == dt.fields[n][1] for n in dt.names)
