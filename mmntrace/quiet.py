"""Keep the libraries' own printing off the user's terminal.

libbcc, the libbpf inside it and clang print from C straight to file
descriptor 2: ``bpf_attach_raw_tracepoint (kfunc): Unknown error 524``,
``cannot attach kprobe, probe entry may not exist``, a verifier log,
compiler warnings (and bcc says ``Unable to find kernel headers`` on fd 1).
Python's ``sys.stderr`` never sees it, so it cannot be redirected from
Python. :func:`captured_stderr` points fd 2 itself (:func:`captured_fds`,
any descriptors) at a temporary file for the duration of a call and hands
back what was written:
mmntrace shows it with ``MMNTRACE_DEBUG=1``, or inside the one sentence of
an error when the call failed (:func:`gist`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import sys
import tempfile
import time
from typing import Callable, Iterator


class Captured:
    """What was written to the captured descriptors; ``text`` is filled in as
    the block ends (empty until then)."""

    def __init__(self) -> None:
        self.text = ""


try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None)
except OSError:          # no C library to flush: Python's own streams are all there is
    _libc = None


def debug(msg: str) -> None:
    """MMNTRACE_DEBUG=1: what the tracer decided, and what the libraries printed."""
    if os.environ.get("MMNTRACE_DEBUG"):
        print(f"mmntrace(debug) {time.monotonic():.3f}: {msg}", file=sys.stderr, flush=True)


def _flush_all() -> None:
    """Flush what Python and C stdio hold back, so that text lands on the side
    of the switch it was written on. C's stdout is buffered when it is not a
    terminal, and bcc prints ``Unable to find kernel headers`` to it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    if _libc is not None:
        _libc.fflush(None)


#: what the witness (:func:`_witness`) says when the process ended inside a captured call
DIED_INSIDE = ("mmntrace: the process ended inside bcc (compiling or loading the BPF program); "
               "what bcc and the compiler printed:")


class _Witness:
    """A small shell process that outlives this one if it dies inside a
    captured call: LLVM ends the process with exit(1) on a fatal compile
    error (a BPF program over its 512-byte stack), and what it said would be
    in the capture file, seen by nobody. The witness waits on a pipe; told
    "ok" at the block's normal end it says nothing, else (end of
    file: this process is gone, however it ended) it prints the file to the
    standard error both had at the start."""

    def __init__(self, path: str):
        import subprocess
        r, self._w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                ["sh", "-c", 'read -r w; if [ "$w" != ok ] && [ -s "$2" ]; then printf "%s\\n" "$1" >&2; '
                             'cat "$2" >&2; fi; rm -f "$2"', "sh", DIED_INSIDE, path],
                stdin=r, stdout=subprocess.DEVNULL, close_fds=True)
        except OSError:
            os.close(self._w)
            self._proc = None
        finally:
            os.close(r)

    def release(self) -> None:
        if self._proc is None:
            return
        try:
            os.write(self._w, b"ok\n")
        finally:
            os.close(self._w)
        self._proc.wait()


@contextlib.contextmanager
def captured_fds(*fds: int, witness: bool = False) -> Iterator[Captured]:
    """Point each of ``fds`` at one temporary file around the block (so that
    their text interleaves as written) and restore them however the block
    ends. A temporary file, not a pipe: a verifier log can be far larger
    than a pipe holds, and nobody would read the pipe meanwhile.
    ``witness``: if the process itself ends inside the block (a library
    called exit()), what was captured still reaches the standard error
    (:class:`_Witness`; a process spawned per block: for the compile only).

    A descriptor belongs to the whole process: a thread writing to it
    meanwhile is captured too (mmntrace calls the libraries from one thread)."""
    cap = Captured()
    _flush_all()
    saved: dict[int, int | None] = {}
    # a file with no name (memfd) unless a witness must read it by name: no
    # create and unlink in a temporary directory around each of the dozens of
    # bcc calls of a start-up and of each new subscriber's probes
    memfd = getattr(os, "memfd_create", None) if not witness else None
    try:
        tmp = os.fdopen(memfd("mmntrace-lib", os.MFD_CLOEXEC), "w+b") if memfd else None
    except OSError:     # no memfd (seccomp, an old kernel): a named file
        tmp = None
    if tmp is None:
        tmp = tempfile.NamedTemporaryFile(prefix="mmntrace-lib-", delete=False)
    with tmp:
        wit = _Witness(tmp.name) if witness else None
        try:
            for fd in fds:
                try:
                    saved[fd] = os.dup(fd)
                except OSError:        # closed: capture anyway, and close it again after
                    saved[fd] = None
                os.dup2(tmp.fileno(), fd)
            yield cap
        finally:
            _flush_all()
            for fd, old in saved.items():
                if old is not None:
                    os.dup2(old, fd)
                    os.close(old)
                else:
                    os.close(fd)
            tmp.seek(0)
            cap.text = tmp.read().decode("utf-8", errors="replace")
            if wit is not None:
                wit.release()
            if isinstance(tmp.name, str):      # a named file (memfd's name is its fd, an int)
                with contextlib.suppress(OSError):
                    os.unlink(tmp.name)


