"""Giving the memory the process no longer needs back to the system."""

from __future__ import annotations

import ctypes
import os
import re
import threading

MADV_DONTNEED = 4
#: a shared library's file (libLLVM-14.so.1, _multiarray_umath.cpython-311-x86_64-linux-gnu.so)
_LIBRARY = re.compile(r"\.so(\.[0-9.]+)?$")
_RANGE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ")

#: what :func:`drop_clean_library_pages` did in this process: KiB of resident
#: pages given back, and the calls it declined (another thread was running)
given_back = {"kib": 0, "declined": 0}


#: mallopt()'s parameter for the most arenas glibc's malloc makes (malloc.h)
M_ARENA_MAX = -8


def one_arena() -> bool:
    """Have every thread of this process allocate from glibc's main arena
    (``mallopt(M_ARENA_MAX, 1)``), as ``MALLOC_ARENA_MAX=1`` would: a thread
    that allocates otherwise gets an arena of its own, whose pages the others
    never reuse and which keeps what it freed. A streaming recorder's segment
    worker converts a burst on its thread while the loop drains on the main
    one. Alternated in one 6.1 lab guest (three recorders each, a
    ``notifier_bench 800 64`` run then one more, each recorder's segments
    written) its peak RSS was 133.3-136.3 MiB with MALLOC_ARENA_MAX=1 against
    149.9-151.8 with glibc's default; in another boot, with this call against
    MALLOC_ARENA_MAX=8, 135.7 / 136.4 against 147.0 / 151.5. Its CPU during a
    run and the runs moved within the lab's noise (medians of the five pairs:
    1.94 s against 2.52, runs 9.21 s against 10.32): the drain and the
    conversion seldom overlap (a burst is converted once over,
    mmntrace/segwriter.py), so they seldom wait for the arena's lock. Effective only before
    a second thread first allocates (glibc fixes its arena limit then): call it
    before any thread starts. The user's own choice (``MALLOC_ARENA_MAX``, a
    ``glibc.malloc.arena_max`` tunable) stands. False where not done."""
    if "MALLOC_ARENA_MAX" in os.environ or "arena_max" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 1) == 1
    except (OSError, AttributeError):
        return False


def give_back_memory() -> None:
    """Return the C heap's free pages to the system (glibc's malloc_trim):
    what clang and LLVM allocated while bcc compiled is mostly free once the
    program is built, and again once the BPF module is unloaded, but stays
    counted in this process' memory until trimmed (6.12 lab guest, the
    daemon's program: 164 MiB after the compile, 137 after the trim; the
    peak stays, the long run does not carry it). Then the libraries' clean
    pages (:func:`drop_clean_library_pages`). Best effort."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    drop_clean_library_pages()


def clean_library_ranges(smaps: str) -> list[tuple[int, int, int]]:
    """(start, end, resident KiB) of each mapping in ``smaps`` (the text of
    /proc/<pid>/smaps) that is a shared library's, private, not writable,
    and holds nothing but clean pages of its file: no page written since it
    was mapped (Private_Dirty), none copied on write (Anonymous: a RELRO
    segment's relocated pages, which are read-only by now but exist nowhere
    else), none locked."""
    out: list[tuple[int, int, int]] = []
    cur: dict | None = None

    def done(m):
        if (m is not None and m["ok"] and m.get("Rss", 0) and not m.get("Private_Dirty", 1)
                and not m.get("Anonymous", 1) and not m.get("Locked", 1)):
            out.append((m["start"], m["end"], m["Rss"]))

    for line in smaps.splitlines():
        r = _RANGE.match(line)
        if r:
            done(cur)
            parts = line.split(None, 5)
            path = parts[5].strip() if len(parts) > 5 else ""
            perms = r.group(3)
            cur = {"start": int(r.group(1), 16), "end": int(r.group(2), 16),
                   "ok": perms[1] == "-" and perms[3] == "p" and bool(_LIBRARY.search(path))}
        elif cur is not None and cur["ok"]:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Private_Dirty", "Anonymous", "Locked"):
                cur[key] = int(rest.split()[0])
    done(cur)
    return out


def drop_clean_library_pages() -> int:
    """Take the shared libraries' clean pages out of this process' resident
    memory (madvise(MADV_DONTNEED) on :func:`clean_library_ranges`): what the
    kernel's reclaim would do under pressure. The page cache keeps them; a
    page touched again is mapped back by a minor fault. Loading bcc's
    libraries (LLVM, clang) touches ~55 MiB of them, the relocation and
    symbol tables among them, that bcc's compile does not use again (host,
    the daemon's program: 147 MiB at the compile's end without, 108 with);
    after the compile, the pages it used wait until the next one.

    Only while this is the process's one Python thread: a library that
    another thread is loading meanwhile (an import: dlopen()) is first
    mapped read-only whole, then in parts, writable ones among them, which
    the loader then writes; advice given to a range read before that would
    throw those writes away. With no other thread, no library is being
    loaded, and Python never unloads one. Returns the KiB given back; 0
    where it declined or anything failed (best effort)."""
    if threading.active_count() > 1:
        given_back["declined"] += 1
        return 0
    try:
        with open("/proc/self/smaps") as f:
            ranges = clean_library_ranges(f.read())
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        return 0
    kib = sum(k for start, end, k in ranges if madvise(start, end - start, MADV_DONTNEED) == 0)
    given_back["kib"] += kib
    return kib
