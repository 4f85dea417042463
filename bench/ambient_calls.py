#!/usr/bin/env python3
"""How often the paths that never reach a notifier call each might-sleep function, in one lab guest.

    .venv/bin/mmntrace lab --kernel 6.1 --share $PWD/build -- .venv/bin/python bench/ambient_calls.py

`record --might-sleep` puts a program on each function of
mmntrace.kernel.SLEEPER_CANDIDATES that the kernel has; what it costs the
ambient paths (make bench's ambient tax) is those programs' runs there. This
counts them with bpftrace, one ``ambient_bench`` workload at a time, beside the
calls of ``__cond_resched``: on a kernel in the voluntary preemption mode
(Debian's default) every might_sleep() calls it, so one program there would
replace the list. The counts say whether it would run less often (it does
not: mmntrace/kernel.py, beside the list).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmntrace import kernel  # noqa: E402

from lab_bench import AMBIENT_BIN, SIZES  # noqa: E402
from mmnlab.harness import interrupt  # noqa: E402

FUNNEL = "__cond_resched"


def preempt_mode() -> str:
    """The selected mode in parentheses, as /sys/kernel/debug/sched/preempt shows it."""
    try:
        text = Path("/sys/kernel/debug/sched/preempt").read_text()
    except OSError as e:
        return f"unknown ({e.strerror})"
    m = re.search(r"\((\w+)\)", text)
    return m.group(1) if m else text.strip()


def _text(f) -> str:
    f.seek(0)
    return f.read()


def count(funcs: list[str], mode: str, ops: int) -> dict[str, int]:
    """Calls of each of ``funcs`` while ``ambient_bench MODE OPS`` runs (the rest of
    the guest, nearly idle, is counted too)."""
    prog = 'BEGIN { printf("READY\\n"); }\n' + "".join(f'kprobe:{f} {{ @["{f}"] = count(); }}\n' for f in funcs)
    with tempfile.TemporaryFile("w+") as log:
        bt = subprocess.Popen(["bpftrace", "-e", prog], stdout=log, stderr=subprocess.STDOUT, text=True)
        while bt.poll() is None and "READY" not in _text(log):
            time.sleep(0.1)
        r = subprocess.run([str(AMBIENT_BIN), mode, str(ops)], capture_output=True, text=True)
        if not interrupt(bt, 120):      # (bpftrace can miss a SIGINT: it gets one every 5 s)
            bt.kill()
        out = _text(log)
    if r.returncode != 0:
        sys.exit(f"ambient_bench {mode} failed: {r.stderr.strip()}")
    return {m.group(1).strip('"'): int(m.group(2)) for m in re.finditer(r"@\[([^\]]+)\]: (\d+)", out)}


def main() -> int:
    funcs = [s for s, _gfp in kernel.probe().sleepers]     # what record --might-sleep probes here
    if FUNNEL not in kernel.kallsyms():
        sys.exit(f"{FUNNEL} is not in /proc/kallsyms on this kernel")
    print(f"preempt mode: {preempt_mode()}; {len(funcs)} might-sleep functions probed by --might-sleep here")
    for mode, ops in SIZES["full"]["ambient"].items():
        c = count(funcs + [FUNNEL], mode, ops)
        listed = sum(v for k, v in c.items() if k != FUNNEL)
        most = sorted(((v, k) for k, v in c.items() if k != FUNNEL), reverse=True)[:4]
        top = ", ".join(f"{k} {v:,}" for v, k in most)
        print(f"{mode:6s} {ops:>6,} ops: the list {listed:>9,} calls ({top}); {FUNNEL} {c.get(FUNNEL, 0):>9,} "
              f"({c.get(FUNNEL, 0) / max(listed, 1):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
