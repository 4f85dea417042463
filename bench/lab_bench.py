#!/usr/bin/env python3
"""The tracer's cost against its peers, measured in one VM boot (issue 6).

Run inside a lab guest (``make bench`` boots each kernel and runs this):

    python bench/lab_bench.py --size full|tiny --out FILE.json

The workload is ``notifier_bench`` (bench/notifier_bench.c): KVM and the test
module subscribed to its mm, a fixed number of rounds of zero-page reads, COW
writes, mprotect flips and MADV_DONTNEED. Tools, one after another in this
boot, each started once and kept attached for --reps runs, with a block of
untraced runs before the first tool and after every tool (so that each tool
is compared with the untraced runs next to it in time):

  mmntrace-kprobe / mmntrace-fentry            `mmntrace record` streaming
  mmntrace-agg-kprobe / mmntrace-agg-fentry    `mmntrace record --aggregate` (agg-kprobe: the
                                               daemon's default configuration)
  mmntrace-agg-fentry-ms                       the same with --might-sleep (its ambient tax)
  mmntrace-agg-kprobe-sw, mmntrace-agg-fentry-sw
                                               --sleep-detect switch: the sched_switch program
  funclatency                                  bcc's funclatency -F on the hook functions
  bpftrace                                     per-hook kprobe/kretprobe latency hist()

Each family of tools (mmntrace, funclatency, bpftrace) is started and stopped
once before the first counted start (:func:`warm_starts`), so that every
ready time is a warm start's; each tool's ready time is the median of three
starts: its runs', then two more once every tool has had its runs, in turns
(:func:`ready_rounds`).

For each tool: median ops/s, slowdown (median traced time / median of the
neighbouring untraced times), ns added per hook call (the test module counts
the hook calls), start-up time to ready and peak RSS (VmHWM over the
process's whole life, its compile and its stop included) of the tool's
process, and for mmntrace the events it recorded, the events/s it
sustained, and its drops. For the streaming modes, the most
events/s sustained with zero drops: paced runs at 1/2, 1/4, ... of the full
rate until one loses nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmntrace import kernel  # noqa: E402
from mmntrace.segwriter import QUIET_S  # noqa: E402
from mmnlab.harness import interrupt  # noqa: E402

BENCH_BIN = ROOT / "build" / "bench" / "notifier_bench"
# starts: how often each tool is started for its ready time (the median is judged:
# ready_rounds); tiny, make test's pipeline check, judges none
SIZES = {"full": dict(rounds=800, pages=64, reps=5, sweep_s=2.0, sweep=(2, 4, 8, 16, 32, 64, 128),
                     ambient={"pipe": 20000, "open": 20000, "alloc": 5000}, starts=3),
         # quick: a change's effect in a few minutes (one kernel, a subset of --tools)
         "quick": dict(rounds=300, pages=64, reps=2, sweep_s=1.0, sweep=(2, 8, 32),
                       ambient={"pipe": 5000, "open": 5000, "alloc": 1500}, starts=3),
         "tiny": dict(rounds=20, pages=16, reps=1, sweep_s=0.3, sweep=(2, 8),
                      ambient={"pipe": 1000, "open": 1000, "alloc": 300}, starts=1)}
AMBIENT_BIN = ROOT / "build" / "bench" / "ambient_bench"
#: the driver callback whose latency is compared with a peer's (observer effect)
PEER_CALLBACK = "kvm_mmu_notifier_invalidate_range_start"
SETTLE_S = 3.0
TOOLS = ["mmntrace-kprobe", "mmntrace-fentry", "mmntrace-agg-kprobe", "mmntrace-agg-fentry",
         "mmntrace-agg-kprobe-sw", "mmntrace-agg-fentry-sw", "mmntrace-agg-fentry-ms", "funclatency", "funclatency-callback", "bpftrace"]
STREAMING = ("mmntrace-kprobe", "mmntrace-fentry")
#: the hooks the peers (funclatency, bpftrace) probe: every one the workload calls, as
#: mmntrace times them all. Its COW writes call change_pte where the kernel still has
#: it (6.1: 19,200 of a run's 80,400 hook calls, which the peers skipped while
#: mmntrace timed them and their two callbacks; 6.12 has no change_pte)
HOOK_IDS = (kernel.HOOK_START, kernel.HOOK_END, kernel.HOOK_SECONDARY_TLB, kernel.HOOK_CHANGE_PTE)


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def lost(meta: dict) -> int:
    """Records a recording lost so far (its metadata's drops): calls made before
    their callback's probe was attached (untimed: the first calls of a subscriber
    that registered while the recorder ran) are counted, not lost to the rate,
    and are kept apart here as in the results' drops."""
    d = meta.get("drops") or {}
    return d.get("total", 0) - d.get("untimed", 0)


