"""The kernel's probe bookkeeping that bcc leaves to us: kprobe events left
behind by a bcc process that died (they would keep firing), and whether a
function's BPF trampoline is really in place (tracefs enabled_functions).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .quiet import debug as _debug


MAXACTIVE = 4096  # kretprobe instances: large, so that deep concurrency is not missed

_KPROBE_EVENTS = ("/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events")


def stale_kprobe_events() -> tuple[str | None, list[str]]:
    """(kprobe_events path, names of the events there whose bcc process is gone)."""
    for path in _KPROBE_EVENTS:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        names = []
        for line in lines:
            m = re.match(r"^[pr]\d*:kprobes/(\S+_bcc_(\d+))\s", line)
            if m and not os.path.exists(f"/proc/{m.group(2)}"):
                names.append(m.group(1))
        return path, names
    return None, []


def remove_stale_kprobe_events() -> int:
    """Remove kprobe events that a killed bcc process left behind.

    Kretprobes with a maxactive go through tracefs's kprobe_events (the perf
    kprobe PMU has no maxactive), and only the process that made them removes
    them. After `kill -9` they stay defined, disabled and with no program, as
    kprobes/[pr]_<symbol>_bcc_<pid>. Those of dead processes are removed here,
    at the next start. Returns how many."""
    path, names = stale_kprobe_events()
    n = 0
    for name in names:
        # os.open, not open(path, "a"): Python seeks to the end of a file it
        # appends to, and tracefs refuses that seek, so nothing was removed
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, f"-:kprobes/{name}\n".encode())
            finally:
                os.close(fd)
            n += 1
        except OSError as e:     # EBUSY while the kernel still holds the dead process's events
            _debug(f"cannot remove stale kprobe event {name}: {e.strerror}")
    return n


def trampoline_listed(enabled_functions: str, symbol: str, module: str | None) -> bool:
    """Does tracefs' enabled_functions list ``symbol`` with a direct call to a
    BPF trampoline? Its lines read ``name [module] (n) R D M  tramp: ...``,
    the direct call on the next line (``direct-->bpf_trampoline_...``)."""
    want = f"{symbol} [{module}]" if module else symbol
    lines = enabled_functions.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(want + " ") or line == want:
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if "bpf_trampoline_" in line or (nxt[:1].isspace() and "direct-->bpf_trampoline_" in nxt):
                return True
    return False


def trampoline_in_place(symbol: str, module: str | None) -> bool:
    for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        try:
            with open(f"{d}/enabled_functions") as f:
                return trampoline_listed(f.read(), symbol, module)
        except OSError:
            continue
    return False


_KPROBE_PROFILES = ("/sys/kernel/tracing/kprobe_profile", "/sys/kernel/debug/tracing/kprobe_profile")


def kprobe_misses(suffix: str, paths=_KPROBE_PROFILES) -> int:
    """Hits the kernel missed, summed over the kprobe events whose name ends
    with ``suffix`` (bcc names a process's events ``..._bcc_<pid>``): the
    third column of tracefs kprobe_profile (a kretprobe out of instances, a
    probe hit while another ran). 0 where tracefs is not there."""
    for p in paths:
        try:
            total = 0
            with open(p) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3 and parts[0].endswith(suffix):
                        total += int(parts[2])
            return total
        except OSError:
            continue
    return 0
