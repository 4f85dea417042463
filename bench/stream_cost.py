#!/usr/bin/env python3
"""Where streaming's cost over --aggregate lies, in one lab guest.

    .venv/bin/mmntrace lab --kernel 6.1 --share $PWD/build -- .venv/bin/python bench/stream_cost.py --reps 4

The bench's workload (``notifier_bench 800 64``) under three recorders, started
in turn, an untraced run after each: ``record --aggregate`` (in-kernel
histograms), ``record --min-latency 1s`` (the per-event programs, with every
call still aggregated in the kernel, and almost nothing sent: no call takes a
second) and ``record`` (streaming: every call sent, decoded and written). The
min-latency recorder splits what streaming adds over --aggregate in two: its
per-event programs (invocation ids, return probes of the ops that return a
value) and the records' way (ring buffer, the recorder's drains and spool). Each
recorder's first run, in which the callbacks of the subscribers it creates get
their probes, is not counted; the counted one starts once the recorder's CPU
has stopped growing after it (a streaming recorder writes a burst's segments
once it is over); medians of ``--reps`` counted runs each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lab_bench import HOOK_IDS, ROOT, Tool, run_workload, settle, tree_cpu_s

sys.path.insert(0, str(ROOT))
from mmntrace import kernel  # noqa: E402

MODES = {"aggregate": ["--aggregate"], "min-latency": ["--min-latency", "1s"], "streaming": []}


class Recorder(Tool):
    """``mmntrace record`` (kprobe backend) in one of MODES."""

    def __init__(self, mode: str, n: int, syms: list[str], work: Path):
        super().__init__(f"mmntrace-{mode}-{n}", syms, work)
        self.mode = mode

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "mmntrace.cli", "record", "-q", "-o", str(self.rec),
                "--ready-file", str(self.work / f"{self.name}.ready"), "--backend", "kprobe", *MODES[self.mode]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4, help="runs of each recorder (default 4)")
    ap.add_argument("--rounds", type=int, default=800, help="notifier_bench rounds a run (default 800)")
    a = ap.parse_args()
    f = kernel.probe()
    syms = [sym for hid, sym, _n in f.hooks if hid in HOOK_IDS]
    work = Path(tempfile.mkdtemp(prefix="stream-cost-"))
    size = {"rounds": a.rounds, "pages": 64}
    runs: dict[str, list[float]] = {m: [] for m in MODES}
    untraced = [run_workload(size)["seconds"]]
    for n in range(a.reps):
        for mode in MODES:
            t = Recorder(mode, n, syms, work)
            ready = t.start()
            time.sleep(3)
            # a first run, not counted: the subscribers it creates (a KVM VM, the module's)
            # have their callbacks probed while it runs, which costs a recorder's first
            # run a second or more of CPU in the lab (make bench's first of five)
            run_workload(size)
            settle(t.proc.pid)      # a streaming recorder writes that run's segments after it
            c0 = tree_cpu_s(t.proc.pid)
            r = run_workload(size)
            cpu = tree_cpu_s(t.proc.pid) - c0
            time.sleep(2)
            out = t.stop()
            runs[mode].append(r["seconds"])
            untraced.append(run_workload(size)["seconds"])
            print(f"{mode:12s} ready {ready:5.1f} s  run {r['seconds']:6.2f} s  its CPU {cpu:5.2f} s  "
                  f"events {out.get('events')}  dropped {out.get('drops')}  untraced after {untraced[-1]:.2f} s",
                  flush=True)
    u = statistics.median(untraced)
    print(f"untraced: median {u:.2f} s ({min(untraced):.2f}-{max(untraced):.2f})")
    over = {m: statistics.median(v) / u - 1 for m, v in runs.items()}
    for m, o in over.items():
        print(f"{m:12s} median {statistics.median(runs[m]):6.2f} s  overhead {o:.3f}")
    gap = over["streaming"] - over["aggregate"]
    if gap > 0:
        print(f"streaming over --aggregate: {gap:.3f}; per-event programs {over['min-latency'] - over['aggregate']:.3f} "
              f"({(over['min-latency'] - over['aggregate']) / gap:.0%}), records {over['streaming'] - over['min-latency']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
