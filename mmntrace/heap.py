"""Giving the C heap's free pages back to the system."""

from __future__ import annotations


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim):
    what clang and LLVM allocated while bcc compiled is mostly free once the
    program is built, and again once the BPF module is unloaded, but stays
    counted in this process' memory until trimmed (6.12 lab guest, the
    daemon's program: 164 MiB after the compile, 137 after the trim; the
    peak stays, the long run does not carry it). Best effort."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
