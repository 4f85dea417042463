"""The few bpf(2) commands bcc 0.26 cannot do for us: fentry/fexit on module
functions, and kprobes whose BPF link carries a cookie.

bcc 0.26 (Debian 12) binds a trampoline program to its target by name, in
vmlinux BTF only (module support came in bcc 0.28). Driver callbacks live in
modules. So mmntrace compiles their programs with bcc as ordinary functions
(their map references are already resolved to fds), takes the instructions
(``BPF.dump_func``) and loads them here as ``BPF_PROG_TYPE_TRACING`` with the
module's BTF object and the function's BTF id, then attaches each with
``BPF_RAW_TRACEPOINT_OPEN``: the path libbpf takes, through the raw syscall.

bcc 0.26 attaches a kprobe program with ``PERF_EVENT_IOC_SET_BPF``, which
passes no cookie. :func:`kprobe_link` opens the kprobe as libbpf does (a
``perf_event_open`` of the kprobe PMU, the function named in ``config1``) and
attaches the program with ``BPF_LINK_CREATE`` and a ``bpf_cookie`` (5.15+),
which the program reads with ``bpf_get_attach_cookie``.

Facts this relies on (include/uapi/linux/bpf.h and perf_event.h, stable ABI):
the ``union bpf_attr`` offsets below, ``BPF_PROG_TYPE_TRACING`` = 26,
``BPF_TRACE_FENTRY`` = 24 and ``BPF_TRACE_FEXIT`` = 25, ``BPF_PERF_EVENT`` =
41, ``struct bpf_btf_info``, and ``struct perf_event_attr``'s type, size,
config1 (kprobe_func) and config2 (probe_offset) at 0, 4, 56 and 64.
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
PERF_EVENT = 41                 # enum bpf_attach_type: BPF_PERF_EVENT
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(os.uname().machine)
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_ATTR_SIZE = 112           # PERF_ATTR_SIZE_VER5: config1/config2 included
_PERF_EVENT_IOC_ENABLE = 0x2400
KPROBE_PMU_TYPE = "/sys/bus/event_source/devices/kprobe/type"


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


#: struct bpf_prog_info (uapi/linux/bpf.h): the offsets of its run counters
#: (run_time_ns and run_cnt 5.1+, recursion_misses 5.12+), and the size asked for
PROG_INFO_COUNTERS = {"run_time_ns": 192, "run_cnt": 200, "recursion_misses": 208}
_PROG_INFO_SIZE = 216


def prog_counters(fd: int) -> dict[str, int] | None:
    """A loaded program's run counters (PROG_INFO_COUNTERS) in one
    BPF_OBJ_GET_INFO_BY_FD, where its fdinfo is a file to open, read and parse
    (a running recorder looks at each program's misses every few seconds). A
    counter past what the kernel's struct holds is left out; None if the call
    fails."""
    info = _attr(_PROG_INFO_SIZE)
    a = _attr(16)
    struct.pack_into("IIQ", a, 0, fd, len(info), ctypes.addressof(info))   # bpf_fd, info_len, info
    try:
        _bpf(OBJ_GET_INFO_BY_FD, a, "OBJ_GET_INFO_BY_FD")
    except BpfSysError:
        return None
    filled = struct.unpack_from("I", a, 4)[0]       # info_len: what the kernel wrote
    return {k: struct.unpack_from("Q", info, off)[0] for k, off in PROG_INFO_COUNTERS.items() if off + 8 <= filled}


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
                 license: str = "GPL", **subprogs) -> int:
    """Load ``insns`` as an fentry (``attach`` = TRACE_FENTRY) or fexit program
    on BTF function ``btf_id`` of the BTF object ``btf_obj_fd``; returns its fd.
    ``subprogs``: :func:`load_prog`'s prog_btf_fd and func_info."""
    return load_prog(insns, name=name, prog_type=PROG_TYPE_TRACING, attach=attach, btf_obj_fd=btf_obj_fd,
                     btf_id=btf_id, license=license, **subprogs)


def load_prog(insns: bytes, *, name: str, prog_type: int, attach: int = 0, btf_obj_fd: int = 0,
              btf_id: int = 0, kern_version: int = 0, license: str = "GPL", prog_btf_fd: int | None = None,
              func_info: list[tuple[int, int]] = ()) -> int:
    """Load ``insns`` as a program of ``prog_type`` (tracing ones on BTF function
    ``btf_id`` of the BTF object ``btf_obj_fd``); returns its fd. A program
    with subprograms carries ``func_info`` ((first instruction, BTF FUNC id)
    per function) over the BTF object ``prog_btf_fd`` (:func:`func_btf`). A
    refusal raises :class:`BpfSysError` with the verifier's words in ``log``."""
    ins = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    finfo = ctypes.create_string_buffer(b"".join(struct.pack("II", off, tid) for off, tid in func_info) or b"\0")

    def load(log):
        a = _attr()
        struct.pack_into("IIQQ", a, 0, prog_type, len(insns) // 8, ctypes.addressof(ins),
                         ctypes.addressof(lic))
        if log is not None:
            struct.pack_into("IIQ", a, 24, 1, len(log), ctypes.addressof(log))   # log_level 1
        struct.pack_into("I", a, 40, kern_version)
        struct.pack_into("16s", a, 48, name.encode()[:15])
        struct.pack_into("I", a, 68, attach)                                   # expected_attach_type
        if func_info:       # prog_btf_fd, func_info_rec_size, func_info, func_info_cnt
            struct.pack_into("IIQI", a, 72, prog_btf_fd, 8, ctypes.addressof(finfo), len(func_info))
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


BTF_LOAD = 18
_BTF_KIND_INT, _BTF_KIND_FUNC, _BTF_KIND_FUNC_PROTO = 1, 12, 13


def func_btf(names: tuple[str, ...]) -> int:
    """Load a BTF object of one static function per name, each ``int (void)``
    (ids 3, 4...: 1 is int, 2 the prototype), for the func_info that a
    program with subprograms must carry; its fd. The verifier reads a static
    function's kind and place from it, not its arguments."""
    strs = bytearray(b"\0int\0")
    offs = []
    for n in names:
        offs.append(len(strs))
        strs += n.encode() + b"\0"
    types = struct.pack("IIII", 1, _BTF_KIND_INT << 24, 4, 0x01000020)      # int: signed, 32 bits
    types += struct.pack("III", 0, _BTF_KIND_FUNC_PROTO << 24, 1)           # int (void)
    for off in offs:
        types += struct.pack("III", off, _BTF_KIND_FUNC << 24, 2)           # static
    blob = struct.pack("HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strs)) + types + bytes(strs)
    buf = ctypes.create_string_buffer(blob, len(blob))
    log = ctypes.create_string_buffer(1 << 12)
    a = _attr(32)
    struct.pack_into("QQIII", a, 0, ctypes.addressof(buf), ctypes.addressof(log), len(blob), len(log), 1)
    try:
        return _bpf(BTF_LOAD, a, "BTF_LOAD")
    except BpfSysError as e:
        e.log = log.value.decode(errors="replace")
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


def kprobe_pmu_type() -> int | None:
    """The kprobe PMU's perf type (4.17+), None where there is none."""
    try:
        with open(KPROBE_PMU_TYPE) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def kprobe_link(prog_fd: int, func: str, cookie: int, pmu_type: int) -> tuple[int, int]:
    """Attach the kprobe program ``prog_fd`` at the entry of kernel function
    ``func`` through a BPF link carrying ``cookie``; returns (perf event fd,
    link fd): closing both detaches. A refusal raises BpfSysError (its errno:
    ENOENT/EINVAL for a function the kernel will not probe, EINVAL or
    EOPNOTSUPP for a kernel without perf-event links)."""
    if _NR_PERF_EVENT_OPEN is None:
        raise BpfSysError("perf_event_open", errno.ENOSYS)
    name = ctypes.create_string_buffer(func.encode())
    attr = ctypes.create_string_buffer(_PERF_ATTR_SIZE)
    struct.pack_into("II", attr, 0, pmu_type, _PERF_ATTR_SIZE)     # type, size; config 0: an entry probe
    struct.pack_into("QQ", attr, 56, ctypes.addressof(name), 0)      # config1: kprobe_func, config2: offset
    pfd = _libc.syscall(_NR_PERF_EVENT_OPEN, attr, -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
    if pfd < 0:
        raise BpfSysError(f"perf_event_open (kprobe on {func})", ctypes.get_errno())
    pfd = int(pfd)
    try:
        a = _attr(32)
        struct.pack_into("IIIIQ", a, 0, prog_fd, pfd, PERF_EVENT, 0, cookie & (1 << 64) - 1)
        link = _bpf(LINK_CREATE, a, f"LINK_CREATE (kprobe on {func})")
    except BaseException:
        os.close(pfd)
        raise
    _libc.ioctl(pfd, _PERF_EVENT_IOC_ENABLE, 0)     # (enabled at creation already: as libbpf does)
    return pfd, link
