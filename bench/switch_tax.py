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

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AMBIENT = ROOT / "build" / "bench" / "ambient_bench"
WORK = Path(tempfile.mkdtemp(prefix="switch-tax-"))
RAW_SWITCH = ("from bcc import BPF; import time; b = BPF(text='RAW_TRACEPOINT_PROBE(sched_switch) { return 0; }'); "
              "print('READY', flush=True); time.sleep(3600)")


def pipe(reps: int = 3, ops: int = 20000) -> float:
    """The fastest of ``reps`` pipe ping-pong runs, in seconds."""
    return min(json.loads(subprocess.run([str(AMBIENT), "pipe", str(ops)], capture_output=True, text=True,
                                         check=True).stdout)["seconds"] for _ in range(reps))


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


def mmntrace(*opts: str):
    def start():
        ready = WORK / "ready"
        ready.unlink(missing_ok=True)
        p = started([sys.executable, "-m", "mmntrace.cli", "record", "-q", "-o", str(WORK / f"rec{time.time_ns()}"),
                     "--ready-file", str(ready), *opts], lambda _log: ready.exists())
        time.sleep(3)       # its first poll and symbol reads done
        return p
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
        under("mmntrace --aggregate --sleep-detect switch (sched_switch program)",
              mmntrace("--aggregate", "--backend", "kprobe", "--sleep-detect", "switch"))
        under("mmntrace --aggregate --sleep-detect count", mmntrace("--aggregate", "--backend", "kprobe",
                                                                     "--sleep-detect", "count"))


if __name__ == "__main__":
    main()
