"""Does this kernel really run fentry programs? A trial attach says.

BTF and the trampoline code in kallsyms (what :func:`mmntrace.kernel.probe`
looks at) do not make fentry work: a kernel can have both and still refuse
the program at load (a lockdown or LSM policy, a kernel patched against it)
or at attach (no trampoline support for the architecture or the function:
ENOTSUPP 524). bcc then prints its own ``bpf_attach_raw_tracepoint (kfunc):
...`` from C and the tracer falls back, too late for ``doctor`` or the
automatic backend choice to have told the truth.

So this module loads the smallest fentry program (``r0 = 0; exit``) on a
vmlinux function through the raw bpf(2) calls of :mod:`mmntrace.bpfsys`,
attaches it, and closes both at once. Nothing goes through bcc or libbpf,
so nothing is printed. The target is ``bpf_fentry_test1`` where the kernel
has it: a function that exists for exactly this (BPF_PROG_TEST_RUN of tracing
programs is its only caller), so the moment it is patched costs nobody
anything; otherwise the caller's own targets (the MMU-notifier hooks) are
tried, a no-op program on them for the time of one syscall.
"""

from __future__ import annotations

import errno
import os
import struct
from typing import Iterable, NamedTuple

from . import bpfsys
from . import btf as btfmod

#: ENOTSUPP, the kernel-internal "operation not supported" (include/linux/errno.h):
#: what a refused trampoline returns; Python's errno module has no name for it
ENOTSUPP = 524

#: tried first: a function made for fentry self-tests, called by nobody else
TRIAL_TARGET = "bpf_fentry_test1"

# r0 = 0 (BPF_ALU64 | BPF_MOV | BPF_K); exit (BPF_JMP | BPF_EXIT)
_INSNS = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)

# errors that say something of the kernel as a whole, not of one target
# function: no other target is tried after them
_KERNEL_WIDE = {errno.EPERM, errno.EACCES, errno.ENOSYS, ENOTSUPP, errno.EOPNOTSUPP, errno.E2BIG}

# capability bits (include/uapi/linux/capability.h)
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


class Verdict(NamedTuple):
    """``ok``: a fentry program loaded and attached. ``reason``: otherwise, one
    plain sentence (no final full stop) saying why, with the errno."""

    ok: bool
    reason: str | None = None


#: the kernel's names where Python's differ or are missing (95 is ENOTSUP to glibc)
_KERNEL_NAMES = {ENOTSUPP: "ENOTSUPP", errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(err: int) -> str:
    """``EPERM 1``, ``ENOTSUPP 524``: the kernel's symbol and the number, as kernel people search for them."""
    return f"{_KERNEL_NAMES.get(err) or errno.errorcode.get(err, 'errno')} {err}"


def reason_for(stage: str, err: int, privileged: bool) -> str:
    """The sentence for a trial that failed with ``err`` while ``stage``
    ("loading" or "attaching") its program. ``privileged``: the process had
    the capabilities that loading tracing programs needs, so a permission
    error is the kernel's policy, not the user's."""
    where = f"{errno_name(err)} on {stage} a trial fentry program"
    if err == errno.ENOSYS:
        return f"the kernel has no bpf(2) system call, or mmntrace does not know this architecture's: {where}"
    if err in (errno.EPERM, errno.EACCES):
        if not privileged:
            return f"fentry programs need root, or CAP_BPF with CAP_PERFMON: {where}"
        return f"the kernel refuses fentry programs even to root, by policy or by build: {where}"
    if err in (ENOTSUPP, errno.EOPNOTSUPP):
        return f"the kernel refuses BPF trampolines: {where}"
    if err in (errno.EINVAL, errno.E2BIG) and stage == "loading":
        return f"the kernel does not take fentry programs, being older than BPF trampolines or built without them: {where}"
    if err == errno.ENOENT:
        return f"the kernel found no function to attach to: {where}"
    return f"fentry programs fail on this kernel, {os.strerror(err)}: {where}"


def privileged() -> bool:
    """Does this process hold what loading a tracing program needs
    (CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON)? Read from the effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    has = lambda bit: bool(caps >> bit & 1)  # noqa: E731
                    return has(_CAP_SYS_ADMIN) or (has(_CAP_BPF) and has(_CAP_PERFMON))
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def _attach_once(btf_id: int) -> None:
    """Load the trial program on vmlinux BTF function ``btf_id``, attach it,
    close both. Raises :class:`bpfsys.BpfSysError` with ``stage`` set."""
    try:
        prog = bpfsys.load_tracing(_INSNS, name="mmnt_trial", attach=bpfsys.TRACE_FENTRY,
                                   btf_obj_fd=0, btf_id=btf_id)
    except bpfsys.BpfSysError as e:
        e.stage = "loading"
        raise
    try:
        os.close(bpfsys.attach_tracing(prog))     # closing the link detaches at once
    except bpfsys.BpfSysError as e:
        e.stage = "attaching"
        raise
    finally:
        os.close(prog)


def fentry_trial(targets: Iterable[str] = (), btf: btfmod.Btf | None = None,
                 btf_path: str = "/sys/kernel/btf/vmlinux") -> Verdict:
    """Attach a no-op fentry program for real and detach it: the verdict.

    ``bpf_fentry_test1`` is tried first, then ``targets`` (vmlinux functions the
    caller would trace anyway). An error that concerns one function (ENOENT,
    EINVAL at attach...) moves on to the next; one that concerns the kernel
    (a permission, ENOTSUPP) ends the trial. ``btf``: the parsed vmlinux BTF
    when the caller has it (else read from ``btf_path``)."""
    if btf is None:
        if not os.path.exists(btf_path):
            return Verdict(False, f"fentry programs need BTF, and this kernel has no {btf_path}: "
                                  "CONFIG_DEBUG_INFO_BTF is off")
        btf = btfmod.load_vmlinux(btf_path)
        if btf is None:
            return Verdict(False, f"fentry programs need BTF, and {btf_path} cannot be read or parsed")
    ids = []
    for name in dict.fromkeys((TRIAL_TARGET, *targets)):
        tid = btf.find(name, (btfmod.KIND_FUNC,))
        if tid is not None:
            ids.append(tid)
    if not ids:
        return Verdict(False, f"neither {TRIAL_TARGET} nor any MMU-notifier hook is a function of "
                              "the kernel's BTF: no fentry program can attach")
    first: Verdict | None = None
    for tid in ids:
        try:
            _attach_once(tid)
            return Verdict(True)
        except bpfsys.BpfSysError as e:
            v = Verdict(False, reason_for(getattr(e, "stage", "loading"), e.errno, privileged()))
            if e.errno in _KERNEL_WIDE:
                return v
            first = first or v
    return first
