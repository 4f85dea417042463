"""Issue 5 ground truth: `mmntrace daemon` windows against the test module's log.

A child process subscribes the test module to its own mm and works only when
told to, so it is idle at every window boundary. The daemon traces that pid
only; the module logs every callback with its tgid and a CLOCK_MONOTONIC
timestamp, so each window's counts can be compared exactly with the module's
records inside [window open, window close].
"""

from __future__ import annotations

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from mmntrace import hooks as hooks_table
from mmnlab import testmod

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
H = testmod.HOOKS

CHILD = r"""
import base64, json, sys, ctypes
sys.path.insert(0, %(repo)r)
from mmnlab import testmod
from mmnlab.workload import mmap_anon, libc, PAGE, PROT_READ, PROT_WRITE
m = testmod.TestModule()
m.register(0)
m.reset()
print("ready", flush=True)
def cycle(n=16):
    a = mmap_anon(n * PAGE)
    for i in range(n):
        ctypes.c_char.from_address(a + i * PAGE).value = b"x"
    libc.mprotect(a, n * PAGE, PROT_READ)
    libc.munmap(a, n * PAGE)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "poke":
        cycle(1)
    elif cmd[0] == "run":
        for _ in range(int(cmd[1])):
            cycle()
    elif cmd[0] == "storm":      # mprotect flips as fast as we can, for N seconds
        import time
        a = mmap_anon(PAGE)
        ctypes.c_char.from_address(a).value = b"x"
        end = time.monotonic() + float(cmd[1])
        while time.monotonic() < end:
            libc.mprotect(a, PAGE, PROT_READ)
            libc.mprotect(a, PAGE, PROT_READ | PROT_WRITE)
    elif cmd[0] == "dump":
        recs = m.records()
        print(json.dumps({"records": base64.b64encode(recs.tobytes()).decode(), "counts": m.counts()}),
              flush=True)
        continue
    print("ok", flush=True)
"""