def run_workload(size: dict, *extra: str) -> dict:
    out = subprocess.run([str(BENCH_BIN), str(size["rounds"]), str(size["pages"]), *extra],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"notifier_bench failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


#: each ambient workload runs this many times back to back (interleaved), the
#: fastest counts: the lab's noise only ever adds time (a host thread shared by
#: the guest's vCPUs and QEMU), and single runs of a second or less swung by
#: ten points between two untraced runs
AMBIENT_REPEATS = 3


def run_ambient(size: dict, repeats: int = AMBIENT_REPEATS) -> tuple[dict, float]:
    """The ambient workloads (paths that never reach a notifier), each the
    fastest of ``repeats`` interleaved runs: (mode -> seconds, the seconds of
    all the runs)."""
    out: dict[str, float] = {}
    total = 0.0
    for _ in range(repeats):
        for mode, ops in size["ambient"].items():
            r = subprocess.run([str(AMBIENT_BIN), mode, str(ops)], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise RuntimeError(f"ambient_bench {mode} failed: {r.stderr.strip()}")
            sec = json.loads(r.stdout)["seconds"]
            out[mode] = min(out.get(mode, sec), sec)
            total += sec
    return out, total


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            stats[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)     # ppid, utime + stime
    tree, total = {pid}, 0.0
    for _ in range(8):          # descendants, a level per pass
        tree |= {p for p, (pp, _c) in stats.items() if pp in tree}
    for p in tree:
        total += stats.get(p, (0, 0.0))[1]
    return total


#: longer than a streaming recorder waits, once records stop coming, before it
#: converts what a burst left (segwriter.QUIET_S): a window of one second could
#: end in that wait, and the conversion then ran beside the next (ambient) run
SETTLE_WINDOW_S = QUIET_S + 1.0


def settle(pid: int, quiet_cpu_s: float = 0.05, window_s: float = SETTLE_WINDOW_S, timeout_s: float = 120.0) -> float:
    """Wait until the tool's CPU time grows by less than ``quiet_cpu_s`` over
    ``window_s`` (what the workload just made it do is done: a streaming
    recorder decodes and writes its backlog); return the seconds waited.
    A lab guest's vCPUs share one host thread, so work the tool still does
    during the ambient run would be charged to the ambient workload."""
    return wait_quiet(lambda: tree_cpu_s(pid), quiet_cpu_s, window_s, timeout_s)


def wait_quiet(cpu_s, quiet_cpu_s: float, window_s: float, timeout_s: float) -> float:
    """Wait until the CPU seconds ``cpu_s()`` reads grow by less than
    ``quiet_cpu_s`` over ``window_s``, at most ``timeout_s``; return the seconds
    waited (:func:`settle`'s tool, :func:`machine_quiet`'s whole machine)."""
    t0 = time.monotonic()
    last = cpu_s()
    while time.monotonic() - t0 < timeout_s:
        time.sleep(window_s)
        now = cpu_s()
        if now - last < quiet_cpu_s:
            break
        last = now
    return time.monotonic() - t0


def machine_busy_s(stat: str = "/proc/stat") -> float:
    """CPU seconds the whole machine has spent not idle (every CPU, since boot)."""
    with open(stat) as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")     # less idle and iowait (steal counted)


def machine_quiet(busy_share: float = 0.1, window_s: float = SETTLE_WINDOW_S, timeout_s: float = 60.0,
                  busy=machine_busy_s) -> float:
    """Wait until the machine as a whole is busy for less than ``busy_share`` of
    ``window_s`` (summed over its CPUs): what a tool that just stopped left the
    kernel to do (its programs, maps and probes are freed after it exits, some of
    it by RCU and workqueues) is done before the next one is timed, since a lab
    guest's vCPUs share one host thread. Returns the seconds waited."""
    return wait_quiet(busy, busy_share * window_s, window_s, timeout_s)


def quiet_before(name: str) -> None:
    """:func:`machine_quiet` before a timed start of ``name``, said when it took long."""
    waited = machine_quiet()
    if waited > 2 * SETTLE_WINDOW_S:
        log(f"{name}: waited {waited:.0f} s for the machine to go quiet before its start")


def parse_log2_hists(text: str) -> dict[str, dict[int, int]]:
    """funclatency -F output: function -> {log2 slot: count} (its rows read
    "lo -> hi : count", lo = 2**slot, slot 0 covering 0 -> 1)."""
    out: dict[str, dict[int, int]] = {}
    cur = None
    for line in text.splitlines():
        t = line.strip()
        if t.startswith("Function = "):
            cur = out.setdefault(t.split("=", 1)[1].strip().split()[0], {})
        elif cur is not None and "->" in t and ":" in t:
            lo = int(t.split("->")[0])
            n = int(t.split(":")[1].split()[0])
            if n:
                cur[max(0, lo.bit_length() - 1) if lo else 0] = n
    return out


def hist_median(h: dict[int, int]) -> float | None:
    """The median of a log2 histogram, linear inside its bucket [2**s, 2**(s+1))
    (the same estimate for every tool, so that they compare)."""
    total = sum(h.values())
    if not total:
        return None
    half, seen = total / 2, 0
    for s in sorted(h):
        if seen + h[s] >= half:
            lo = 0 if s == 0 else 2 ** s
            return lo + (2 ** (s + 1) - lo) * (half - seen) / h[s]
        seen += h[s]
    return None


def bpf_progs() -> dict[int, dict]:
    """Every loaded BPF program: id -> name, type, run_cnt, run_time_ns (bpftool)."""
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    try:
        progs = json.loads(out.stdout or "[]")
    except ValueError:
        return {}
    return {p["id"]: {"name": p.get("name", "?"), "type": p.get("type"), "run_cnt": p.get("run_cnt", 0),
                      "run_time_ns": p.get("run_time_ns", 0)} for p in progs}


def prog_costs(before: dict[int, dict], after: dict[int, dict]) -> list[dict]:
    """In-kernel cost of each program that ran between two snapshots
    (kernel.bpf_stats_enabled): runs and ns per run, costliest first."""
    out = []
    for pid, p in after.items():
        b = before.get(pid, {"run_cnt": 0, "run_time_ns": 0})
        n, t = p["run_cnt"] - b["run_cnt"], p["run_time_ns"] - b["run_time_ns"]
        if n > 0:
            out.append({"name": p["name"], "type": p["type"], "run_cnt": n, "run_time_ns": t,
                        "ns_per_run": round(t / n, 1)})
    return sorted(out, key=lambda x: -x["run_time_ns"])


STATS = Path("/proc/sys/kernel/bpf_stats_enabled")


def stats_run(size: dict) -> list[dict]:
    """One more run, untimed, with kernel.bpf_stats_enabled (it adds two clock
    reads to every program run, so the timed runs go without it)."""
    STATS.write_text("1")
    try:
        p0 = bpf_progs()
        run_workload(size)
        return prog_costs(p0, bpf_progs())
    finally:
        STATS.write_text("0")


def ambient_stats_run(size: dict) -> dict:
    """The ambient workloads once more, untimed, with kernel.bpf_stats_enabled:
    which BPF programs ran on those paths, how often and for how long (exact
    counts, where the taxes' wall-clock times move by several points with the
    host from one untraced run to the next)."""
    STATS.write_text("1")
    try:
        p0 = bpf_progs()
        _mins, secs = run_ambient(size, repeats=1)
        costs = prog_costs(p0, bpf_progs())
    finally:
        STATS.write_text("0")
    return {"seconds": round(secs, 4), "runs": sum(c["run_cnt"] for c in costs),
            "run_time_ns": sum(c["run_time_ns"] for c in costs), "programs": costs[:6],
            # every program's runs by its type, the costliest six above aside: the
            # dispatch each run is charged depends on it (bench/summarize.py)
            "runs_by_type": {ty: sum(c["run_cnt"] for c in costs if c["type"] == ty)
                             for ty in sorted({c["type"] for c in costs})}}


def vm_hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Tool:
    """A tracer process: started once, ready when it says so, stopped with SIGINT."""

    def __init__(self, name: str, hook_syms: list[str], work: Path):
        self.name, self.syms, self.work = name, hook_syms, work
        self.proc = None
        self.rec = work / f"rec-{name}"
        self.logf = work / f"{name}.log"

    def argv(self) -> list[str]:
        n = self.name
        if n.startswith("mmntrace"):
            # mmntrace[-agg]-BACKEND[-ms][-sw]: --aggregate, the backend, --might-sleep,
            # --sleep-detect switch (count, the default, otherwise)
            parts = n.split("-")
            backend = "fentry" if "fentry" in parts else "kprobe"
            a = [sys.executable, "-m", "mmntrace.cli", "record", "-q", "-o", str(self.rec),
                 "--ready-file", str(self.work / f"{n}.ready"), "--backend", backend]
            return (a + (["--aggregate"] if "agg" in parts else []) + (["--might-sleep"] if "ms" in parts else [])
                    + (["--sleep-detect", "switch"] if "sw" in parts else []))
        if n.startswith("funclatency"):
            exe = shutil.which("funclatency-bpfcc") or "/usr/sbin/funclatency-bpfcc"
            syms = [PEER_CALLBACK] if n == "funclatency-callback" else self.syms
            return [exe, "-F", "-r", "^(" + "|".join(syms) + ")$"]
        if n == "bpftrace":
            prog = ['BEGIN { printf("READY\\n"); }']
            for i, s in enumerate(self.syms):
                prog.append(f"kprobe:{s} {{ @t{i}[tid] = nsecs; }}")
                prog.append(f"kretprobe:{s} /@t{i}[tid]/ {{ @lat_{s} = hist(nsecs - @t{i}[tid]); "
                            f"delete(@t{i}[tid]); }}")
            return ["bpftrace", "-e", " ".join(prog)]
        raise ValueError(n)

    def ready(self) -> bool:
        if self.name.startswith("mmntrace"):
            return (self.work / f"{self.name}.ready").exists()
        text = self.logf.read_text(errors="replace")
        return ("Tracing" in text) if self.name.startswith("funclatency") else ("READY" in text)

    def start(self, timeout: float = 300) -> float:
        (self.work / f"{self.name}.ready").unlink(missing_ok=True)     # (an earlier start's)
        t0 = time.monotonic()
        self._log = open(self.logf, "w")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): "
                                   f"{self.logf.read_text(errors='replace')[-1500:]}")
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")
            time.sleep(0.05)
        return time.monotonic() - t0

    def meta_now(self) -> dict:
        """The recorder's metadata as it last wrote it (with each segment it writes,
        so it counts every event once the recorder has settled)."""
        return json.loads((self.rec / "metadata.json").read_text())

    def meta_after(self, t: float, timeout: float = 20) -> dict:
        """The recorder's metadata as first written after time.time() t (it is
        rewritten every 2 s with the cumulative events and drops)."""
        m = self.rec / "metadata.json"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if m.stat().st_mtime > t:
                    return json.loads(m.read_text())
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        rc = self.proc.poll() if self.proc is not None else None
        raise RuntimeError(f"{self.name}: no metadata update within {timeout:.0f} s"
                           + (f" (it exited, {rc})" if rc is not None else "")
                           + f": {self.logf.read_text(errors='replace')[-1500:]}")

    def sweep(self, size: dict, full_runs: list) -> dict:
        """The most events/s this streaming recorder sustains with zero drops:
        the workload paced to 1/2, 1/4, ... of its traced full rate, fastest
        first, until a run loses nothing. Events and drops per run are the
        differences of the recorder's own cumulative counts around it."""
        round_s = statistics.median(r["seconds"] for r in full_runs) / size["rounds"]
        points = []
        prev = self.meta_after(time.time() - 1)
        for div in size["sweep"]:
            round_us = max(1, int(round_s * div * 1e6))
            rounds = max(4, int(size["sweep_s"] / (round_us / 1e6)))
            r = run_workload(dict(size, rounds=rounds), "--round-us", str(round_us))
            time.sleep(0.3)                  # the recorder drains what is still buffered
            cur = self.meta_after(time.time())
            ev = cur.get("events", 0) - prev.get("events", 0)
            dr = lost(cur) - lost(prev)
            prev = cur
            points.append({"pace": f"1/{div}", "round_us": round_us, "rounds": rounds, "seconds": r["seconds"],
                           "events": ev, "drops": dr, "events_per_s": round((ev + dr) / r["seconds"])})
            log(f"{self.name}: paced 1/{div}: {points[-1]['events_per_s']} events/s offered, {dr} dropped")
            if dr == 0:
                break
        ok = [p["events_per_s"] for p in points if p["drops"] == 0]
        return {"sweep": points, "sustained_events_per_s": max(ok) if ok else None}

    def stop(self) -> dict:
        hwm = vm_hwm_kib(self.proc.pid)
        before_stop = hwm
        # the high-water mark of the whole life, the stop's writing included: read
        # until the process has let go of its memory (a zombie has no VmHWM)
        done = threading.Event()

        def watch():
            nonlocal hwm
            while not done.is_set():
                v = vm_hwm_kib(self.proc.pid)
                if v is None:
                    return
                hwm = max(hwm or 0, v)
                time.sleep(0.02)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # bpftrace can miss a SIGINT (mmnlab.harness.interrupt): it gets one every
        # 5 s; the Python tools get one (a second would interrupt their last print)
        if not interrupt(self.proc, 300, every=5 if self.name == "bpftrace" else 300):
            self.proc.kill()
        rc = self.proc.wait()
        done.set()
        watcher.join()
        self._log.close()
        out = {"exit": rc, "peak_rss_mib": round(hwm / 1024, 1) if hwm else None,
               "peak_rss_before_stop_mib": round(before_stop / 1024, 1) if before_stop else None}
        if self.name.startswith("mmntrace") and (self.rec / "metadata.json").exists():
            m = json.loads((self.rec / "metadata.json").read_text())
            out["events"] = m.get("events", 0)
            if m.get("aggregate"):
                out["events"] = sum(t["count"] for t in m.get("totals", []))
            d = m.get("drops") or {}
            # untimed calls (made before their probe was attached: the first calls of
            # each new subscriber) are counted, not lost: kept apart from the drops
            out["untimed"] = d.get("untimed", 0)
            out["drops"] = d.get("total") - d.get("untimed", 0) if d.get("total") is not None else None
            out["drop_kinds"] = {k: v for k, v in d.items() if v and k != "total"}
            out["status"] = m.get("status")
            out["timing"] = {k: round(v, 2) for k, v in (m.get("timing") or {}).items() if isinstance(v, float)}
            # what one probed callback costs its hook beyond its programs (measured at
            # start, taken off the hooks' durations): the observer effect's correction
            out["probe_overhead_ns"] = m.get("probe_overhead_ns")
        out["medians_ns"] = self.medians()
        out["means_ns"] = self.means()
        if self.name == "funclatency-callback":
            out["function"] = PEER_CALLBACK
        return out

    def means(self) -> dict[str, dict]:
        """Exact mean latency: funclatency's (its one "avg = ..." line: over every
        function it traced, key "*"), or mmntrace --aggregate's per function (the
        kernel's count and summed ns, metadata's totals). {key: {count, sum_ns}}.
        A log2 median cannot resolve a factor of 1.5 (one bucket is 2x); these can."""
        if self.name.startswith("funclatency"):
            for line in self.logf.read_text(errors="replace").splitlines():
                t = line.strip()
                if t.startswith("avg = ") and "count:" in t and "nsecs" in t:
                    total = int(t.split("total:")[1].split()[0])
                    return {"*": {"count": int(t.split("count:")[1].split()[0]), "sum_ns": total}}
            return {}
        m = self.rec / "metadata.json"
        if "-agg-" not in self.name or not m.exists():
            return {}
        hook_sym = {name: sym for _hid, sym, name in kernel.probe().hooks}
        out: dict[str, dict] = {}
        for r in json.loads(m.read_text()).get("totals") or []:
            key = r["callback"].split(" ")[0] if r.get("callback") else hook_sym.get(r["hook"], r["hook"])
            d = out.setdefault(key, {"count": 0, "sum_ns": 0})
            d["count"] += r["count"]
            d["sum_ns"] += r["sum_ns"]
        return out

    def medians(self) -> dict[str, float]:
        """Median latency per traced function (log2 histograms, interpolated
        alike for every tool): the observer effect's figures."""
        if self.name.startswith("funclatency"):
            hists = parse_log2_hists(self.logf.read_text(errors="replace"))
        elif "-agg-" in self.name and (self.rec / "hist.parquet").exists():
            import pandas as pd
            h = pd.read_parquet(self.rec / "hist.parquet")
            hists = {}
            hook_sym = {name: sym for _hid, sym, name in kernel.probe().hooks}
            for (hook, cb), g in h.groupby([h["hook"], h["callback"].fillna("")]):
                key = cb.split(" ")[0] if cb else hook_sym.get(hook, hook)
                d = hists.setdefault(key, {})
                for slot, n in g.groupby("slot")["count"].sum().items():
                    d[int(slot)] = d.get(int(slot), 0) + int(n)
        else:
            return {}
        return {f: round(m, 1) for f, h in hists.items() if (m := hist_median(h)) is not None}


