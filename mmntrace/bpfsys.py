"""The few bpf(2) commands bcc 0.26 cannot do for us: fentry/fexit on module functions.

bcc 0.26 (Debian 12) binds a trampoline program to its target by name, in
vmlinux BTF only (module support came in bcc 0.28). Driver callbacks live in
modules. So mmntrace compiles their programs with bcc as ordinary functions
(their map references are already resolved to fds), takes the instructions
(``BPF.dump_func``) and loads them here as ``BPF_PROG_TYPE_TRACING`` with the
module's BTF object and the function's BTF id, then attaches each with
``BPF_RAW_TRACEPOINT_OPEN``: the path libbpf takes, through the raw syscall.

Facts this relies on (include/uapi/linux/bpf.h, stable ABI): the ``union
bpf_attr`` offsets below, ``BPF_PROG_TYPE_TRACING`` = 26, ``BPF_TRACE_FENTRY``
= 24 and ``BPF_TRACE_FEXIT`` = 25, and ``struct bpf_btf_info``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

PROG_LOAD, OBJ_GET_INFO_BY_FD, RAW_TRACEPOINT_OPEN = 5, 15, 17
BTF_GET_FD_BY_ID, BTF_GET_NEXT_ID = 19, 23
PROG_TYPE_TRACING = 26
TRACE_FENTRY, TRACE_FEXIT, TRACE_ITER = 24, 25, 28
LINK_CREATE, ITER_CREATE = 28, 33


class BpfSysError(OSError):
    """A bpf(2) command failed; ``log`` holds the verifier's words for a load."""

    def __init__(self, what: str, err: int, log: str = ""):
        super().__init__(err, f"{what}: {os.strerror(err)}")
        self.log = log


def _bpf(cmd: int, attr: ctypes.Array, what: str) -> int:
    if _NR_BPF is None:
        raise BpfSysError(what, errno.ENOSYS)
    r = _libc.syscall(_NR_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if r < 0:
        raise BpfSysError(what, ctypes.get_errno())
    return int(r)


def _attr(size: int = 128) -> ctypes.Array:
    return ctypes.create_string_buffer(size)


def btf_obj_fd(name: str) -> int | None:
    """An fd of the kernel BTF object called ``name`` (a module's), or None."""
    start = 0
    while True:
        a = _attr(16)
        struct.pack_into("I", a, 0, start)
        try:
            _bpf(BTF_GET_NEXT_ID, a, "BTF_GET_NEXT_ID")
        except BpfSysError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        start = struct.unpack_from("I", a, 4)[0]
        a = _attr(16)
        struct.pack_into("I", a, 0, start)
        try:
            fd = _bpf(BTF_GET_FD_BY_ID, a, "BTF_GET_FD_BY_ID")
        except BpfSysError:
            continue            # gone meanwhile (module unloaded)
        if _btf_name(fd) == name:
            return fd
        os.close(fd)


def _btf_name(fd: int) -> str | None:
    name = ctypes.create_string_buffer(64)
    info = _attr(40)            # struct bpf_btf_info
    struct.pack_into("QI", info, 16, ctypes.addressof(name), len(name))   # .name, .name_len
    a = _attr(16)
    struct.pack_into("IIQ", a, 0, fd, len(info), ctypes.addressof(info))
    try:
        _bpf(OBJ_GET_INFO_BY_FD, a, "OBJ_GET_INFO_BY_FD")
    except BpfSysError:
        return None
    return name.value.decode(errors="replace")


def load_tracing(insns: bytes, *, name: str, attach: int, btf_obj_fd: int, btf_id: int,
                 license: str = "GPL") -> int:
    """Load ``insns`` as an fentry (``attach`` = TRACE_FENTRY) or fexit program
    on BTF function ``btf_id`` of the BTF object ``btf_obj_fd``; returns its fd."""
    ins = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())

    def load(log):
        a = _attr()
        struct.pack_into("IIQQ", a, 0, PROG_TYPE_TRACING, len(insns) // 8, ctypes.addressof(ins),
                         ctypes.addressof(lic))
        if log is not None:
            struct.pack_into("IIQ", a, 24, 1, len(log), ctypes.addressof(log))   # log_level 1
        struct.pack_into("16s", a, 48, name.encode()[:15])
        struct.pack_into("I", a, 68, attach)                                   # expected_attach_type
        struct.pack_into("II", a, 108, btf_id, btf_obj_fd)                     # attach_btf_id, _obj_fd
        return _bpf(PROG_LOAD, a, f"loading {name}")

    try:
        return load(None)
    except BpfSysError as e:
        log = ctypes.create_string_buffer(1 << 20)     # again, for the verifier's words
        try:
            return load(log)        # it took it this time
        except BpfSysError:
            pass
        e.log = log.value.decode(errors="replace")[-2000:]
        raise


def attach_tracing(prog_fd: int) -> int:
    """Attach a loaded fentry/fexit program where it was loaded for; returns the link fd
    (closing it detaches)."""
    a = _attr(16)
    struct.pack_into("QI", a, 0, 0, prog_fd)
    return _bpf(RAW_TRACEPOINT_OPEN, a, "RAW_TRACEPOINT_OPEN")



def iter_link(prog_fd: int) -> int:
    """BPF_LINK_CREATE for an iterator program (no target parameters); the link fd."""
    a = _attr(32)
    struct.pack_into("III", a, 0, prog_fd, 0, TRACE_ITER)
    return _bpf(LINK_CREATE, a, "LINK_CREATE (iterator)")


def iter_read(link_fd: int, limit: int = 64 << 20) -> bytes:
    """Run an iterator once (BPF_ITER_CREATE, then read to the end): what it wrote."""
    a = _attr(8)
    struct.pack_into("I", a, 0, link_fd)
    fd = _bpf(ITER_CREATE, a, "ITER_CREATE")
    parts, n = [], 0
    try:
        while n < limit:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            parts.append(b)
            n += len(b)
    finally:
        os.close(fd)
    return b"".join(parts)
