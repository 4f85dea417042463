"""heap.py: which mappings may lose their resident pages, and that losing
them takes them out of this process' memory and nothing else."""

import os
import re
import subprocess
import sys
import textwrap

from mmntrace import heap


def _mapping(lo, hi, perms, path, rss=8, private_dirty=0, anonymous=0, locked=0):
    return textwrap.dedent(f"""\
        {lo:x}-{hi:x} {perms} 00000000 fe:00 1234                       {path}
        Size:                 {(hi - lo) >> 10} kB
        Rss:                  {rss} kB
        Pss:                  {rss} kB
        Shared_Clean:          0 kB
        Shared_Dirty:          0 kB
        Private_Clean:        {rss - private_dirty} kB
        Private_Dirty:        {private_dirty} kB
        Anonymous:            {anonymous} kB
        Locked:               {locked} kB
        VmFlags: rd mr mw me
        """)


def test_only_clean_private_read_only_library_mappings():
    lib = "/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1"
    smaps = "".join([
        _mapping(0x1000, 0x3000, "r--p", lib),                                  # yes
        _mapping(0x3000, 0x9000, "r-xp", lib, rss=24),                          # yes
        _mapping(0x9000, 0xa000, "r--p", lib, private_dirty=4, anonymous=4),    # RELRO: relocated
        _mapping(0xa000, 0xb000, "rw-p", lib),                                  # writable
        _mapping(0xb000, 0xc000, "r--s", lib),                                  # shared
        _mapping(0xc000, 0xd000, "r--p", "/usr/lib/python3.11/x.cpython-311-x86_64-linux-gnu.so"),  # yes
        _mapping(0xd000, 0xe000, "r--p", "/tmp/data.bin"),                      # not a library
        _mapping(0xe000, 0xf000, "r--p", lib + " (deleted)"),                   # replaced on disk
        _mapping(0xf000, 0x10000, "r-xp", lib, locked=4),                       # locked
        _mapping(0x10000, 0x11000, "r-xp", lib, rss=0),                         # nothing resident
        _mapping(0x11000, 0x12000, "r--p", ""),                                 # anonymous
        _mapping(0x12000, 0x13000, "r--p", "/usr/lib/libfoo.so.2.1.0", rss=4),  # yes (last)
    ])
    assert heap.clean_library_ranges(smaps) == [(0x1000, 0x3000, 8), (0x3000, 0x9000, 24), (0xc000, 0xd000, 8),
                                                (0x12000, 0x13000, 4)]


def test_this_process_ranges_parse():
    with open("/proc/self/smaps") as f:
        ranges = heap.clean_library_ranges(f.read())
    assert ranges and all(lo < hi and kib > 0 for lo, hi, kib in ranges)


def test_dropping_lowers_resident_file_pages_and_the_libraries_still_work():
    """In a child: numpy's libraries loaded and used, their clean pages given
    back, then used again (the pages come back from the page cache)."""
    code = textwrap.dedent("""
        import re, numpy as np
        from mmntrace import heap
        def file_kib():
            return int(re.search(r"RssFile:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
        a = np.arange(100000, dtype=np.int64)
        want = int((a * 3).sum())
        before = file_kib()
        got = heap.drop_clean_library_pages()
        after = file_kib()
        assert got > 1024 and heap.given_back["kib"] == got, (got, heap.given_back)
        assert after < before - 1024, (before, after)
        assert int((a * 3).sum()) == want
        np.linalg.inv(np.eye(3))
        print("ok", before, after, got)
        """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert re.match(r"ok \d+ \d+ \d+", r.stdout)


def test_give_back_memory_never_raises(monkeypatch):
    monkeypatch.setattr(heap, "_RANGE", re.compile(r"no such line"))
    heap.give_back_memory()
    assert heap.drop_clean_library_pages() == 0
    assert heap.drop_clean_library_pages() == 0


def test_declines_while_another_thread_runs():
    """Another thread could be loading a library: nothing is advised then."""
    import threading
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        before = dict(heap.given_back)
        assert heap.drop_clean_library_pages() == 0
        assert heap.given_back["declined"] == before["declined"] + 1 and heap.given_back["kib"] == before["kib"]
    finally:
        stop.set()
        t.join()


_ARENAS = """
import ctypes, os, sys, threading
from mmntrace.heap import one_arena
print(one_arena(), flush=True)
def work():
    keep = [bytearray(1000) for _ in range(20000)]
ts = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in ts]
[t.join() for t in ts]
os.dup2(1, 2)
ctypes.CDLL("libc.so.6").malloc_stats()     # one "Arena N:" block per arena, on stderr
"""


def test_one_arena_keeps_every_threads_allocations_in_the_main_one_unless_the_user_chose():
    """heap.one_arena (record's start, before its threads): three threads that
    allocate share glibc's main arena, where by default each gets its own; a
    MALLOC_ARENA_MAX of the user's own stands."""
    import subprocess
    import sys

    def run(**env):
        out = subprocess.run([sys.executable, "-c", _ARENAS], capture_output=True, text=True, check=True,
                             env={**{k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}, **env})
        return out.stdout.splitlines()[0], out.stdout.count("Arena ")
    assert run() == ("True", 1)
    done, arenas = run(MALLOC_ARENA_MAX="8")
    assert done == "False" and arenas == 4
