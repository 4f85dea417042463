"""Giving the memory the process no longer needs back to the system."""

from __future__ import annotations

import ctypes
import re

MADV_DONTNEED = 4
PT_LOAD, PT_DYNAMIC, PF_W = 1, 2, 2
DT_NULL, DT_TEXTREL, DT_FLAGS, DF_TEXTREL = 0, 22, 30, 0x4
_RANGE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) ")


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


class _Phdr(ctypes.Structure):
    _fields_ = [("p_type", ctypes.c_uint32), ("p_flags", ctypes.c_uint32), ("p_offset", ctypes.c_uint64),
                ("p_vaddr", ctypes.c_uint64), ("p_paddr", ctypes.c_uint64), ("p_filesz", ctypes.c_uint64),
                ("p_memsz", ctypes.c_uint64), ("p_align", ctypes.c_uint64)]


class _DlPhdrInfo(ctypes.Structure):
    _fields_ = [("dlpi_addr", ctypes.c_uint64), ("dlpi_name", ctypes.c_char_p),
                ("dlpi_phdr", ctypes.POINTER(_Phdr)), ("dlpi_phnum", ctypes.c_uint16)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(_DlPhdrInfo), ctypes.c_size_t, ctypes.c_void_p)


def _has_textrel(base: int, dyn: _Phdr) -> bool:
    """Does the object's dynamic section ask for relocations in its text
    (which the loader makes writable, then writes, while it relocates)?"""
    p = ctypes.cast(base + dyn.p_vaddr, ctypes.POINTER(ctypes.c_int64))
    for i in range(0, 2 * 4096, 2):
        tag, val = p[i], p[i + 1]
        if tag == DT_NULL:
            return False
        if tag == DT_TEXTREL or (tag == DT_FLAGS and val & DF_TEXTREL):
            return True
    return True         # no end seen: not a section to trust


def loaded_read_only_segments(page: int) -> list[tuple[int, int]]:
    """[start, end) of every read-only segment (text, constants, symbol and
    relocation tables) of the objects the dynamic linker lists
    (dl_iterate_phdr): mapped from their files and, in an object without
    text relocations, never written. An object is listed once its segments
    are mapped, and CPython never unloads one, so none of these ranges can
    be unmapped or mapped anew beneath us."""
    out: list[tuple[int, int]] = []

    def each(info, _size, _data):
        i = info.contents
        phdrs = [i.dlpi_phdr[k] for k in range(i.dlpi_phnum)]
        dyn = [p for p in phdrs if p.p_type == PT_DYNAMIC]
        if not dyn or _has_textrel(i.dlpi_addr, dyn[0]):
            return 0    # static, or text that the loader writes while it relocates
        for p in phdrs:
            if p.p_type == PT_LOAD and not p.p_flags & PF_W and p.p_memsz:
                lo = (i.dlpi_addr + p.p_vaddr) & ~(page - 1)
                hi = (i.dlpi_addr + p.p_vaddr + p.p_memsz + page - 1) & ~(page - 1)
                out.append((lo, hi))
        return 0

    libc = ctypes.CDLL(None)
    libc.dl_iterate_phdr.argtypes = [_CALLBACK, ctypes.c_void_p]
    libc.dl_iterate_phdr(_CALLBACK(each), None)
    return out


def clean_read_only_mappings(smaps: str) -> list[tuple[int, int, int]]:
    """(start, end, resident KiB) of each mapping in ``smaps`` (the text of
    /proc/<pid>/smaps) that is a file's, private, not writable, and holds
    nothing but clean pages of the file: none written (Private_Dirty), none
    copied on write (Anonymous: a RELRO segment's relocated pages, read-only
    by now but kept nowhere else), none locked."""
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
                   "ok": perms[1] == "-" and perms[3] == "p" and path.startswith("/") and not path.endswith(
                       " (deleted)")}
        elif cur is not None and cur["ok"]:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Private_Dirty", "Anonymous", "Locked"):
                cur[key] = int(rest.split()[0])
    done(cur)
    return out


def droppable(segments: list[tuple[int, int]], mappings: list[tuple[int, int, int]]) -> list[tuple[int, int]]:
    """The parts of the loaded objects' read-only segments that lie in
    mappings smaps finds clean, non-writable and file-backed: both must say
    so."""
    out = []
    for s_lo, s_hi in sorted(segments):
        for m_lo, m_hi, _kib in mappings:
            lo, hi = max(s_lo, m_lo), min(s_hi, m_hi)
            if lo < hi:
                out.append((lo, hi))
    return out


def drop_clean_library_pages() -> int:
    """Take the loaded objects' clean read-only pages (the Python binary's
    and every shared library's text, constants, symbol and relocation
    tables) out of this process' resident memory: madvise(MADV_DONTNEED) on
    :func:`droppable` ranges, what the kernel's reclaim would do under
    pressure. The page cache keeps them; a page touched again is mapped back
    by a minor fault. Loading bcc's libraries (LLVM, clang) touches ~55 MiB
    of them that bcc's compile does not use again (host, the daemon's
    program: 147 MiB at the compile's end without, 108 with); after the
    compile, the pages it used wait until the next one. Returns the KiB of
    the ranges advised (resident or not); 0 where anything fails (best
    effort)."""
    try:
        import mmap
        segments = loaded_read_only_segments(mmap.PAGESIZE)
        with open("/proc/self/smaps") as f:
            mappings = clean_read_only_mappings(f.read())
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
    except (OSError, AttributeError, ValueError):
        return 0
    return sum(hi - lo for lo, hi in droppable(segments, mappings)
               if madvise(lo, hi - lo, MADV_DONTNEED) == 0) >> 10
