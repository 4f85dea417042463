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
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmntrace.kernel import SLEEPER_CANDIDATES  # noqa: E402

from lab_bench import AMBIENT_BIN, SIZES  # noqa: E402

FUNNEL = "__cond_resched"


def text_symbols() -> set[str]:
    out = set()
    with open("/proc/kallsyms") as f:
        for line in f:
            p = line.split()
            if len(p) >= 3 and p[1] in "tT":
                out.add(p[2])
    return out


def preempt_mode() -> str:
    """The selected mode in parentheses, as /sys/kernel/debug/sched/preempt shows it."""
    try:
        text = Path("/sys/kernel/debug/sched/preempt").read_text()
    except OSError as e:
        return f"unknown ({e.strerror})"
    m = re.search(r"\((\w+)\)", text)
    return m.group(1) if m else text.strip()


def count(funcs: list[str], mode: str, ops: int) -> dict[str, int]:
    """Calls of each of ``funcs`` while ``ambient_bench MODE OPS`` runs (the rest of
    the guest, nearly idle, is counted too)."""
    prog = 'BEGIN { printf("READY\\n"); }\n' + "".join(f'kprobe:{f} {{ @["{f}"] = count(); }}\n' for f in funcs)
    bt = subprocess.Popen(["bpftrace", "-e", prog], stdout=subprocess.PIPE, text=True)
    while "READY" not in (bt.stdout.readline() or "READY"):
        pass
    r = subprocess.run([str(AMBIENT_BIN), mode, str(ops)], capture_output=True, text=True)
    bt.send_signal(signal.SIGINT)
    out = bt.communicate(timeout=120)[0]
    if r.returncode != 0:
        sys.exit(f"ambient_bench {mode} failed: {r.stderr.strip()}")
    return {m.group(1).strip('"'): int(m.group(2)) for m in re.finditer(r"@\[([^\]]+)\]: (\d+)", out)}


def main() -> int:
    ks = text_symbols()
    funcs = [s for s in SLEEPER_CANDIDATES if s in ks]
    if FUNNEL not in ks:
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