def family(name: str) -> str:
    """The program a tool runs: mmntrace, funclatency or bpftrace."""
    return name.split("-")[0]


def warm_starts(tools: list[str], syms: list[str], work: Path) -> dict[str, float]:
    """Start and stop the first tool of each family once, uncounted: the lab's root
    file system is the host's, read through 9p, and the boot's first start of a
    tool read its interpreter, libraries (LLVM's ~100 MB for bcc) and the kernel's
    headers through it (6.1 guest: funclatency ready after 25.9 s the first time
    in a boot, 21.4-22.3 later; a streaming recorder 38.6 s, 25.6-32.4 later).
    Without this the tool first in the list (streaming mmntrace) paid for that
    alone, against peers started warm. Returns each start's seconds to ready."""
    out = {}
    for name in tools:
        if any(family(n) == family(name) for n in out):
            continue
        tool = Tool(name, syms, work / "warm")
        tool.work.mkdir(exist_ok=True)
        out[name] = round(tool.start(), 2)
        tool.stop()
        log(f"warm start: {name} ready after {out[name]:.1f} s (not counted)")
        time.sleep(SETTLE_S)    # the kernel frees its programs (RCU) after it exits
    return out


def ready_rounds(names: list[str], syms: list[str], work: Path, rounds: int) -> dict[str, list[float]]:
    """Each tool's seconds to ready over ``rounds`` more starts, made once every
    tool has had its runs, in turns (each round starts every tool once, in
    order), each stopped at once. One start's figure moves with the host: in one
    boot of the 6.1 guest a streaming recorder was ready after 54.4 s, then
    39.7 s, funclatency after 48.0 then 43.6 s, so one pair's ratio could flip
    issue 12's 1.5x line either way; taken in turns, a slower stretch of the
    host's day falls on every tool alike. With the start its runs were measured
    with, the median is judged (bench/summarize.py). A start that fails is left
    out (said), not the bench."""
    out: dict[str, list[float]] = {n: [] for n in names}
    more = work / "starts"
    more.mkdir(exist_ok=True)
    for _ in range(rounds):
        for name in names:
            tool = Tool(name, syms, more)
            shutil.rmtree(tool.rec, ignore_errors=True)     # record's -o must be new or empty
            quiet_before(name)  # (the tool before it: what its exit left the kernel to free)
            try:
                out[name].append(round(tool.start(), 2))
            except RuntimeError as e:
                log(f"{name}: a further start failed, left out: {e}")
                continue
            finally:
                if tool.proc is not None and tool.proc.poll() is None:
                    tool.stop()
            time.sleep(SETTLE_S)    # the kernel frees its programs (RCU) after it exits
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="full")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tools", default=None,
                    help="comma-separated subset (default: all; tiny: one of each kind, to check the pipeline)")
    a = ap.parse_args()
    size = SIZES[a.size]
    for b in (BENCH_BIN, AMBIENT_BIN):
        if not b.exists():
            log(f"{b} is missing: run `make bench` (it compiles bench/*.c)")
            return 2
    f = kernel.probe()
    syms = [sym for hid, sym, _n in f.hooks if hid in HOOK_IDS]
    # tiny (make test's pipeline check) leaves out --might-sleep: fentry on ~35 of the
    # machine's hottest functions is the likeliest to meet the emulator's patching hazard
    default = TOOLS if a.size == "full" else ["mmntrace-kprobe", "mmntrace-agg-fentry", "funclatency", "bpftrace"]
    if a.size == "quick":       # the daemon's default configuration (issue 12's ambient goal),
        default.insert(2, "mmntrace-agg-kprobe")        # and the peer for one callback's latency
        default.insert(default.index("funclatency") + 1, "funclatency-callback")
    if PEER_CALLBACK not in kernel.kallsyms():
        default = [t for t in default if t != "funclatency-callback"]
    tools = [t for t in (a.tools.split(",") if a.tools else default) if t]
    if not kernel.fentry_verdict().ok:      # a trial attach, as `record --backend fentry` does
        tools = [t for t in tools if "fentry" not in t.split("-")]
    work = Path(tempfile.mkdtemp(prefix="mmntrace-bench-"))
    res = {"kernel": f.release, "arch": platform.machine(), "cpus": os.cpu_count(), "size": a.size, **size,
           "hook_functions": syms, "untraced": [], "tools": {}, "ambient_repeats": AMBIENT_REPEATS}
    total_runs = size["reps"] * (2 * len(tools) + 1)
    done = 0

    def progress(what):
        nonlocal done
        done += 1
        log(f"[{done}/{total_runs}] {what}")

    def untraced_block():
        block = []
        for _ in range(size["reps"]):
            block.append(run_workload(size))
            block[-1]["ambient"], block[-1]["ambient_total_s"] = run_ambient(size)
            progress(f"untraced {block[-1]['ops_per_s']:.0f} ops/s")
        res["untraced"].append(block)
        return block

    run_workload(dict(size, rounds=max(1, size["rounds"] // 10)))   # warm-up (page cache, KVM module)
    if a.size != "tiny":        # (make test's pipeline check: no ready time is judged there)
        res["warm_starts"] = warm_starts(tools, syms, work)
    before = untraced_block()
    for name in tools:
        tool = Tool(name, syms, work)
        quiet_before(name)      # as before each further start (ready_rounds)
        startup = tool.start()
        log(f"{name}: ready after {startup:.1f} s")
        if name.startswith("mmntrace"):
            # one tiny run first, then a pause: its subscribers' callbacks get their
            # probes while nothing calls them. Probes inserted into code that runs
            # at full rate can kill the emulated guest (text patching under QEMU's
            # multi-threaded TCG, docs/reliability.md): it lost two bench boots
            subprocess.run([str(BENCH_BIN), "1", "4"], capture_output=True, timeout=120)
            time.sleep(SETTLE_S)
        runs = []
        try:
            # a streaming recorder's events over the runs alone: counted once it has
            # written what came before them (the settle above), and again once each
            # run has settled (the recorder writes no metadata while nothing happens)
            m_start = tool.meta_now() if name in STREAMING else None
            for _ in range(size["reps"]):
                c0 = tree_cpu_s(tool.proc.pid)
                runs.append(run_workload(size))
                # the tool's own CPU over the run (a recorder's drains, a first run's
                # symbol reads: 2 s of them showed here, not in the probes' cost). An upper
                # bound: QEMU runs the vCPUs in turn on one host thread, in slices of up to
                # 100 ms, and a task running on a vCPU waiting for its turn is charged the
                # wait (runs that showed 0.2-0.42 s went as fast as those that showed 0.02)
                runs[-1]["tool_cpu_s"] = round(tree_cpu_s(tool.proc.pid) - c0, 3)
                # the ambient run starts once the tool has finished with the workload's
                # records, and the tool's own CPU over it is a column of its own
                runs[-1]["settle_s"] = round(settle(tool.proc.pid), 1)
                c0 = tree_cpu_s(tool.proc.pid)
                runs[-1]["ambient"], runs[-1]["ambient_total_s"] = run_ambient(size)
                runs[-1]["ambient_tool_cpu_s"] = round(tree_cpu_s(tool.proc.pid) - c0, 3)
                progress(f"{name} {runs[-1]['ops_per_s']:.0f} ops/s, its own CPU {runs[-1]['tool_cpu_s']:.2f} s")
            m_runs = tool.meta_now() if name in STREAMING else None
            costs = stats_run(size)
            ambient_bpf = ambient_stats_run(size)
            sweep = None
            if name in STREAMING:
                if lost(tool.meta_after(time.time())) == 0:    # the full rate lost nothing: the
                    sweep = {"sweep": [], "sustained_events_per_s": round(    # runs' events over their time
                        (m_runs.get("events", 0) - m_start.get("events", 0)) / sum(r["seconds"] for r in runs))}
                else:
                    sweep = tool.sweep(size, runs)
        finally:
            st = tool.stop()
        time.sleep(SETTLE_S)     # the kernel frees the tool's programs and trampolines (RCU) after it exits
        after = untraced_block()
        base = statistics.median(r["seconds"] for r in before + after)
        med = statistics.median(r["seconds"] for r in runs)
        calls = statistics.median(r["hook_calls"] for r in runs)
        busy = sum(r["seconds"] for r in runs)
        entry = {"startup_s": round(startup, 2), "startup_runs_s": [round(startup, 2)], **st, "runs": runs,
                 "median_ops_per_s": round(statistics.median(r["ops_per_s"] for r in runs), 1),
                 "untraced_median_s": round(base, 6), "median_s": round(med, 6),
                 "slowdown": round(med / base, 4), "overhead": round(med / base - 1, 4),
                 "ns_per_hook_call": round((med - base) * 1e9 / calls, 1) if calls else None,
                 "hook_calls_per_run": calls, "bpf_progs": costs,
                 # paths that never reach a notifier: traced / untraced median time - 1
                 "ambient_tax": {m: round(statistics.median(r["ambient"][m] for r in runs)
                                          / statistics.median(r["ambient"][m] for r in before + after) - 1, 4)
                                 for m in size["ambient"]},
                 # the tool's own CPU while the ambient workloads ran, over their time
                 "ambient_tool_cpu_share": round(statistics.median(
                     r["ambient_tool_cpu_s"] / r["ambient_total_s"] for r in runs), 4),
                 # the BPF programs that ran on those paths (one more round, with bpf_stats)
                 "ambient_bpf": ambient_bpf,
                 "settle_s": statistics.median(r["settle_s"] for r in runs),
                 "tool_cpu_s_per_run": statistics.median(r["tool_cpu_s"] for r in runs)}
        if "events" in st and busy > 0:
            entry["events_per_s"] = round(st["events"] / busy)
        if sweep is not None:
            entry.update(sweep)
        res["tools"][name] = entry
        before = after
        # written after every tool: a guest lost later (the emulator's text-patching
        # hazard, docs/reliability.md) keeps what was measured
        res["untraced_ops_per_s"] = round(statistics.median(r["ops_per_s"] for b in res["untraced"] for r in b), 1)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
        log(f"{name}: slowdown {entry['slowdown']:.3f}, {entry['ns_per_hook_call']} ns per hook call"
            + (f", {st.get('events')} events, {st.get('drops')} dropped" if "events" in st else "")
            + (f" ({st['drop_kinds']})" if st.get("drop_kinds") else ""))
        if st.get("timing"):
            log(f"{name}: start-up " + ", ".join(f"{k} {v}" for k, v in st["timing"].items()))
        log(f"{name}: ambient tax " + ", ".join(f"{m} {v * 100:+.1f} %" for m, v in entry["ambient_tax"].items())
            + f" (its own CPU over them {entry['ambient_tool_cpu_share'] * 100:.1f} %, after {entry['settle_s']} s settling)"
            + "; medians " + ", ".join(f"{k} {v:.0f} ns" for k, v in sorted(st.get("medians_ns", {}).items())))
        log(f"{name}: on the ambient paths its BPF programs ran {ambient_bpf['runs']} times, "
            f"{ambient_bpf['run_time_ns'] / 1e6:.1f} ms in {ambient_bpf['seconds']:.2f} s"
            + "".join(f"; {c['name']} {c['run_cnt']}" for c in ambient_bpf["programs"][:3]))
        for c in costs[:12]:
            log(f"{name}:   bpf {c['name']:<16} {c['type']:<14} {c['run_cnt']:>9} runs "
                f"{c['ns_per_run']:>8.0f} ns/run {c['run_time_ns'] / 1e6:>9.1f} ms")
    more = ready_rounds(list(res["tools"]), syms, work, size["starts"] - 1)
    for name, x in res["tools"].items():
        x["startup_runs_s"] += more[name]
        x["startup_s"] = round(statistics.median(x["startup_runs_s"]), 2)
        if len(x["startup_runs_s"]) > 1:
            log(f"{name}: ready after " + ", ".join(f"{v:.1f}" for v in x["startup_runs_s"])
                + f" s: {x['startup_s']:.1f} s, the median")
    res["untraced_ops_per_s"] = round(statistics.median(r["ops_per_s"] for b in res["untraced"] for r in b), 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {a.out}")
    bad = [n for n, t in res["tools"].items() if t["exit"] not in (0, -2, 130)]
    if bad:
        log(f"tools that did not exit cleanly: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
