#!/usr/bin/env python3
"""What a program on sched_switch costs the pipe ping-pong, tool by tool, in one lab guest.

    .venv/bin/mmntrace lab --kernel 6.1 --share $PWD/build -- .venv/bin/python bench/switch_tax.py

Each tool's pipe runs (``ambient_bench pipe``, the fastest of 3) sit between two
untraced ones, in two rounds: an empty raw-tracepoint program (bcc), an empty
perf-tracepoint program (bpftrace), a kprobe that never fires, and ``mmntrace
record --aggregate`` with its sched_switch program (``--sleep-detect switch``)
and without it (``count``). make bench's ambient count sees the programs' own
time only; this says what the clock says (README, Benchmarks).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab_bench import ROOT, Tool, run_ambient

WORK = Path(tempfile.mkdtemp(prefix="switch-tax-"))
RAW_SWITCH = ("from bcc import BPF; import time; b = BPF(text='RAW_TRACEPOINT_PROBE(sched_switch) { return 0; }'); "
              "print('READY', flush=True); time.sleep(3600)")


def pipe(reps: int = 3, ops: int = 20000) -> float:
    """The fastest of ``reps`` pipe ping-pong runs, in seconds (make bench's ambient runner)."""
    return run_ambient({"ambient": {"pipe": ops}}, reps)[0]["pipe"]


def started(argv: list[str], ready) -> subprocess.Popen:
    """``argv`` started, once ``ready()`` says so (it exiting first is an error)."""
    log = WORK / "tool.log"
    p = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    while not ready(log):
        if p.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited: {log.read_text()[-800:]}")
        time.sleep(0.1)
    return p


def says_ready(log: Path) -> bool:
    return "READY" in log.read_text()


def bpftrace(prog: str):
    return lambda: started(["bpftrace", "-e", 'BEGIN { printf("READY\\n"); } ' + prog], says_ready)


def raw_switch():
    return started([sys.executable, "-c", RAW_SWITCH], says_ready)


def mmntrace(name: str):
    """make bench's tool ``name`` (its options, as lab_bench.Tool spells them), in a
    fresh directory each time"""
    def start():
        t = Tool(name, [], Path(tempfile.mkdtemp(dir=WORK)))
        t.start()
        time.sleep(3)       # its first poll and symbol reads done
        return t.proc
    return start


def under(name: str, start) -> None:
    before = pipe()
    p = start()
    traced = pipe()
    p.send_signal(signal.SIGINT)
    p.wait()
    time.sleep(2)
    after = pipe()
    print(f"{name:48s} traced {traced:.3f} s, untraced before/after {before:.3f}/{after:.3f}: "
          f"{traced / ((before + after) / 2) - 1:+.1%}", flush=True)


def main() -> None:
    pipe(1)         # warm-up
    for _ in range(2):
        under("bcc: empty raw tracepoint on sched_switch", raw_switch)
        under("bpftrace: empty tracepoint:sched:sched_switch", bpftrace("tracepoint:sched:sched_switch { }"))
        under("bpftrace: kprobe:do_nanosleep (never hit)", bpftrace("kprobe:do_nanosleep { }"))
        under("mmntrace --aggregate --sleep-detect switch (sched_switch program)", mmntrace("mmntrace-agg-kprobe-sw"))
        under("mmntrace --aggregate --sleep-detect count", mmntrace("mmntrace-agg-kprobe"))


if __name__ == "__main__":
    main()
