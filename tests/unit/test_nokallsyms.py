"""mmntrace/nokallsyms.py: bcc's compile spared its read of all of kallsyms.

The compiling thread's effective uid is made non-zero for the compile with its
capabilities kept, and put back; other threads are left alone. What the
compile then produces is compared with a plain compile in the lab
(tests/lab/test_compile.py)."""

import dataclasses
import os
import re
import threading

import pytest

from mmntrace import codegen, nokallsyms

from test_codegen import BASE, F, defines


def _cap_eff() -> str:
    return re.search(r"CapEff:\s+(\w+)", open("/proc/thread-self/status").read()).group(1)


def _need_root():
    if not nokallsyms.possible():
        pytest.skip("needs root on x86_64 or aarch64")


def test_the_helpers_own_names_only_where_btf_has_it():
    """MMNT_PROBE_READ_KERNEL (the #undef of bcc's fallback defines) only where
    BTF has BPF_FUNC_probe_read_kernel; the tracer skips bcc's kallsyms read then only."""
    assert "MMNT_PROBE_READ_KERNEL" not in defines(codegen.cflags(F, **BASE))
    assert "MMNT_PROBE_READ_KERNEL" in defines(codegen.cflags(dataclasses.replace(F, probe_read_kernel=True), **BASE))


def test_skipped_only_with_btfs_answer_and_the_headers_installed():
    """Without BTF's answer bcc's decides what the program calls; without
    /lib/modules/<release>/build bcc fetches the kernel's own headers, maybe by
    running modprobe, which a non-zero effective uid would start without capabilities."""
    ok = dataclasses.replace(F, probe_read_kernel=True, headers="/lib/modules/6.12.0-test/build")
    assert nokallsyms.wanted(ok)
    assert not nokallsyms.wanted(dataclasses.replace(ok, probe_read_kernel=False))
    assert not nokallsyms.wanted(dataclasses.replace(ok, headers=None))


def test_the_undefs_come_before_any_use_of_the_helpers():
    text = codegen.bpf_text()
    first_use = text.index("\n#include")         # the first code after the opening comment
    for name in ("bpf_probe_read_kernel", "bpf_probe_read_kernel_str", "bpf_probe_read_user", "bpf_probe_read_user_str"):
        assert text.index(f"#undef {name}\n") < first_use, name
    assert text.index("#ifdef MMNT_PROBE_READ_KERNEL") < text.index("#undef bpf_probe_read_kernel\n")


def test_the_compiling_thread_alone_runs_as_nobody_with_its_capabilities():
    _need_root()
    caps = _cap_eff()
    ready, go, seen = threading.Event(), threading.Event(), {}

    def other():
        ready.set()
        go.wait(10)
        seen["euid"] = os.geteuid()

    t = threading.Thread(target=other)
    t.start()
    ready.wait(10)
    with nokallsyms.skipping_kallsyms() as did:
        assert did
        assert os.geteuid() == nokallsyms.NOBODY        # what bcc_procutils_each_ksym tests
        assert os.getuid() == 0                         # the real uid stays
        assert _cap_eff() == caps                       # bpf() inside the compile still may
        go.set()
        t.join(10)
    assert seen["euid"] == 0                            # a thread started before it is left as it was
    assert os.geteuid() == 0 and _cap_eff() == caps


def test_an_exception_inside_gives_everything_back():
    _need_root()
    caps = _cap_eff()
    with pytest.raises(ValueError):
        with nokallsyms.skipping_kallsyms():
            raise ValueError("the compile failed")
    assert os.geteuid() == 0 and _cap_eff() == caps


def test_disabled_or_not_root_runs_the_block_as_it_is(monkeypatch):
    with nokallsyms.skipping_kallsyms(False) as did:
        assert not did
        assert os.geteuid() == os.getuid()
    monkeypatch.setattr(nokallsyms.os, "geteuid", lambda: 1000)
    with nokallsyms.skipping_kallsyms() as did:
        assert not did
    assert not nokallsyms.possible("riscv64")
