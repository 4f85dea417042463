"""Library noise stays off the terminal (issue 16): fd 2 captured around the
libraries' calls, its text kept for MMNTRACE_DEBUG and for error sentences."""

import ctypes
import os
import sys
from pathlib import Path

import pytest

from mmntrace import build, quiet

libc = ctypes.CDLL(None, use_errno=True)


def _c_write(text: bytes) -> None:
    """What libbcc does: a write(2) on fd 2 from C, past Python's sys.stderr."""
    libc.write(2, text, len(text))


def test_c_level_writes_to_fd2_are_captured_and_returned(capfd):
    with quiet.captured_stderr() as cap:
        _c_write(b"bpf_attach_raw_tracepoint (kfunc): Unknown error 524\n")
        os.write(2, b"cannot attach kprobe, probe entry may not exist\n")
        assert cap.text == ""                      # filled in as the block ends
    assert "Unknown error 524" in cap.text and "probe entry may not exist" in cap.text
    out, err = capfd.readouterr()
    assert err == "" and out == ""                 # nothing reached the real fd 2


def test_fd2_is_restored_when_the_block_raises(capfd):
    before = os.fstat(2)
    with pytest.raises(RuntimeError):
        with quiet.captured_stderr() as cap:
            _c_write(b"said before failing\n")
            raise RuntimeError("boom")
    assert cap.text == "said before failing\n"
    after = os.fstat(2)
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)
    os.write(2, b"visible again\n")
    assert capfd.readouterr().err == "visible again\n"


def test_nested_captures_each_keep_their_own_text(capfd):
    with quiet.captured_stderr() as outer:
        _c_write(b"outer 1\n")
        with quiet.captured_stderr() as inner:
            _c_write(b"inner\n")
        _c_write(b"outer 2\n")
    assert inner.text == "inner\n" and outer.text == "outer 1\nouter 2\n"
    assert capfd.readouterr().err == ""


def test_a_large_output_does_not_block():
    """A verifier log can be megabytes: more than a pipe holds."""
    blob = b"x" * 4_000_000 + b"\n"
    with quiet.captured_stderr() as cap:
        os.write(2, blob)
    assert len(cap.text) == len(blob)


def test_gist_prefers_the_error_line():
    text = "In file included from x.c:1:\n/virtual/main.c:7:3: error: use of undeclared identifier 'y'\n1 error generated.\n"
    assert quiet.gist(text) == "/virtual/main.c:7:3: error: use of undeclared identifier 'y'"
    bcc_here = ("modprobe: FATAL: Module kheaders not found\nUnable to find kernel headers. Try rebuilding...\n"
                "chdir(/lib/modules/6.18.44/build): No such file or directory\n")
    assert quiet.gist(bcc_here) == "Unable to find kernel headers. Try rebuilding..."
    assert quiet.gist("bpf: Failed to load program: Permission denied\n0: R1=ctx\nprocessed 2 insns\n") == \
        "bpf: Failed to load program: Permission denied"
    assert quiet.gist("only\nlast line\n") == "last line"
    assert quiet.gist("  \n") == ""
    assert quiet.gist("e" * 1000).endswith("...") and len(quiet.gist("e" * 1000)) == 300


def test_quietly_adds_the_library_words_to_a_bare_exception(capfd):
    logged = []

    def attach_kfunc():
        _c_write(b"bpf_attach_raw_tracepoint (kfunc): Unknown error 524\n")
        raise Exception("Failed to attach BPF to entry kernel func")

    with pytest.raises(quiet.LibraryError) as ei:
        quiet.quietly(attach_kfunc, logged.append)()
    assert str(ei.value) == ("Failed to attach BPF to entry kernel func: "
                             "bpf_attach_raw_tracepoint (kfunc): Unknown error 524")
    assert "Unknown error 524" in ei.value.output and "Unknown error 524" in logged[0]
    assert capfd.readouterr().err == ""


def test_quietly_keeps_other_exception_types_and_return_values(capfd):
    logged = []

    def lookup():
        _c_write(b"noise\n")
        raise KeyError("k")

    with pytest.raises(KeyError):
        quiet.quietly(lookup, logged.append)()

    def fine(x):
        _c_write(b"a warning\n")
        return x + 1

    assert quiet.quietly(fine, logged.append)(1) == 2
    assert len(logged) == 2 and "a warning" in logged[1]
    assert quiet.quietly(lambda: 3, logged.append)() == 3 and len(logged) == 2   # silence logs nothing
    assert capfd.readouterr().err == ""


def test_quietly_nested_captures_once(capfd):
    """bcc's attach_kfunc calls load_func: one capture, one log entry."""
    logged = []
    inner = quiet.quietly(lambda: _c_write(b"from load_func\n"), logged.append)

    def outer():
        inner()
        _c_write(b"from attach\n")

    quiet.quietly(outer, logged.append)()
    assert len(logged) == 1 and "from load_func" in logged[0] and "from attach" in logged[0]
    assert capfd.readouterr().err == ""


def _refusing_trampolines(monkeypatch):
    """The fentry backend's loader meeting the 6.1 kernel's 524 (ENOTSUPP): the
    program loads, RAW_TRACEPOINT_OPEN refuses it (mmntrace/bpfsys.py raises)."""
    import os
    from mmntrace import bpfsys
    from mmntrace.fentry import Trampolines
    t = Trampolines(lambda name: b"", lambda: {"__mmu_notifier_release": [0xffffffff81000000]})
    t.btf_obj = lambda obj: (type("B", (), {"find": lambda self, name, kinds: 42})(), 7)
    loaded = []

    def load(insns, **kw):
        fd = os.open("/dev/null", os.O_RDONLY)
        loaded.append(fd)
        return fd

    def attach(prog_fd):
        raise bpfsys.BpfSysError("RAW_TRACEPOINT_OPEN", 524)
    monkeypatch.setattr(bpfsys, "load_tracing", load)
    monkeypatch.setattr(bpfsys, "attach_tracing", attach)
    return t, loaded


