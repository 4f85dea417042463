#!/usr/bin/env python3
"""Two checkouts' BPF programs compared in one guest, both attached at once.

Run inside a lab guest (``make bench-ab`` boots one kernel and runs this):

    python bench/ab_bpf.py --a DIR --b DIR [--rounds N] [--out FILE.json] [-- RECORD OPTIONS]

The lab's emulated host is noisy: the untraced workload's speed moves by
1.3-1.9x within one boot, so two recorders run one after the other differ by
more than most changes to the BPF side do. Here checkout A's and checkout B's
``mmntrace record`` (with the same RECORD OPTIONS: ``--aggregate``,
``--backend fentry``...) are attached at the same time; every hook and
callback call of the workload then runs A's programs and B's, back to back,
under the same conditions, and ``kernel.bpf_stats_enabled`` gives each
program's in-kernel time per run. Each round starts both recorders again,
the first attached alternating (a program that runs first on a probe pays
for what the second finds warm). A program belongs to the recorder that
holds its fd (/proc/PID/fdinfo's prog_id).

Printed per round: each program's runs and ns per run in A and in B, B/A,
and B/A of the two recorders' whole in-kernel time; the events each
recorded (they must be equal: both see every call) and their losses.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import lab_bench as lb  # noqa: E402


def start(root: Path, work: Path, options: list[str]) -> subprocess.Popen:
    """``mmntrace record`` of the checkout ``root`` (its own package, run from its
    directory), ready when its --ready-file is there."""
    work.mkdir()
    argv = [sys.executable, "-m", "mmntrace.cli", "record", "-q", "-o", str(work / "rec"),
            "--ready-file", str(work / "ready"), *options]
    p = subprocess.Popen(argv, cwd=root, stdout=open(work / "log", "w"), stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while not (work / "ready").exists():
        if p.poll() is not None:
            raise RuntimeError(f"{root}: record exited ({p.returncode}): "
                               f"{(work / 'log').read_text(errors='replace')[-1500:]}")
        if time.monotonic() - t0 > 300:
            p.kill()
            raise RuntimeError(f"{root}: record not ready after 300 s")
        time.sleep(0.05)
    return p


def prog_ids(pid: int) -> set[int]:
    """The BPF programs process ``pid`` holds (the prog_id of its fds), those it
    loaded after it was ready included (a new subscriber's fentry copies)."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in fd.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except (OSError, ValueError):
            pass
    return ids


def per_program(before: dict[int, dict], after: dict[int, dict], owner: dict[int, str]) -> dict:
    """name -> owner -> {runs, ns} between two snapshots of lab_bench.bpf_progs(),
    for the programs ``owner`` (id -> "A" or "B") attributes; a name loaded more
    than once by one owner (an fentry copy per function) is summed."""
    progs: dict[str, dict[str, dict]] = {}
    for pid, p in after.items():
        v = owner.get(pid)
        b = before.get(pid, {"run_cnt": 0, "run_time_ns": 0})
        cnt, ns = p["run_cnt"] - b["run_cnt"], p["run_time_ns"] - b["run_time_ns"]
        if v is None or cnt <= 0:
            continue
        e = progs.setdefault(p["name"], {}).setdefault(v, {"runs": 0, "ns": 0})
        e["runs"] += cnt
        e["ns"] += ns
    return progs


def one_round(n: int, order: tuple[str, str], roots: dict[str, Path], options: list[str],
              size: dict, tmp: Path) -> dict:
    procs = {}
    try:
        for v in order:
            procs[v] = start(roots[v], tmp / f"r{n}-{v}", options)
        # their subscribers' callbacks get probes while nothing calls them (lab_bench's reason)
        subprocess.run([str(lb.BENCH_BIN), "1", "4"], capture_output=True, timeout=120)
        time.sleep(lb.SETTLE_S)
        lb.STATS.write_text("1")
        try:
            p0 = lb.bpf_progs()
            runs = [lb.run_workload(size) for _ in range(size["reps"])]
            p1 = lb.bpf_progs()
        finally:
            lb.STATS.write_text("0")
        progs = per_program(p0, p1, {i: v for v, p in procs.items() for i in prog_ids(p.pid)})
        out = {"round": n, "first": order[0], "ops_per_s": [r["ops_per_s"] for r in runs], "programs": progs,
               "total_ns": {v: sum(e[v]["ns"] for e in progs.values() if v in e) for v in roots}}
    finally:
        for v, p in procs.items():
            if p.poll() is None:
                lb.settle(p.pid)
                p.send_signal(signal.SIGINT)
                p.wait(timeout=300)
    out["recorded"] = {}
    for v in procs:
        m = json.loads((tmp / f"r{n}-{v}" / "rec" / "metadata.json").read_text())
        out["recorded"][v] = {"events": m.get("events"), "lost": lb.lost(m)}
    return out


def show(r: dict) -> None:
    print(f"round {r['round']} ({r['first']} attached first), workload {r['ops_per_s']} ops/s")
    print(f"  {'program':22s} {'runs':>9s} {'A ns/run':>9s} {'B ns/run':>9s} {'B/A':>6s}")
    for name, e in sorted(r["programs"].items(), key=lambda kv: -sum(x["ns"] for x in kv[1].values())):
        a, b = e.get("A"), e.get("B")
        per = {v: (x["ns"] / x["runs"] if x else None) for v, x in (("A", a), ("B", b))}
        ratio = f"{per['B'] / per['A']:.3f}" if per["A"] and per["B"] else ""
        runs = (a or b)["runs"]
        print(f"  {name:22s} {runs:9,d} {per['A'] or 0:9,.0f} {per['B'] or 0:9,.0f} {ratio:>6s}")
    ta, tb = r["total_ns"]["A"], r["total_ns"]["B"]
    print(f"  in-kernel time, all programs: A {ta / 1e6:,.1f} ms, B {tb / 1e6:,.1f} ms, B/A {tb / ta:.3f}"
          if ta else "  no program of A ran")
    print("  recorded: " + ", ".join(f"{v} {x['events']:,} events, {x['lost']} lost"
                                     for v, x in r["recorded"].items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Everything after -- goes to both recorders' `mmntrace record`.")
    ap.add_argument("--a", type=Path, required=True, help="checkout A (the base)")
    ap.add_argument("--b", type=Path, required=True, help="checkout B (the change)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, the first attached alternating (default 2)")
    ap.add_argument("--size", choices=sorted(lb.SIZES), default="quick", help="the workload's size (lab_bench's)")
    ap.add_argument("--out", type=Path, help="the rounds as JSON")
    a, options = ap.parse_known_args()
    options = [o for o in options if o != "--"]
    roots = {"A": a.a.resolve(), "B": a.b.resolve()}
    for v, r in roots.items():
        if not (r / "mmntrace" / "cli.py").exists():
            ap.error(f"--{v.lower()} {r}: not an mmntrace checkout (no mmntrace/cli.py)")
    size = lb.SIZES[a.size]
    lb.run_workload(dict(size, rounds=max(1, size["rounds"] // 10)))    # warm-up
    rounds = []
    with tempfile.TemporaryDirectory(prefix="mmntrace-ab-") as tmp:
        for n in range(1, a.rounds + 1):
            r = one_round(n, ("A", "B") if n % 2 else ("B", "A"), roots, options, size, Path(tmp))
            show(r)
            rounds.append(r)
            sys.stdout.flush()
    if a.out:
        a.out.write_text(json.dumps({"a": str(roots["A"]), "b": str(roots["B"]), "options": options,
                                     "size": a.size, "rounds": rounds}, indent=1))
    ratios = [r["total_ns"]["B"] / r["total_ns"]["A"] for r in rounds if r["total_ns"]["A"]]
    if ratios:
        print(f"B/A of the in-kernel time, by round: {', '.join(f'{x:.3f}' for x in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