class Child:
    def __init__(self):
        self.p = subprocess.Popen([sys.executable, "-c", CHILD % {"repo": str(REPO)}], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def say(self, cmd: str, timeout: float = 180) -> str:
        import select
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        if not select.select([self.p.stdout], [], [], timeout)[0]:
            raise AssertionError(f"the child did not answer {cmd!r} within {timeout} s")
        return self.p.stdout.readline()

    def records(self) -> np.ndarray:
        d = json.loads(self.say("dump"))
        return np.frombuffer(base64.b64decode(d["records"]), testmod.RECORD)

    def close(self):
        self.p.stdin.close()
        self.p.wait(30)


MOD_CBS = ("mmnt_invalidate_range_start", "mmnt_invalidate_range_end", "mmnt_secondary_tlb")


class Daemon:
    """`mmntrace daemon` as a subprocess; its JSON log lines arrive on a queue."""

    def __init__(self, out: Path, *args):
        self.err = open(out.parent / "daemon.stderr", "w+")     # a full pipe would block the daemon
        self.p = subprocess.Popen([sys.executable, "-m", "mmntrace.cli", "daemon", "-o", str(out), *args],
                                  stdout=subprocess.PIPE, stderr=self.err, text=True, cwd=REPO)
        self.q: queue.Queue = queue.Queue()
        self.lines: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({"event": "garbage", "line": line})
        self.q.put({"event": "eof"})

    def wait(self, event: str, timeout: float = 150, pred=lambda d: True) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                d = self.q.get(timeout=1)
            except queue.Empty:
                continue
            self.lines.append(d)
            if d["event"] == event and pred(d):
                return d
            if d["event"] == "eof":
                raise AssertionError(f"daemon exited before {event!r} (rc {self.p.wait()}): "
                                     f"{Path(self.err.name).read_text()[-3000:]}")
        _stop(self)
        raise AssertionError(f"no {event!r} from the daemon within {timeout} s; log: {self.lines[-5:]}; "
                             f"stderr: {Path(self.err.name).read_text()[-2000:]}")


def _our_kprobes() -> list[str]:
    """Registered kprobes on the notifier hooks and the module's callbacks."""
    for p in ("/sys/kernel/debug/kprobes/list", "/sys/kernel/tracing/../debug/kprobes/list"):
        if os.path.exists(p):
            return [ln for ln in Path(p).read_text().splitlines()
                    if "mmu_notifier" in ln or "mmnt_" in ln]
    pytest.fail("no kprobes list in debugfs")


def _perf_links(pid: int) -> list[str]:
    """The daemon's open perf-event fds: every kprobe, kretprobe and tracepoint
    attachment of ours is one. (bpftool's `perf list` was not used: querying
    while the daemon detached once hung the guest.)"""
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == "anon_inode:[perf_event]":
                out.append(fd.name)
        except OSError:
            continue
    return out


def _in(recs, lo, hi, pid, hook):
    return int(((recs["pid"] == pid) & (recs["hook"] == H[hook]) & (recs["ts_ns"] >= lo)
                & (recs["ts_ns"] <= hi)).sum())


# `make lab-test` runs it on 6.12 only (one_kernel): a window attaches and detaches
# through the same Tracer as record, whose counts, lock context and sleep detection
# (the daemon's default, --sleep-detect count) the record tests check on every kernel;
# at 200-300 s a kernel (arm64: 240-290 s) it would take make test past its hour.
# `make lab-test-arm64` runs it on arm64 (arm64_full), `make lab-test-all` on every
# kernel (it passed on 6.1, PREEMPT_RT and arm64).
@pytest.mark.one_kernel
@pytest.mark.arm64_full
def test_windows_match_module_metrics_budget_and_sigterm(tmp_path):
    """One daemon, four windows: two exact ones, one under an event storm
    (the budget turns sampling on), and one cancelled by SIGTERM."""
    from prometheus_client.parser import text_string_to_metric_families
    child = Child()
    out = tmp_path / "d"
    d = Daemon(out, "--every", "45s", "--for", "12s", "--count", "4", "--pid", str(child.p.pid),
               "--host", "labhost", "--max-bpf-cpu", "1", "--max-events-per-s", "1000")
    try:
        opened, between = [], []
        checked_ns = None
        for i in range(2):
            # the first window waits for the start-up too (the compile: 70-110 s in a slow lab
            # guest, more with a second guest beside it on a 2-CPU host)
            w = d.wait("window_open", timeout=300 if i == 0 else 150)
            opened.append(w)
            if i:        # the checks between windows ran before this one started attaching
                assert checked_ns < w["attach_ns"]
            assert _our_kprobes() and _perf_links(d.p.pid), "nothing attached during a window"
            # the child subscribed before the daemon started: every window opens
            # with the module's callbacks already probed (the start-up sweep)
            assert set(MOD_CBS) <= set(w["callbacks"]), w
            assert child.say(f"run {2 + i}").strip() == "ok"
            d.wait("window", timeout=120)
            between.append((_our_kprobes(), _perf_links(d.p.pid)))
            checked_ns = time.monotonic_ns()
        assert between == [([], [])] * 2

        # window 2: a storm far above the budget turns 1-in-N sampling on
        w = d.wait("window_open")
        assert checked_ns < w["attach_ns"]
        assert child.say("storm 5").strip() == "ok"
        s = d.wait("sampling")
        assert s["sample_every"] > 1
        w = d.wait("window", timeout=120)
        assert w["sample_every"] > 1
        storm = json.loads(Path(w["files"]["summary"]).read_text())
        assert storm["sample_every"] == w["sample_every"] and storm["sampled_from_s"] is not None
        # window 3: SIGTERM in the middle cancels it, detaches everything, exits 0
        d.wait("window_open")
        d.p.send_signal(signal.SIGTERM)
        d.wait("window_cancelled")
        d.wait("exit")
        assert d.p.wait(60) == 0
        assert _our_kprobes() == []
        files = [p for p in out.rglob("*") if p.is_file()]
        assert all(not p.name.startswith(".") for p in files), files     # nothing partial
        recs = child.records()
        child.close()

        summaries = sorted((json.loads(p.read_text()) for p in out.glob("windows/host=labhost/date=*/*.json")),
                           key=lambda s: s["index"])
        assert [s["index"] for s in summaries] == [0, 1, 2]
        pid = child.p.pid
        for s, w in zip(summaries[:2], opened):
            lo, hi = s["start_ns"], s["end_ns"]
            assert lo == w["start_ns"]
            assert s["drops"]["total"] == 0 and s["sample_every"] == 1
            assert {r["hook"] for r in s["latency"]} <= set(hooks_table.choices())     # stable names
            lat: dict = {}
            for r in s["latency"]:     # one row per event type: sum them
                k = (r["hook"], (r["callback"] or "").split(" ")[0])
                lat[k] = lat.get(k, 0) + r["count"]
            for hook_name in ("invalidate_range_start", "invalidate_range_end"):
                want = _in(recs, lo, hi, pid, hook_name.split("_")[-1])
                assert lat.get((hook_name, ""), 0) == want, (hook_name, s["index"])
            cb_lo = lo      # exact from the window's first call, callbacks included
            for cb, hook in (("mmnt_invalidate_range_start", "start"), ("mmnt_invalidate_range_end", "end"),
                             ("mmnt_secondary_tlb", "secondary_tlb")):
                got = sum(n for (h, c), n in lat.items() if c == cb)
                assert got == _in(recs, cb_lo, hi, pid, hook), (cb, s["index"])
            assert _in(recs, cb_lo, hi, pid, "start") > 0
            assert s["violations"] == []

        # the windows' Hive partitions, readable as one dataset
        hist = ds.dataset(out / "hist", format="parquet", partitioning="hive").to_table().to_pandas()
        assert sorted(hist["window"].unique()) == [s["window"] for s in summaries]
        assert set(hist["host"]) == {"labhost"}
        for s in summaries:
            h = hist[(hist["window"] == s["window"]) & (hist["callback"].fillna("").str.startswith("mmnt_secondary_tlb"))]
            assert int(h["count"].sum()) == sum(r["count"] for r in s["latency"]
                                                if (r["callback"] or "").startswith("mmnt_secondary_tlb"))

        # the textfile holds the last complete window's figures, parseable by prometheus-client
        fams = {f.name: f for f in text_string_to_metric_families((out / "mmntrace.prom").read_text())}
        last = summaries[-1]
        calls = {(x.labels["hook"], x.labels["callback"], x.labels["event"]): x.value
                 for x in fams["mmntrace_window_calls"].samples}
        assert calls == {(r["hook"], r["callback"] or "", r["event"] or ""): r["count"] for r in last["latency"]}
        hsum = {(x.labels["hook"], x.labels["callback"], x.labels["event"]): x.value
                for x in fams["mmntrace_latency_seconds"].samples if x.name.endswith("_count")}
        assert hsum == calls
        assert fams["mmntrace_daemon_windows"].samples[0].value == 3
        assert fams["mmntrace_window_sample_every"].samples[0].value == last["sample_every"]
    finally:        # a failure leaves neither the daemon nor the subscriber behind (the next
        _stop(d)    # test unloads the module: a child still holding it would fail that one too)
        if child.p.poll() is None:
            child.p.kill()
            child.p.wait(30)


def _stop(d: Daemon) -> None:
    """A daemon still running after a failed assertion gets SIGTERM (it
    detaches everything); SIGKILL only if that does not end it."""
    if d.p.poll() is None:
        d.p.send_signal(signal.SIGTERM)
        try:
            d.p.wait(90)
        except subprocess.TimeoutExpired:
            d.p.kill()
            d.p.wait(30)


@pytest.mark.one_kernel
@pytest.mark.matrix_all     # the guard's arithmetic is unit-tested; CI's 90 minutes
def test_overhead_guard_stops_the_daemon(tmp_path):
    """--max-bpf-cpu: a window whose BPF run time (the kernel's own
    run_time_ns per program, kernel.bpf_stats_enabled) exceeds the share of
    a CPU stops the daemon: exit 23 with one sentence, no further window,
    nothing left attached."""
    child = Child()
    out = tmp_path / "d"
    limit = 1e-5
    # the window is long enough for the storm to end inside it: the daemon's
    # detach then patches kernel text that no CPU is running through
    # (docs/reliability.md, "The lab itself")
    d = Daemon(out, "--every", "40s", "--for", "25s", "--count", "3", "--pid", str(child.p.pid),
               "--host", "labhost", "--max-bpf-cpu", str(limit))
    try:
        w = d.wait("window_open")
        # the module's callbacks were probed before the window opened (the
        # start-up sweep), so none goes in under the storm below (kprobes going
        # in on a callback hit at full rate left the child stuck in mprotect
        # in 3 runs of 18 on 6.1; see docs/reliability.md)
        assert set(MOD_CBS) <= set(w["callbacks"]), w
        assert child.say("storm 3").strip() == "ok"
        t_storm_end = time.monotonic_ns()
        w = d.wait("window", timeout=120)
        # precondition, not the claim: the storm was over before the window closed
        summary = json.loads(Path(w["files"]["summary"]).read_text())
        assert t_storm_end < summary["end_ns"], \
            f"the storm outlasted the window ({(t_storm_end - summary['end_ns']) / 1e9:.1f} s)"
        g = d.wait("overhead_guard")
        d.wait("exit")
        rc = d.p.wait(60)
    finally:
        _stop(d)
        child.close()
    err = Path(d.err.name).read_text()
    msgs = [ln for ln in err.splitlines() if ln.startswith("mmntrace:")]
    assert rc == 23 and len(msgs) == 1 and "--max-bpf-cpu" in msgs[0] and "Traceback" not in err, err[-2000:]
    assert sum(w["calls"].values()) > 0 and w["bpf_run_time_ns"] > 0
    share = w["bpf_run_time_ns"] / 1e9 / w["duration_s"]
    assert g["bpf_cpu_share"] == pytest.approx(share, rel=1e-2) and g["bpf_cpu_share"] > limit
    assert g["limit"] == limit and g["action"] == "stopping"
    assert [x["event"] for x in d.lines].count("window_open") == 1      # it stopped after that window
    assert _our_kprobes() == []
    assert summary["bpf_run_time_ns"] == w["bpf_run_time_ns"]
