#!/usr/bin/env python3
"""Run the lab tests (pytest -m lab) in one kernel's guest, for `make lab-test`.

Each finished test is appended to build/lab-progress-<kernel>.txt from inside
the guest (tests/conftest.py, MMNTRACE_LAB_PROGRESS). If the VM itself dies
(`mmntrace lab` exits 125: the emulator lost the guest, see
docs/reliability.md "The lab itself"), the suite is resumed once in a fresh
guest without the tests that had finished; the test that was running when it
died runs again. A failure from before the death still fails the run, and a
second death fails it too.

usage: lab_suite.py KERNEL [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VM_DIED = 125
NO_TESTS = 5          # pytest: everything was deselected


def progress(path: Path) -> dict[str, str]:
    """nodeid -> outcome of every test the guest finished (last word wins)."""
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            nodeid, _, outcome = line.rpartition(" ")
            if nodeid:
                out[nodeid] = outcome
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel")
    ap.add_argument("--timeout", default="600", help="per-test limit (pytest-timeout), seconds")
    a = ap.parse_args()
    build = Path(os.environ.get("LAB_SUITE_BUILD", REPO / "build"))
    build.mkdir(exist_ok=True)
    prog = build / f"lab-progress-{a.kernel}.txt"
    prog.unlink(missing_ok=True)
    py = str(REPO / ".venv" / "bin" / "python")
    mmntrace = os.environ.get("LAB_SUITE_MMNTRACE", str(REPO / ".venv" / "bin" / "mmntrace"))
    done: dict[str, str] = {}          # what the dead guest finished (nothing before the first run)
    for attempt in (1, 2):
        argv = ["env", f"MMNTRACE_LAB_PROGRESS={prog}", py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--timeout", a.timeout, "--durations", "12", "-m", "lab", "tests",
                *[f"--deselect={n}" for n in done]]
        # the whole suite in one guest: 13-20 min; each test has its own limit (--timeout)
        rc = subprocess.call([mmntrace, "lab", "--kernel", a.kernel, "--timeout", "2700",
                              "--memory", "3G", "--share", str(build), "--", *argv], cwd=REPO)
        if attempt == 2 and rc == NO_TESTS and done:
            rc = 0          # it died after the last test had finished
        if rc != VM_DIED or attempt == 2:
            break
        done = progress(prog)
        print(f"lab-test: the {a.kernel} guest died (above: the kernel's last words) with {len(done)} test(s) "
              f"finished; resuming once in a fresh guest without them", file=sys.stderr, flush=True)
    failed = sorted(n for n, o in progress(prog).items() if o == "failed")
    if failed and rc == 0:
        print(f"lab-test: {len(failed)} test(s) failed before the guest died: {', '.join(failed)}",
              file=sys.stderr)
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
