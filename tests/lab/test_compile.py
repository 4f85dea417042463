"""bcc's compile spared its read of all of /proc/kallsyms gives the same program.

mmntrace/nokallsyms.py runs the compile with the thread's effective uid
non-zero, so that bcc does not read kallsyms to learn whether the kernel has
bpf_probe_read_kernel(); bcc then defines that name to bpf_probe_read, and
bpf/mmntrace.bpf.c undoes it. The ground truth is bcc's own plain compile of
the same text and flags: every function's instructions must be identical.

Run inside the lab:  mmntrace lab --kernel 6.1 -- .venv/bin/python -m pytest -q -m lab tests/lab/test_compile.py
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

pytestmark = [pytest.mark.lab, pytest.mark.arm64_full]

if os.geteuid() != 0:
    pytest.skip("needs root (run inside `mmntrace lab`)", allow_module_level=True)

from mmntrace import codegen, kernel, nokallsyms  # noqa: E402
from mmntrace.build import quiet_bpf_class  # noqa: E402
from mmntrace.tracer import Tracer  # noqa: E402


def _program(text: str, flags: list[str], skip: bool) -> dict[bytes, bytes]:
    import bcc
    BPF = quiet_bpf_class(bcc.BPF)
    with nokallsyms.skipping_kallsyms(skip) as did:
        assert did == skip
        b = BPF(text=text.encode(), cflags=flags)      # its maps and BTF are created in here
    try:
        lib, mod = bcc.lib, b.module
        out = {}
        for i in range(lib.bpf_num_functions(mod)):
            name = lib.bpf_function_name(mod, i)
            out[name] = ctypes.string_at(lib.bpf_function_start(mod, name), lib.bpf_function_size(mod, name))
        return out
    finally:
        b.cleanup()


def test_compile_without_bccs_kallsyms_read_gives_the_same_program():
    f = kernel.probe()
    if not f.probe_read_kernel:
        pytest.skip("BTF does not say the kernel has bpf_probe_read_kernel: bcc is left to read kallsyms")
    t = Tracer(f, backend="kprobe", aggregate=True, sleep_detect="count")     # the daemon's program
    flags, text = t._cflags(), codegen.bpf_text()
    assert "-DMMNT_PROBE_READ_KERNEL" in flags
    plain = _program(text, flags, skip=False)
    skipped = _program(text, flags, skip=True)
    assert os.geteuid() == 0
    assert sorted(skipped) == sorted(plain)
    differ = [n.decode() for n in plain if plain[n] != skipped[n]]
    assert not differ, differ
    # the helper bcc would otherwise have put in (bpf_probe_read, 4) is not what
    # the explicit calls became: at least one program calls bpf_probe_read_kernel (113)
    calls = {int.from_bytes(code[i + 4:i + 8], "little", signed=True)
             for code in skipped.values() for i in range(0, len(code), 8) if code[i] == 0x85 and code[i + 1] == 0}
    assert 113 in calls, sorted(calls)


@pytest.mark.parametrize("config", [
    dict(backend="kprobe", aggregate=True, chain=True, sleep_detect="count"),          # the daemon's program
    dict(backend="fentry", might_sleep=True, sleep_detect="switch", min_latency_ns=5000),
], ids=["daemon", "fentry-might-sleep"])
def test_the_lean_compile_gives_the_same_program(config):
    """codegen.lean_header_flags: struct pt_regs declared from BTF, and the
    headers it, PAGE_SIZE and bcc's helpers.h would pull in left out by their
    include guards, compile to exactly the programs the full headers give
    (every function's instructions), on this kernel's own headers."""
    f = kernel.probe()
    if not f.btf or f.layout is None:
        pytest.skip("no BTF layouts on this kernel: the headers are compiled in full")
    assert f.lean_headers is not None, "a lab kernel with BTF and headers allows the lean compile"
    kw = dict(ringbuf=f.ringbuf, ringbuf_pages=256, layout="btf", **config)
    lean, full = codegen.cflags(f, **kw), codegen.cflags(f, **kw, lean_headers=False)
    assert "-DMMNT_LEAN_HEADERS" in lean and "-DMMNT_LEAN_HEADERS" not in full
    text = codegen.bpf_text()
    skip = bool(f.probe_read_kernel)
    a, b = _program(text, lean, skip=skip), _program(text, full, skip=skip)
    assert sorted(a) == sorted(b) and len(a) >= 4
    differ = [n.decode() for n in a if a[n] != b[n]]
    assert not differ, differ