def _closed(fd) -> bool:
    import os
    try:
        os.fstat(fd)
        return False
    except OSError:
        return True


def test_failed_fentry_attach_is_silent_and_says_why_in_the_metadata(capfd, monkeypatch):
    """The 6.1 report: a trampoline refused with 524 fell back to a kprobe, and
    bcc's line reached the terminal. Now the reason is the probe's fentry_error,
    and the loaded program is closed."""
    monkeypatch.delenv("MMNTRACE_DEBUG", raising=False)
    t, loaded = _refusing_trampolines(monkeypatch)
    err = t.attach("__mmu_notifier_release", None, "hkf_entry", "hkf_exit")
    assert err.startswith("[Errno 524] RAW_TRACEPOINT_OPEN")
    assert capfd.readouterr().err == ""
    assert t.fds == {} and len(loaded) == 1
    assert _closed(loaded[0]), "the refused program's fd stayed open"


def test_failed_fentry_attach_is_shown_with_debug(capfd, monkeypatch):
    monkeypatch.setenv("MMNTRACE_DEBUG", "1")
    t, _ = _refusing_trampolines(monkeypatch)
    t.attach("__mmu_notifier_release", None, "hkf_entry", "hkf_exit")
    err = capfd.readouterr().err
    assert "mmntrace(debug)" in err and "RAW_TRACEPOINT_OPEN" in err


def test_real_bcc_compile_failure_is_one_sentence(capfd, monkeypatch):
    """bcc for real: a compile that fails prints clang's (or the missing
    headers') words to fd 2 from C; they end up in the exception instead."""
    monkeypatch.delenv("MMNTRACE_DEBUG", raising=False)
    bcc = pytest.importorskip("bcc")
    BPF = build.quiet_bpf_class(bcc.BPF)
    with pytest.raises(Exception) as ei:
        BPF(text=b"int f(void *ctx) { return undeclared_name; }")
    assert capfd.readouterr().err == ""
    msg = str(ei.value)
    assert msg.startswith("Failed to compile BPF module") and len(msg.splitlines()) == 1
    assert "undeclared_name" in msg or "kernel headers" in msg, msg


def test_stdout_of_the_library_is_captured_too_and_in_order(capfd):
    """bcc prints some things to fd 1, through C stdio's buffer when fd 1 is
    not a terminal; the daemon's JSON log is there."""
    def noisy():
        libc.printf(b"Unable to find kernel headers.\n")     # buffered in C: fflush'ed by the capture
        _c_write(b"chdir(/lib/modules/x/build): No such file or directory\n")
        raise Exception("Failed to compile BPF module <text>")

    with pytest.raises(quiet.LibraryError) as ei:
        quiet.quietly(noisy, lambda _m: None)()
    assert str(ei.value) == "Failed to compile BPF module <text>: Unable to find kernel headers."
    assert ei.value.output.index("Unable") < ei.value.output.index("chdir")
    libc.fflush(None)
    assert capfd.readouterr() == ("", "")


# A library that ends the process inside a captured call: LLVM calls exit(1) on a
# fatal compile error (a BPF program over its 512-byte stack), after printing why
# to fd 2, which the capture holds. The witness prints it once the process is gone.
_DIES_INSIDE = r"""
import ctypes, os, sys
sys.path.insert(0, %(repo)r)
from mmntrace.quiet import quietly

class Lib:
    def __init__(self):
        os.write(2, b"error: Looks like the BPF stack limit is exceeded\n")
        ctypes.CDLL(None).exit(1)

quietly(Lib.__init__, print)(object())
"""


def test_a_library_exit_inside_the_compile_still_shows_what_it_printed():
    import subprocess
    repo = str(Path(__file__).resolve().parents[2])
    r = subprocess.run([sys.executable, "-c", _DIES_INSIDE % dict(repo=repo)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1
    assert quiet.DIED_INSIDE in r.stderr and "BPF stack limit is exceeded" in r.stderr, r.stderr


def test_the_witness_says_nothing_when_the_call_returns(capfd):
    with quiet.captured_fds(1, 2, witness=True) as cap:
        os.write(2, b"warning: harmless\n")
    assert cap.text == "warning: harmless\n"
    err = capfd.readouterr().err
    assert quiet.DIED_INSIDE not in err and "harmless" not in err


def test_a_capture_makes_no_named_file_unless_a_witness_reads_it(monkeypatch):
    """bcc's calls are captured dozens of times at start-up and for each new
    subscriber: into a memfd, no create and unlink in the temporary directory."""
    import tempfile

    def no_named_file(*a, **k):
        raise AssertionError("a named file was made")
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_named_file)
    with quiet.captured_fds(2) as cap:
        os.write(2, b"from C\n")
    assert cap.text == "from C\n"


def test_without_memfd_a_named_file_is_used_and_removed(monkeypatch, tmp_path):
    import tempfile

    def refused(*a, **k):
        raise OSError(38, "Function not implemented")
    monkeypatch.setattr(os, "memfd_create", refused)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with quiet.captured_fds(2) as cap:
        os.write(2, b"from C\n")
    assert cap.text == "from C\n"
    assert list(tmp_path.iterdir()) == []
