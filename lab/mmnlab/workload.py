"""Workload scenarios that make a real kernel send every MMU-notifier event.

Each scenario works on memory of its own and tells which address range it
used, so a test can pick its callbacks out of the test module's log. The
subscribers are real: the test module (tests/kmod, our own driver) and KVM
(``KVM_CREATE_VM`` plus a memory slot registers KVM's mmu_notifier on the mm).

Run as a process, a workload talks a tiny line protocol so that a test or a
benchmark can start tracers between set-up and the work, and read the ground
truth before the process exits (exit itself sends notifier events)::

    python -m mmnlab.workload --kvm --out DIR mprotect cow ...
    -> "ready PID"        (subscribers registered; waits for a line on stdin)
    <- "go"
    -> "counted"          (scenarios ran, module counters read; now idle)
    <- "save"
    -> "done"             (results in DIR/workload.json and DIR/*.npy)
    <- "exit"             (or EOF)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import mmap as _mmap
import os
import signal
import struct
import sys
import time
from pathlib import Path

import numpy as np

from . import testmod

PAGE = os.sysconf("SC_PAGE_SIZE")
HPAGE = 2 << 20

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.syscall.restype = ctypes.c_long

PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_PRIVATE, MAP_ANONYMOUS, MAP_FIXED_NOREPLACE = 0x02, 0x20, 0x100000
MADV_DONTNEED, MADV_MERGEABLE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT = 4, 12, 14, 15, 21
SYS_move_pages = {"x86_64": 279, "aarch64": 239}.get(os.uname().machine, 279)
MPOL_MF_MOVE = 1 << 1


def _check(ret: int, what: str) -> int:
    if ret == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return ret


def mmap_anon(length: int, prot: int = PROT_READ | PROT_WRITE, align: int = 0) -> int:
    if align:
        raw = libc.mmap(None, length + align, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if raw in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        addr = (raw + align - 1) & ~(align - 1)
        if addr > raw:
            libc.munmap(raw, addr - raw)
        tail = raw + length + align - (addr + length)
        if tail:
            libc.munmap(addr + length, tail)
        return addr
    addr = libc.mmap(None, length, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap failed")
    return addr


def touch(addr: int, length: int, value: int = 1) -> None:
    for off in range(0, length, PAGE):
        ctypes.c_char.from_address(addr + off).value = bytes([value & 0xFF])


def fill(addr: int, length: int, value: int) -> None:
    ctypes.memset(addr, value, length)


# ---------------------------------------------------------------- KVM

KVM_CREATE_VM = 0xAE01
KVM_SET_USER_MEMORY_REGION = 0x4020AE46


class Kvm:
    """A VM with one memory slot: KVM's mmu_notifier on this process's mm."""

    def __init__(self, slot_bytes: int = 16 * PAGE):
        self.dev = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        import fcntl
        self.vm = fcntl.ioctl(self.dev, KVM_CREATE_VM, 0)
        self.slot_addr = mmap_anon(slot_bytes)
        touch(self.slot_addr, slot_bytes)
        region = struct.pack("IIQQQ", 0, 0, 0, slot_bytes, self.slot_addr)
        fcntl.ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, region)

    def close(self):
        os.close(self.vm)
        os.close(self.dev)


# ---------------------------------------------------------------- scenarios
# Each takes the workload and returns facts: at least "region" = [start, end).

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__.removeprefix("s_")] = fn
    return fn


@scenario
def s_munmap(w):
    n = 16 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    _check(libc.munmap(a, n), "munmap")
    return {"region": [a, a + n], "expect": "unmap"}


@scenario
def s_dontneed(w):
    n = 16 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    _check(libc.madvise(a, n, MADV_DONTNEED), "madvise(DONTNEED)")
    libc.munmap(a, n)
    return {"region": [a, a + n], "expect": "clear"}


@scenario
def s_mprotect(w):
    n = 16 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    _check(libc.mprotect(a, n, PROT_READ), "mprotect")
    libc.munmap(a, n)
    return {"region": [a, a + n], "expect": "protection_vma"}


@scenario
def s_soft_dirty(w):
    n = 16 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    before = w.take_records()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("4")
    touch(a, n, 2)
    libc.munmap(a, n)
    return {"region": [a, a + n], "expect": "soft_dirty", "records_before": before}


@scenario
def s_exit(w):
    """A child whose mm the module watches by pid; its exit sends release."""
    r, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(wr)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    with testmod.TestModule() as m:
        m.register(pid)
        os.close(wr)
        os.waitpid(pid, 0)
        recs = m.records()
        counts = m.counts()
    return {"region": [0, 2**64 - 1], "expect": "release", "child": pid,
            "child_records": recs, "child_counts": counts}


@scenario
def s_migrate(w):
    n = 16 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    pages = (ctypes.c_void_p * 16)(*[a + i * PAGE for i in range(16)])
    status = (ctypes.c_int * 16)()
    libc.syscall(SYS_move_pages, 0, 16, pages, None, status, 0)
    here = set(status)
    target = 1 if 0 in here else 0
    nodes = (ctypes.c_int * 16)(*([target] * 16))
    ret = libc.syscall(SYS_move_pages, 0, 16, pages, nodes, status, MPOL_MF_MOVE)
    if ret < 0:
        raise OSError(ctypes.get_errno(), "move_pages failed (is the guest NUMA?)")
    moved = sum(1 for s in status if s == target)
    libc.munmap(a, n)
    return {"region": [a, a + n], "expect": "migrate", "moved": moved, "target_node": target}


@scenario
def s_cow(w):
    """fork, then the parent writes: copy-on-write replaces PTEs under the PTL."""
    n = 16 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    r, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(wr)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    touch(a, n, 3)          # COW in the parent, child still shares the pages
    os.close(wr)
    os.waitpid(pid, 0)
    libc.munmap(a, n)
    return {"region": [a, a + n], "expect": "secondary_tlb", "pages": n // PAGE}


@scenario
def s_upgrade(w):
    """The seed's case: a write fault that only upgrades a PTE's permissions.
    Pages written, a fork (their PTEs become read-only in the parent), the
    child exits (the pages are the parent's alone again), then the parent
    writes each page once more: wp_page_reuse makes the PTE writable in place,
    no page is copied and no range is invalidated. Where the architecture
    flushes the TLB for that (arm64: ptep_set_access_flags -> flush_tlb_page ->
    __flush_tlb_page_nosync), the secondary-TLB hook runs once per page; x86
    never flushes for an upgrade, so it runs none.

    On one CPU throughout: a new page waits in its CPU's batch of pages for
    the LRU lists, which holds a reference to it, and the write fault reuses
    a page only where it is the last one after draining its own CPU's batch
    (wp_can_reuse_anon_folio); a page still in another CPU's batch is copied
    instead, a COW flushed page by page (2 to 16 of them on x86 in the lab,
    when the tracer's process ran beside it)."""
    n = 16 * PAGE
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    try:
        a = mmap_anon(n)
        touch(a, n)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        before = w.take_records()      # the fork's write-protection (range start/end)
        t0 = time.monotonic_ns()
        touch(a, n, 4)
        t1 = time.monotonic_ns()
        upgrade = w.take_records()
        libc.munmap(a, n)
    finally:
        os.sched_setaffinity(0, cpus)
    return {"region": [a, a + n], "expect": "secondary_tlb", "pages": n // PAGE,
            "records_before": before, "records_upgrade": upgrade, "upgrade_ns": [t0, t1]}


def _thp_enabled() -> str:
    try:
        s = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
        return s[s.index("[") + 1:s.index("]")]
    except (OSError, ValueError):
        return "never"


@scenario
def s_thp_split(w):
    if _thp_enabled() == "never":
        raise RuntimeError("transparent huge pages are disabled on this kernel")
    a = mmap_anon(HPAGE, align=HPAGE)
    _check(libc.madvise(a, HPAGE, MADV_HUGEPAGE), "madvise(HUGEPAGE)")
    touch(a, HPAGE)
    huge = _anon_huge_kb(a)
    # Changing the protection of one 4 KiB page splits the PMD mapping.
    _check(libc.mprotect(a, PAGE, PROT_READ), "mprotect")
    libc.munmap(a, HPAGE)
    return {"region": [a, a + HPAGE], "expect": "clear", "anon_huge_kb": huge}


def _anon_huge_kb(addr: int) -> int:
    cur = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split()[0] and ":" not in line.split()[0]:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            cur = lo <= addr < hi
        elif cur and line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@scenario
def s_ksm(w):
    ksm = Path("/sys/kernel/mm/ksm")
    if not ksm.exists():
        raise RuntimeError("KSM is not available on this kernel")
    n = 32 * PAGE
    a = mmap_anon(n)
    fill(a, n, 0x5A)
    _check(libc.madvise(a, n, MADV_MERGEABLE), "madvise(MERGEABLE)")
    (ksm / "sleep_millisecs").write_text("10")
    (ksm / "pages_to_scan").write_text("1000")
    (ksm / "run").write_text("1")
    merged = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        merged = _ksm_merging_pages()
        if merged >= n // PAGE - 1:
            break
        time.sleep(0.1)
    (ksm / "run").write_text("2")   # unmerge everything, stop ksmd
    libc.munmap(a, n)
    return {"region": [a, a + n], "expect": "clear", "merged": merged}


def _ksm_merging_pages() -> int:
    p = Path("/proc/self/ksm_merging_pages")
    if p.exists():
        return int(p.read_text())
    return int(Path("/sys/kernel/mm/ksm/pages_sharing").read_text()) + int(Path("/sys/kernel/mm/ksm/pages_shared").read_text())


def _pfn(addr: int) -> int:
    with open("/proc/self/pagemap", "rb") as f:
        f.seek((addr // PAGE) * 8)
        v = struct.unpack("Q", f.read(8))[0]
    if not v >> 63:
        raise RuntimeError(f"page {addr:#x} not present")
    return v & ((1 << 55) - 1)


@scenario
def s_page_idle(w):
    """Mark our pages idle through the page_idle bitmap: the rmap walk clears young bits."""
    bitmap = Path("/sys/kernel/mm/page_idle/bitmap")
    if not bitmap.exists():
        raise RuntimeError("idle page tracking is not available on this kernel")
    n = 16 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    pfns = [_pfn(a + i * PAGE) for i in range(n // PAGE)]
    with open(bitmap, "r+b", buffering=0) as f:
        for pfn in pfns:
            f.seek((pfn // 64) * 8)
            f.write(struct.pack("Q", 1 << (pfn % 64)))
    libc.munmap(a, n)
    return {"region": [a, a + n], "expect": "clear_young", "pfns": len(pfns)}


@scenario
def s_pageout(w):
    """MADV_PAGEOUT reclaims our pages: the rmap walk asks each secondary MMU
    whether the page was used (clear_flush_young). The pages are shmem (a
    memfd), which reclaim considers with or without swap."""
    n = 16 * PAGE
    fd = os.memfd_create("mmntrace-pageout")
    try:
        os.ftruncate(fd, n)
        a = libc.mmap(None, n, PROT_READ | PROT_WRITE, 0x01, fd, 0)   # MAP_SHARED
        if a in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap of the memfd failed")
        touch(a, n)
        _check(libc.madvise(a, n, MADV_PAGEOUT), "madvise(PAGEOUT)")
        libc.munmap(a, n)
    finally:
        os.close(fd)
    return {"region": [a, a + n], "expect": "clear_flush_young", "pages": n // PAGE}


def _ensure_swap() -> None:
    """Reclaim only scans anonymous pages when there is swap: add a zram one."""
    if len(Path("/proc/swaps").read_text().splitlines()) > 1:
        return
    import subprocess
    subprocess.run(["modprobe", "zram"], check=True, capture_output=True)
    z = Path("/sys/block/zram0")
    if (z / "disksize").read_text().strip() == "0":
        (z / "disksize").write_text(str(128 << 20))
    subprocess.run(["mkswap", "/dev/zram0"], check=True, capture_output=True)
    subprocess.run(["swapon", "/dev/zram0"], check=True, capture_output=True)


@scenario
def s_reclaim(w):
    """Memory-cgroup reclaim of our pages (memory.reclaim), with the classic
    LRU: its rmap walk asks each secondary MMU whether a page was used
    (clear_flush_young). The multi-gen LRU's look-around skips the notifiers
    on kernels before the mmu_notifier_test_clear_young work, so it is turned
    off for the scenario. Changes system settings: meant for the lab."""
    cgroot = Path("/sys/fs/cgroup")
    if not (cgroot / "memory.stat").exists() and not (cgroot / "cgroup.controllers").exists():
        raise RuntimeError("cgroup v2 is not mounted")
    if not Path("/proc/swaps").exists():
        raise RuntimeError("this kernel has no swap support")
    _ensure_swap()
    lru_gen = Path("/sys/kernel/mm/lru_gen/enabled")
    old_lru = lru_gen.read_text().strip() if lru_gen.exists() else None
    if old_lru is not None:
        lru_gen.write_text("n")
    ctl = cgroot / "cgroup.subtree_control"
    if "memory" not in ctl.read_text():
        ctl.write_text("+memory")
    cg = cgroot / "mmntrace-reclaim"
    cg.mkdir(exist_ok=True)
    me = str(os.getpid())
    home = Path(f"/proc/self/cgroup").read_text().strip().split("::", 1)[-1] or "/"
    n = 64 * PAGE
    try:
        (cg / "cgroup.procs").write_text(me)
        a = mmap_anon(n)
        touch(a, n)              # charged to the new cgroup
        (cg / "memory.reclaim").write_text(str(n))
        libc.munmap(a, n)
    finally:
        (cgroot / home.lstrip("/") / "cgroup.procs").write_text(me)
        if old_lru is not None:
            lru_gen.write_text(old_lru)
        try:
            cg.rmdir()
        except OSError:
            pass
    return {"region": [a, a + n], "expect": "clear_flush_young", "pages": n // PAGE}


DAMON = Path("/sys/kernel/mm/damon/admin/kdamonds")


@scenario
def s_damon(w):
    """DAMON's virtual-address monitoring of this process: it clears and tests
    young bits through the notifiers (clear_young, test_young)."""
    if not DAMON.exists():
        raise RuntimeError("DAMON (CONFIG_DAMON_SYSFS, CONFIG_DAMON_VADDR) is not available on this kernel")
    n = 64 * PAGE
    a = mmap_anon(n)
    touch(a, n)
    (DAMON / "nr_kdamonds").write_text("1")
    k = DAMON / "0"
    (k / "contexts" / "nr_contexts").write_text("1")
    c = k / "contexts" / "0"
    (c / "operations").write_text("vaddr")
    iv = c / "monitoring_attrs" / "intervals"
    (iv / "sample_us").write_text("1000")
    (iv / "aggr_us").write_text("20000")
    (c / "targets" / "nr_targets").write_text("1")
    (c / "targets" / "0" / "pid_target").write_text(str(os.getpid()))
    (k / "state").write_text("on")
    time.sleep(1.0)
    (k / "state").write_text("off")
    while (k / "state").read_text().strip() != "off":
        time.sleep(0.05)
    (DAMON / "nr_kdamonds").write_text("0")
    libc.munmap(a, n)
    return {"region": [0, 2**64 - 1], "expect": "clear_young"}


@scenario
def s_oom(w):
    """A child in a small memory cgroup allocates until the OOM killer takes it.
    The module watches the child's mm: the OOM reaper's start is not blockable."""
    cg = Path("/sys/fs/cgroup/mmntrace-oom")
    if not (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
        raise RuntimeError("cgroup v2 is not mounted")
    ctl = Path("/sys/fs/cgroup/cgroup.subtree_control")
    if "memory" not in ctl.read_text():
        ctl.write_text("+memory")
    cg.mkdir(exist_ok=True)
    (cg / "memory.max").write_text(str(32 << 20))
    if (cg / "memory.swap.max").exists():
        (cg / "memory.swap.max").write_text("0")
    r, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            import threading
            os.close(wr)
            os.read(r, 1)
            # A thread parked in D state keeps the mm alive after the OOM kill,
            # so the OOM reaper (non-blockable) unmaps it, not exit_mmap.
            park = testmod.TestModule()
            threading.Thread(target=park.dsleep, args=(5000,), daemon=True).start()
            time.sleep(0.2)
            chunk = 4 << 20
            while True:
                a = libc.mmap(None, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                ctypes.memset(a, 7, chunk)
        finally:
            os._exit(1)
    os.close(r)
    (cg / "cgroup.procs").write_text(str(pid))
    with testmod.TestModule() as m:
        m.register(pid)
        os.close(wr)
        _, status = os.waitpid(pid, 0)
        recs = m.records()
        counts = m.counts()
    try:
        cg.rmdir()
    except OSError:
        pass
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return {"region": [0, 2**64 - 1], "expect": "nonblockable_start", "child": pid,
            "oom_killed": killed, "child_records": recs, "child_counts": counts}


# ---------------------------------------------------------------- driver

class Workload:
    def __init__(self, kvm: bool = False, module: bool = True, interval: bool = False):
        self.mod = testmod.TestModule() if module else None
        if self.mod:
            self.mod.register(0)
        self.kvm = Kvm() if kvm else None
        self.interval_region = None
        if interval and self.mod:
            n = 16 * PAGE
            a = mmap_anon(n)
            touch(a, n)
            self.mod.interval(a, n)
            self.interval_region = [a, a + n]
        self.taken = 0      # records read since the last reset

    def take_records(self) -> np.ndarray:
        recs = self.mod.records() if self.mod else np.zeros(0, testmod.RECORD)
        self.taken += len(recs)
        return recs

    def take_counted(self, counts: dict) -> np.ndarray:
        """The rest of the log that `counts` (read with mod.counts()) covers:
        reading the log allocates and frees buffers, which can itself unmap
        memory and log callbacks after the counters were read. The log is read
        oldest first, so the counted records are the first counts["logged"]."""
        before = self.taken
        return self.take_records()[:max(0, counts["logged"] - before)]

    def run(self, name: str) -> dict:
        pre = self.take_records()     # callbacks since the last scenario (interpreter activity)
        t0 = time.monotonic_ns()
        facts = SCENARIOS[name](self)
        facts["name"] = name
        facts["records_pre"] = pre
        facts["t_ns"] = [t0, time.monotonic_ns()]
        facts["records"] = self.take_records()
        return facts

    def close(self):
        if self.kvm:
            self.kvm.close()
        if self.mod:
            self.mod.close()


def _jsonable(facts: dict, out: Path, idx: int) -> dict:
    res = {}
    for k, v in facts.items():
        if isinstance(v, np.ndarray):
            fn = out / f"{idx:02d}-{facts['name']}-{k}.npy"
            np.save(fn, v)
            res[k] = str(fn)
        else:
            res[k] = v
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmnlab.workload",
                                 description="Run MMU-notifier workload scenarios against real subscribers.")
    ap.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS) + ["all"])
    ap.add_argument("--kvm", action="store_true", help="also create a KVM VM with a memory slot on this mm")
    ap.add_argument("--no-module", action="store_true", help="do not subscribe the test module")
    ap.add_argument("--interval", action="store_true", help="add an interval notifier on a region, then unmap it")
    ap.add_argument("--out", type=Path, required=True, help="directory for results")
    ap.add_argument("--sync", action="store_true", help="line protocol on stdin/stdout (see module doc)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--behave", action="append", default=[], metavar="HOOK:KIND[:ARG[:COUNT]]",
                    help="inject behaviour in the test module, e.g. secondary_tlb:msleep:1:3 (sleep 1 ms in the "
                         "next 3 calls), start:delay:200 (busy 200 us in every call)")
    a = ap.parse_args(argv)
    names = sorted(SCENARIOS) if "all" in a.scenarios else a.scenarios
    a.out.mkdir(parents=True, exist_ok=True)
    w = Workload(kvm=a.kvm, module=not a.no_module, interval=a.interval)
    if a.sync:
        print(f"ready {os.getpid()}", flush=True)
        sys.stdin.readline()
    if w.mod:
        w.mod.reset()
        w.taken = 0
    # after the reset: a limited injection (":COUNT") lands in a call that is
    # counted and logged (Python may unmap memory between two ioctls)
    for b in a.behave:
        hook, kind, *rest = b.split(":")
        nums = [int(x) for x in rest] + [0, 0]
        w.mod.behave(hook, kind, nums[0], nums[1])
    # calls before this (between the reset and the last behave ioctl) ran without
    # the injected behaviour; CLOCK_MONOTONIC is the module's ktime_get_ns()
    t_behaved = time.monotonic_ns()
    t_reset = time.monotonic_ns()
    results = []
    for _ in range(a.repeat):
        for name in names:
            results.append(w.run(name))
    if w.interval_region:
        lo, hi = w.interval_region
        libc.munmap(lo, hi - lo)
        results.append({"name": "interval_unmap", "region": w.interval_region, "records": w.take_records()})
    counts = w.mod.counts() if w.mod else None
    t_done = time.monotonic_ns()
    tail = w.take_counted(counts) if counts is not None else w.take_records()
    results.append({"name": "tail", "region": [0, 0], "records": tail})
    if a.sync:   # idle until told to save: peers may stop counting now
        print("counted", flush=True)
        sys.stdin.readline()
    if w.mod:
        for hook in testmod.HOOKS:
            w.mod.behave(hook, "none")
    # The window the counters cover, on the module's own clock when there is one
    # (taken under its log lock, so it is exact for this thread's callbacks).
    window = [counts["reset_ns"], counts["read_ns"]] if counts else [t_reset, t_done]
    summary = {"pid": os.getpid(), "counts": counts, "window_ns": window, "behaved_ns": t_behaved,
               "scenarios": [_jsonable(f, a.out, i) for i, f in enumerate(results)]}
    tmp = a.out / "workload.json.tmp"
    tmp.write_text(json.dumps(summary, default=str))
    os.replace(tmp, a.out / "workload.json")
    if a.sync:
        print("done", flush=True)
        sys.stdin.readline()
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
