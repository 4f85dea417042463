"""Ground truth from outside the tracer: bpftrace counts and a workload process.

bpftrace is an independent peer: it attaches its own kprobes, so a count it
takes agrees with mmntrace only if both are right.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Bpftrace:
    """Count calls of kernel functions by one process, with bpftrace."""

    def __init__(self, funcs: list[str], pid: int, timeout: float = 240):
        # One map per function: keying one map by `func` makes bpftrace
        # symbolize at exit, which took minutes under QEMU TCG.
        self.funcs = list(funcs)
        prog = " ".join(f"kprobe:{f} /pid == {pid}/ {{ @c{i} = count(); }}" for i, f in enumerate(funcs))
        self.proc = subprocess.Popen(["bpftrace", "-f", "json", "-e", prog], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:   # wait until attached: bpftrace prints an "attached_probes" line
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"bpftrace did not attach: {self.proc.stderr.read()}")
            r, _, _ = select.select([self.proc.stdout], [], [], 1)
            if r:
                line = self.proc.stdout.readline()
                if '"attached_probes"' in line:
                    break

    def stop(self) -> dict[str, int]:
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=240)
        counts = {f: 0 for f in self.funcs}
        for line in out.splitlines():
            if '"type": "map"' in line:
                for name, v in json.loads(line)["data"].items():
                    counts[self.funcs[int(name.lstrip("@c"))]] = int(v)
        return counts


class WorkloadProcess:
    """`python -m mmntrace.workload --sync`: set up, wait for go, run, report, wait for exit."""

    def __init__(self, scenarios: list[str], out: Path, kvm: bool = False, extra: list[str] = ()):
        cmd = [sys.executable, "-m", "mmntrace.workload", "--sync", "--out", str(out), *extra, *scenarios]
        if kvm:
            cmd.insert(3, "--kvm")
        self.out = out
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.proc.kill()
            raise RuntimeError(f"workload did not start: {line!r}")
        self.pid = int(line.split()[1])

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line.strip() != "done":
            raise RuntimeError(f"workload failed: {line!r}")
        return json.loads((self.out / "workload.json").read_text())

    def finish(self) -> int:
        try:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout=60)


def expect_dmesg(pattern: str) -> None:
    """Declare a kernel-log line this test provokes on purpose (see mmntrace.guest)."""
    d = os.environ.get("MMNTRACE_LAB_DIR")
    if d:
        with open(Path(d) / "dmesg-expected", "a") as f:
            f.write(pattern + "\n")


def kernel_symbols(prefix: str) -> list[str]:
    names = []
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if parts[1] in "tT" and parts[2].startswith(prefix):
                names.append(parts[2])
    return sorted(set(names))