def captured_stderr() -> contextlib.AbstractContextManager[Captured]:
    """Capture fd 2 around the block (see :func:`captured_fds`): where libbcc,
    libbpf and clang print from C, out of Python's ``sys.stderr``'s reach."""
    return captured_fds(2)


#: what makes a line of library output the one to quote, best first: clang's
#: ``error:`` and libbcc's ``Unknown error 524``; then bcc's ``Unable to find
#: kernel headers``, ``cannot attach kprobe``, ``Failed to load program``
_GIST = (re.compile(r"\berror\b", re.I), re.compile(r"\b(unable|cannot|failed)\b", re.I))


def gist(text: str, limit: int = 300) -> str:
    """The line of library output worth putting into an error sentence: the
    first that matches the best pattern of :data:`_GIST`, else the last
    non-empty line ('' if none), cut to ``limit`` characters."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    line = lines[-1]
    for pat in _GIST:
        hits = [ln for ln in lines if pat.search(ln)]
        if hits:
            line = hits[0]
            break
    return line if len(line) <= limit else line[:limit - 3] + "..."


_depth = 0      # quiet calls in progress: fd 2 is the process's, one capture covers nested calls


class LibraryError(Exception):
    """A library call failed; the message ends with the gist of what the library
    printed, ``output`` holds all of it."""

    def __init__(self, message: str, output: str = ""):
        super().__init__(message)
        self.output = output


def quietly(fn: Callable, log: Callable[[str], None]) -> Callable:
    """``fn`` with fds 1 and 2 captured around each call (see :func:`captured_fds`;
    bcc prints to standard output too, where the daemon writes its JSON log).
    What the library printed goes to ``log`` (mmntrace's debug output). When
    the call raises a bare ``Exception`` (bcc's habit), it becomes a
    :class:`LibraryError` whose message adds the :func:`gist` of that output:
    ``Failed to attach BPF to entry kernel func: bpf_attach_raw_tracepoint
    (kfunc): Unknown error 524``. Other exception types pass unchanged, for
    callers that catch them by type."""

    witness = getattr(fn, "__name__", "") == "__init__"     # bcc's BPF(): the compile, where LLVM may exit()

    @functools.wraps(fn)
    def call(*args, **kwargs):
        global _depth
        if _depth:             # inside another quiet call (bcc's attach_kfunc loads its program)
            return fn(*args, **kwargs)
        failure: Exception | None = None
        result = None
        _depth += 1
        try:
            with captured_fds(1, 2, witness=witness) as cap:
                try:
                    result = fn(*args, **kwargs)
                except Exception as e:      # noqa: BLE001 - re-raised below, with the library's words
                    failure = e
        finally:
            _depth -= 1
        said = cap.text.strip()
        if said:
            log(f"{getattr(fn, '__qualname__', fn)}: the library printed:\n{said}")
        if failure is None:
            return result
        g = gist(said)
        if type(failure) is Exception and g and g not in str(failure):
            raise LibraryError(f"{failure}: {g}" if str(failure) else g, said) from failure
        raise failure
    return call
