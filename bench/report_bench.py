#!/usr/bin/env python3
"""Benchmark `mmntrace report` on a large synthetic recording.

    .venv/bin/python bench/report_bench.py [--events 10000000] [--segments 100] [--dir DIR] [--formats json,text,html]

Builds (once; reused while its metadata matches) a recording of --events
events in --segments segments, in the real format (mmntrace.synthetic: a KVM
host's mix of hooks, callbacks, event types, processes, callers, plus
violations), then runs `mmntrace report` on it in a child process per format
and reports the wall time and the child's peak RSS (getrusage via wait4).
Goal: under 15 s and 2 GiB for 10 million events on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_S = 15.0
GOAL_RSS = 2 << 30


def build(d: Path, events: int, segments: int, violations: int) -> float:
    from mmntrace import synthetic
    meta = d / "metadata.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        if m.get("events") == events and m.get("segments") == segments and m.get("status") == "complete":
            return 0.0
        shutil.rmtree(d)
    t = time.perf_counter()
    synthetic.write(d, events, segments, violations, span_s=600.0)
    return time.perf_counter() - t


def run(args: list[str]) -> tuple[float, int, int]:
    """(wall s, peak RSS bytes, exit status) of one child."""
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _pid, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc:
        print(err, file=sys.stderr)
    return wall, ru.ru_maxrss * 1024, rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--segments", type=int, default=100)
    ap.add_argument("--violations", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mmntrace-bench"))
    ap.add_argument("--formats", default="json,text,html")
    ap.add_argument("--json-out", type=Path, help="Also write the results to this JSON file.")
    a = ap.parse_args()
    d = a.dir / f"rec-{a.events}-{a.segments}"
    d.parent.mkdir(parents=True, exist_ok=True)
    built = build(d, a.events, a.segments, a.violations)
    size = sum(f.stat().st_size for f in d.iterdir())
    print(f"recording: {d} ({a.events:,} events, {a.segments} segments, {size / 2**20:.0f} MiB on disk"
          + (f", built in {built:.0f} s)" if built else ", reused)"))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    results = []
    ok = True
    for fmt in a.formats.split(","):
        out = a.dir / f"report.{fmt}"
        args = [sys.executable, "-m", "mmntrace.cli", "report", str(d), "--format", fmt, "-o", str(out)]
        wall, rss, rc = run(args)
        met = rc == 0 and wall < GOAL_S and rss < GOAL_RSS
        ok &= met
        results.append({"format": fmt, "events": a.events, "wall_s": round(wall, 2),
                        "peak_rss_mib": round(rss / 2**20, 1), "exit": rc, "goal_met": met})
        print(f"report --format {fmt:<5} {wall:6.2f} s   peak RSS {rss / 2**20:7.1f} MiB   "
              f"{'ok' if met else 'GOAL MISSED'} (goal < {GOAL_S:.0f} s, < {GOAL_RSS >> 30} GiB)")
    print(json.dumps(results))
    if a.json_out:
        a.json_out.parent.mkdir(parents=True, exist_ok=True)
        a.json_out.write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
