"""Python client of mmnt_test.ko, the test secondary-MMU driver (tests/kmod).

The module is the ground truth the tracer is checked against: it counts every
callback it receives and logs hook, event, range, blockable, preempt_count()
and irqs_disabled() for each. Layouts come from the module's UAPI header.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np

from mmntrace.layout import header

#: the test module's uapi, parsed like the tracer's own header
TESTMOD_HEADER = Path(__file__).resolve().parents[2] / "tests" / "kmod" / "mmnt_test_uapi.h"

DEVICE = "/dev/mmnt_test"

_H = header(TESTMOD_HEADER)
RECORD = _H.structs["mmnt_test_record"]
COUNTS = _H.structs["mmnt_test_counts"]
INFO = _H.structs["mmnt_test_info"]
HOOKS = {k[len("MMNT_T_"):].lower(): v for k, v in _H.enums["mmnt_test_hook"].items()
         if k != "MMNT_T_NR_HOOKS"}
BEHAVIOURS = {k[len("MMNT_B_"):].lower(): v for k, v in _H.enums["mmnt_test_behaviour"].items()}
NR_HOOKS = _H.defines["MMNT_T_NR_HOOKS"]


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("M") << 8) | nr


_IO, _IOW, _IOR = 0, 1, 2
IOC_INFO = _ioc(_IOR, 1, INFO.itemsize)
IOC_REGISTER = _ioc(_IOW, 2, _H.structs["mmnt_test_register"].itemsize)
IOC_UNREGISTER = _ioc(_IO, 3, 0)
IOC_INTERVAL = _ioc(_IOW, 4, _H.structs["mmnt_test_interval"].itemsize)
IOC_BEHAVE = _ioc(_IOW, 5, _H.structs["mmnt_test_behave"].itemsize)
IOC_COUNTS = _ioc(_IOR, 6, COUNTS.itemsize)
IOC_RESET = _ioc(_IO, 7, 0)
IOC_DSLEEP = _ioc(_IOW, 8, 4)
IOC_INTERVAL_ALT = _ioc(_IOW, 9, _H.structs["mmnt_test_interval"].itemsize)


def available() -> bool:
    return os.path.exists(DEVICE)


class TestModule:
    """One client of /dev/mmnt_test (one open file = one set of subscriptions)."""

    __test__ = False  # not a pytest class

    def __init__(self):
        self.fd = os.open(DEVICE, os.O_RDWR | os.O_CLOEXEC)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _ioctl_in(self, req: int, dtype: np.dtype, **fields) -> None:
        buf = np.zeros(1, dtype)
        for k, v in fields.items():
            buf[k] = v
        fcntl.ioctl(self.fd, req, buf.tobytes())

    def _ioctl_out(self, req: int, dtype: np.dtype) -> np.void:
        out = bytearray(dtype.itemsize)
        fcntl.ioctl(self.fd, req, out, True)
        return np.frombuffer(bytes(out), dtype)[0]

    def info(self) -> dict:
        i = self._ioctl_out(IOC_INFO, INFO)
        feats = int(i["features"])
        return {
            "secondary_tlb_is_arch": bool(feats & _H.defines["MMNT_F_SECONDARY_TLB_IS_ARCH"]),
            "change_pte": bool(feats & _H.defines["MMNT_F_CHANGE_PTE"]),
            "range_has_vma": bool(feats & _H.defines["MMNT_F_RANGE_HAS_VMA"]),
            "record_size": int(i["record_size"]),
            "log_capacity": int(i["log_capacity"]),
        }

    def register(self, pid: int = 0, tlb_only: bool = False) -> None:
        """Subscribe to the mm of ``pid`` (0: the caller's own). ``tlb_only``:
        the secondary-TLB subscription alone, whose ops have no release."""
        self._ioctl_in(IOC_REGISTER, _H.structs["mmnt_test_register"], pid=pid,
                       flags=_H.defines["MMNT_REG_TLB_ONLY"] if tlb_only else 0)

    def unregister(self) -> None:
        fcntl.ioctl(self.fd, IOC_UNREGISTER)

    def interval(self, start: int, length: int, alt: bool = False) -> None:
        """An interval notifier on [start, start + length) of this client's mm
        (at most 16 per client); ``alt``: with the module's second ops table
        (its invalidate is mmnt_interval_invalidate_alt)."""
        self._ioctl_in(IOC_INTERVAL_ALT if alt else IOC_INTERVAL, _H.structs["mmnt_test_interval"],
                       start=start, length=length)

    def behave(self, hook: str, behaviour: str, arg: int = 0, count: int = 0) -> None:
        """Inject ``behaviour`` in ``hook``'s callback, for the next ``count`` invocations (0: all)."""
        self._ioctl_in(IOC_BEHAVE, _H.structs["mmnt_test_behave"],
                       hook=HOOKS[hook], behaviour=BEHAVIOURS[behaviour], arg=arg, count=count)

    def counts(self) -> dict:
        c = self._ioctl_out(IOC_COUNTS, COUNTS)
        names = sorted(HOOKS, key=HOOKS.get)
        return {
            "calls": {n: int(c["calls"][HOOKS[n]]) for n in names},
            "atomic": {n: int(c["atomic"][HOOKS[n]]) for n in names},
            "logged": int(c["logged"]),
            "lost": int(c["lost"]),
            # the module's clock (CLOCK_MONOTONIC, as bpf_ktime_get_ns): counting
            # covered exactly the callbacks logged in [reset_ns, read_ns]
            "reset_ns": int(c["reset_ns"]),
            "read_ns": int(c["read_ns"]),
            # injected msleep() calls, and those in which the task was really
            # scheduled out (its nvcsw moved): the sleep rule's ground truth
            "msleeps": int(c["msleeps"]),
            "msleeps_switched": int(c["msleeps_switched"]),
            # each call's own time as the module clocked it (entry to its record):
            # what the tracer's duration of the call must contain
            "body_ns": {n: int(c["body_ns"][HOOKS[n]]) for n in names},
        }

    def reset(self) -> None:
        fcntl.ioctl(self.fd, IOC_RESET)

    def dsleep(self, ms: int) -> None:
        """Sleep uninterruptibly in the kernel (releases the GIL while parked)."""
        import ctypes
        import ctypes.util
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        arg = ctypes.c_uint32(ms)
        if libc.ioctl(self.fd, ctypes.c_ulong(IOC_DSLEEP), ctypes.byref(arg)) != 0:
            raise OSError(ctypes.get_errno(), "MMNT_IOC_DSLEEP failed")

    def records(self) -> np.ndarray:
        """Consume and return every logged callback, oldest first."""
        chunks = []
        n = RECORD.itemsize * 4096
        while True:
            b = os.read(self.fd, n)
            if not b:
                break
            chunks.append(b)
        return np.frombuffer(b"".join(chunks), RECORD).copy()
