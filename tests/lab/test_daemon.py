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

from mmntrace import testmod

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]
H = testmod.HOOKS

CHILD = r"""
import base64, json, sys, ctypes
sys.path.insert(0, %(repo)r)
from mmntrace import testmod
from mmntrace.workload import mmap_anon, libc, PAGE, PROT_READ, PROT_WRITE
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

    def say(self, cmd: str) -> str:
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline()

    def records(self) -> np.ndarray:
        d = json.loads(self.say("dump"))
        return np.frombuffer(base64.b64decode(d["records"]), testmod.RECORD)

    def close(self):
        self.p.stdin.close()
        self.p.wait(30)


class Daemon:
    """`mmntrace daemon` as a subprocess; its JSON log lines arrive on a queue."""

    def __init__(self, out: Path, *args):
        self.p = subprocess.Popen([sys.executable, "-m", "mmntrace.cli", "daemon", "-o", str(out), *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
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

    def wait(self, event: str, timeout: float = 300, pred=lambda d: True) -> dict:
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
                                     f"{self.p.stderr.read()[-3000:]}")
        raise AssertionError(f"no {event!r} from the daemon within {timeout} s; log: {self.lines[-5:]}")


def _our_kprobes() -> list[str]:
    """Registered kprobes on the notifier hooks and the module's callbacks."""
    for p in ("/sys/kernel/debug/kprobes/list", "/sys/kernel/tracing/../debug/kprobes/list"):
        if os.path.exists(p):
            return [ln for ln in Path(p).read_text().splitlines()
                    if "mmu_notifier" in ln or "mmnt_" in ln]
    pytest.fail("no kprobes list in debugfs")


def _perf_links(pid: int) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", "perf", "list"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [x for x in json.loads(out.stdout or "[]") if x.get("pid") == pid]


def _in(recs, lo, hi, pid, hook):
    return int(((recs["pid"] == pid) & (recs["hook"] == H[hook]) & (recs["ts_ns"] >= lo)
                & (recs["ts_ns"] <= hi)).sum())


def test_three_windows_match_module_and_metrics(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    child = Child()
    out = tmp_path / "d"
    d = Daemon(out, "--every", "30s", "--for", "20s", "--count", "3", "--pid", str(child.p.pid),
               "--host", "labhost", "--max-bpf-cpu", "1")
    opened, between = [], []
    cb_ns = None
    for i in range(3):
        w = d.wait("window_open")
        opened.append(w)
        assert _our_kprobes(), "nothing attached during a window"
        if i == 0:   # the first hook on the child's mm reports the module's ops: wait for its callbacks
            assert child.say("poke").strip() == "ok"
            a = d.wait("callbacks_attached", pred=lambda x: "mmnt_secondary_tlb" in x["callbacks"])
            cb_ns = a["ns"]
        assert child.say(f"run {3 + i}").strip() == "ok"
        d.wait("window", timeout=120)
        if i < 2:    # between windows: nothing of ours attached
            between.append((_our_kprobes(), _perf_links(d.p.pid)))
    d.wait("exit")
    assert d.p.wait(60) == 0
    recs = child.records()
    child.close()
    assert between == [([], []), ([], [])]

    summaries = sorted((json.loads(p.read_text()) for p in out.glob("windows/host=labhost/date=*/*.json")),
                       key=lambda s: s["index"])
    assert [s["index"] for s in summaries] == [0, 1, 2]
    pid = child.p.pid
    for s, w in zip(summaries, opened):
        lo, hi = s["start_ns"], s["end_ns"]
        assert lo == w["start_ns"]
        assert s["drops"]["total"] == 0 and s["sample_every"] == 1
        lat: dict = {}
        for r in s["latency"]:     # one row per event type: sum them
            k = (r["hook"], (r["callback"] or "").split(" ")[0])
            lat[k] = lat.get(k, 0) + r["count"]
        for hook_name in ("invalidate_range_start", "invalidate_range_end"):
            want = _in(recs, lo, hi, pid, hook_name.split("_")[-1])
            assert sum(n for (h, cb), n in lat.items() if h == hook_name and cb == "") == want, (hook_name, s)
        cb_lo = max(lo, cb_ns)     # callbacks are probed from their discovery on
        for cb, hook in (("mmnt_invalidate_range_start", "start"), ("mmnt_invalidate_range_end", "end"),
                         ("mmnt_secondary_tlb", "secondary_tlb")):
            got = sum(n for (h, c), n in lat.items() if c == cb)
            assert got == _in(recs, cb_lo, hi, pid, hook), (cb, s["index"])
        assert _in(recs, cb_lo, hi, pid, "start") > 0
        assert s["violations"] == []

    # three Hive partitions' worth of windows, readable as one dataset
    hist = ds.dataset(out / "hist", format="parquet", partitioning="hive").to_table().to_pandas()
    assert sorted(hist["window"].unique()) == [s["window"] for s in summaries]
    assert set(hist["host"]) == {"labhost"}
    for s in summaries:
        h = hist[(hist["window"] == s["window"]) & (hist["callback"].fillna("").str.startswith("mmnt_secondary_tlb"))]
        assert int(h["count"].sum()) == sum(r["count"] for r in s["latency"]
                                            if (r["callback"] or "").startswith("mmnt_secondary_tlb"))

    # the textfile holds the last window's figures, parseable by prometheus-client
    fams = {f.name: f for f in text_string_to_metric_families((out / "mmntrace.prom").read_text())}
    last = summaries[-1]
    calls = {(x.labels["hook"], x.labels["callback"], x.labels["event"]): x.value
             for x in fams["mmntrace_window_calls"].samples}
    assert calls == {(r["hook"], r["callback"] or "", r["event"] or ""): r["count"] for r in last["latency"]}
    hsum = {}
    for x in fams["mmntrace_latency_seconds"].samples:
        if x.name.endswith("_count"):
            hsum[(x.labels["hook"], x.labels["callback"], x.labels["event"])] = x.value
    assert hsum == calls
    assert fams["mmntrace_daemon_windows"].samples[0].value == 3


def test_budget_turns_sampling_on_then_sigterm_cancels_cleanly(tmp_path):
    child = Child()
    out = tmp_path / "d"
    d = Daemon(out, "--every", "25s", "--for", "25s", "--count", "5", "--pid", str(child.p.pid),
               "--max-events-per-s", "20", "--max-bpf-cpu", "1")
    d.wait("window_open")
    assert child.say("storm 6").strip() == "ok"
    s = d.wait("sampling")
    assert s["sample_every"] > 1
    w = d.wait("window", timeout=120)
    assert w["sample_every"] > 1
    summary = json.loads(Path(w["files"]["summary"]).read_text())
    assert summary["sample_every"] == w["sample_every"] and summary["sampled_from_s"] is not None
    # SIGTERM in the middle of the next window
    d.wait("window_open")
    time.sleep(3)
    d.p.send_signal(signal.SIGTERM)
    d.wait("window_cancelled")
    assert d.p.wait(60) == 0
    child.close()
    assert _our_kprobes() == []
    assert _perf_links(d.p.pid) == []
    # one complete window, and no partial file a reader could take for one
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(not p.name.startswith(".") for p in files), files
    assert len(list(out.glob("windows/*/*/*.json"))) == 1
    assert len(ds.dataset(out / "hist", format="parquet", partitioning="hive").files) == 1
