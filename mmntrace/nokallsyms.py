"""bcc's compile without its read of /proc/kallsyms.

Every compile of bcc 0.26 reads all of /proc/kallsyms into a symbol cache
(``BFrontendAction::DoMiscWorkAround`` -> ``bcc_symcache_resolve_name``), to
learn one thing: whether the kernel has ``bpf_probe_read_kernel()``; if not,
it defines that name and its siblings to ``bpf_probe_read`` at the top of the
program. It frees the cache right after. In the lab's emulated 6.1 guest that
read was 0.5-0.6 s of a trivial program's 4.3-5.1 s compile and about 1.2 s of
the daemon configuration's 10 s (build/exp/euidab.py, three pairs each,
alternating). The tracer knows the answer already, from BTF
(``kernel.Features.probe_read_kernel``).

bcc reads kallsyms only as root (``bcc_procutils_each_ksym``: ``geteuid() !=
0`` returns at once). So :func:`skipping_kallsyms` makes the *calling thread's*
effective uid non-zero for the compile (the raw ``setresuid`` system call:
glibc's wrapper would change every thread), with ``SECBIT_NO_SETUID_FIXUP``
set on that thread first so that it keeps its capabilities: the maps and the
BTF object bcc creates inside the compile still have CAP_BPF/CAP_SYS_ADMIN,
and files stay readable (CAP_DAC_OVERRIDE). Both are put back as it ends,
exception or not. bcc's then-added ``#define bpf_probe_read_kernel
bpf_probe_read`` is undone by bpf/mmntrace.bpf.c's ``#undef`` under
``MMNT_PROBE_READ_KERNEL`` (mmntrace/codegen.py sets it where BTF has the
helper), so the program compiles to the same instructions (the lab test
tests/lab/test_tracer_smoke.py compares them).

Where any of it is not possible (not root, an architecture whose system call
number is not known here, prctl refused), the compile runs as before; so it does
where ``/lib/modules/<release>/build`` is missing (:func:`wanted`): bcc then
extracts the headers the kernel carries (CONFIG_IKHEADERS) and may run
``modprobe kheaders``, which would start without capabilities under a non-zero
effective uid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from typing import Iterator

PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
SECBIT_NO_SETUID_FIXUP = 1 << 2
NOBODY = 65534

#: setresuid's system call number, per machine (arch/x86/entry/syscalls/
#: syscall_64.tbl; include/uapi/asm-generic/unistd.h for arm64)
_NR_SETRESUID = {"x86_64": 117, "aarch64": 147}


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def wanted(f) -> bool:
    """Is the kallsyms read worth skipping for kernel features ``f``
    (kernel.Features)? BTF says the kernel has bpf_probe_read_kernel (else bcc's
    answer decides what the program calls), and the kernel headers are
    installed (else bcc's compile fetches them itself, see above)."""
    return bool(getattr(f, "probe_read_kernel", False)) and getattr(f, "headers", None) is not None


def possible(machine: str | None = None) -> bool:
    """Can this process compile without bcc's kallsyms read? (root, a known
    system call number; bcc skips the read by itself when not root)."""
    return os.geteuid() == 0 and (machine or platform.machine()) in _NR_SETRESUID


@contextlib.contextmanager
def skipping_kallsyms(enabled: bool = True) -> Iterator[bool]:
    """Run the block with this thread's effective uid non-zero and its
    capabilities kept; yields whether it did (False: the block runs as is)."""
    if not enabled or not possible():
        yield False
        return
    libc = _libc()
    nr = _NR_SETRESUID[platform.machine()]
    old_bits = libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
    if old_bits < 0 or libc.prctl(PR_SET_SECUREBITS, old_bits | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) != 0:
        yield False
        return
    try:
        if libc.syscall(nr, -1, NOBODY, -1) != 0 or os.geteuid() != NOBODY:
            libc.syscall(nr, -1, 0, -1)
            yield False
            return
        try:
            yield True
        finally:
            if libc.syscall(nr, -1, 0, -1) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"could not take back the effective uid 0 after the compile: {os.strerror(e)}")
    finally:
        libc.prctl(PR_SET_SECUREBITS, old_bits, 0, 0, 0)
