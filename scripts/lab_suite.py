#!/usr/bin/env python3
"""Run the lab tests (pytest -m lab) in one kernel's guest, for `make lab-test`.

Each finished test is appended to build/lab-progress-<kernel>.txt from inside
the guest (tests/conftest.py, MMNTRACE_LAB_PROGRESS). If the VM itself dies
(`mmntrace lab` exits 125: the emulator lost the guest, see
docs/reliability.md "The lab itself"), the suite is resumed once in a fresh
guest without the tests that had finished; the test that was running when it
died runs again. A failure from before the death still fails the run, and a
second death fails it too. A guest in which no test finishes for longer than
any test may run (its kernel wedged: under QEMU TCG a 6.1 guest has hung
silently, both CPUs, no watchdog output) is stopped and counts as a death.

usage: lab_suite.py KERNEL[:SCOPE] [KERNEL[:SCOPE]...] [--timeout SECONDS] [--jobs N]
                    [--prepare KERNEL=COMMAND...]

SCOPE says which lab tests a kernel's guest runs (pytest markers, pyproject.toml):
  all      every lab test (the default)
  main     every lab test but the `second_kernel` ones: `make lab-test`'s
           first kernel, beside which the second runs those
  kernel   those whose behaviour depends on the kernel: not the `one_kernel`
           ones (the install, the CLI's choices, the recorder's own limits,
           and the variants whose kernel-dependent code other tests check on
           every kernel), which the `all` or `main` kernel covers
  context  the lock-context and sleeping-rule tests (`lock_context`): what
           differs on PREEMPT_RT, where preempt_count() cannot see a spinlock_t
  arm64    the seed's case on arm64 (`arm64`): the permission-upgrade path in
           the module's log and in a recording, a sleep in a secondary-TLB
           callback (6.12-arm64, QEMU TCG emulating another architecture:
           several times slower)
  arm64-full  those and the other tests the arm64 lab runs (`arm64_full`):
           callback counts, the sched_switch variant, the daemon's windows,
           a recording for the notebooks
`make lab-test` runs 6.12:main 6.1:kernel 6.12-rt:context 6.12-arm64:arm64;
`make lab-test-arm64` 6.12-arm64:arm64-full alone; `make lab-test-all` every
x86 kernel's whole suite and 6.12-arm64:arm64-full.

With several kernels, their suites run at the same time, one guest each
(single-threaded TCG: a host CPU per guest), at most --jobs guests at once
(default 2, this machine's CPUs: a third guest would only slow the other
two), the next one starting as one ends; lines led by their kernel.

--prepare KERNEL=COMMAND: what that kernel's guest needs first (make lab-test:
the arm64 lab's root file system, `make arm64-root`, minutes of downloads and
qemu-user), run at once beside the first suites instead of before them all; that
kernel's suite waits for it, and fails, saying so, if it fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VM_DIED = 125
NO_TESTS = 5          # pytest: everything was deselected
# beyond the per-test limit: the boot, a test's setup and teardown (tests shorten it)
STALL_MARGIN_S = float(os.environ.get("LAB_SUITE_STALL_MARGIN_S", "300"))
# one guest's whole suite, at most (a 6.1 suite took 40 min on a slow day, 17 on a fast one;
# the 6.12 suite 58 min in CI, and some 25 % more on a slower day, when 4,200 s cut it off;
# a hung test is stopped long before by --timeout and the stall watch)
SUITE_TIMEOUT_S = 4800
#: which tests each scope runs (pytest -m)
SCOPES = {"all": "lab", "main": "lab and not second_kernel and not matrix_all",
          "kernel": "lab and not one_kernel and not matrix_all", "context": "lab and lock_context and not matrix_all",
          "arm64": "lab and arm64", "arm64-full": "lab and (arm64 or arm64_full)"}


def parse_spec(spec: str) -> tuple[str, str]:
    """``6.1:kernel`` -> ("6.1", "kernel"); a bare kernel runs ``all``."""
    k, _, scope = spec.partition(":")
    scope = scope or "all"
    if not k or scope not in SCOPES:
        raise SystemExit(f"lab_suite: {spec!r}: want KERNEL or KERNEL:SCOPE, SCOPE one of {', '.join(SCOPES)}")
    return k, scope


def progress(path: Path) -> dict[str, str]:
    """nodeid -> outcome of every test the guest finished (last word wins)."""
    out: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            nodeid, _, outcome = line.rpartition(" ")
            if nodeid:
                out[nodeid] = outcome
    return out


def watch(proc: subprocess.Popen, prog: Path, stall_s: float) -> float:
    """Wait for ``proc`` (`mmntrace lab`). If no test finishes for ``stall_s``
    seconds, longer than any test may run (pytest-timeout fails a hung test
    and goes on), the guest's kernel is wedged, not a test: stop the VM
    (SIGTERM: `mmntrace lab` takes it down) and return how long it stalled;
    0.0 when it ended by itself."""
    last = time.monotonic()
    seen = prog.stat().st_size if prog.exists() else -1
    while proc.poll() is None:
        time.sleep(2)
        size = prog.stat().st_size if prog.exists() else -1
        if size != seen:
            seen, last = size, time.monotonic()
        elif time.monotonic() - last > stall_s:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            return time.monotonic() - last
    return 0.0


def parse_prepare(items: list[str], specs: list[str]) -> dict[str, str]:
    """``["6.12-arm64=make arm64-root"]`` -> {"6.12-arm64": "make arm64-root"};
    one sentence (SystemExit) for a malformed one or a kernel no suite runs."""
    kernels = {parse_spec(s)[0] for s in specs}
    out = {}
    for item in items:
        k, _, cmd = item.partition("=")
        if not k or not cmd.strip():
            raise SystemExit(f"lab_suite: --prepare {item!r}: want KERNEL=COMMAND")
        if k not in kernels:
            raise SystemExit(f"lab_suite: --prepare {item!r}: no suite given runs kernel {k}")
        out[k] = cmd
    return out


def prepare_cmd(cmd: str, say) -> int:
    """Run a kernel's preparation (a shell command, in the checkout), each of
    its lines passed to ``say``; its exit status."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, shell=True, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:
        say(line)
    rc = proc.wait()
    say(f"prepared by `{cmd}` in {time.monotonic() - t0:.0f} s" if rc == 0 else
        f"its preparation `{cmd}` failed (exit {rc}): its suite does not run")
    return rc


def parallel(specs: list[str], timeout: str, jobs: int, prepare: dict[str, str] | None = None) -> int:
    """One suite per kernel, each in its own guest, ``jobs`` at a time: a
    guest runs single-threaded TCG, one host CPU each, so two kernels take
    about the time of one; the next starts as soon as one ends, in the
    order given. Each line is printed as it comes, led by its kernel; the
    exit status is the first failing suite's (0 when all passed).
    ``prepare``: kernel -> a command its suite waits for (started at once,
    beside the first suites, taking no guest's place)."""
    import threading
    lock = threading.Lock()
    rcs: dict[str, int] = {}
    why: dict[str, list[str]] = {}      # each suite's failed tests, repeated at the very end
    sem = threading.Semaphore(max(1, jobs))
    prepared: dict[str, threading.Event] = {}
    prep_rc: dict[str, int] = {}

    def say(k: str, line: str) -> None:
        with lock:
            print(f"[{k}] {line.rstrip()}", flush=True)

    def prep(k: str, cmd: str) -> None:
        try:
            prep_rc[k] = prepare_cmd(cmd, lambda line: say(k, line))
        finally:
            prepared[k].set()

    for k, cmd in (prepare or {}).items():
        prepared[k] = threading.Event()
        threading.Thread(target=prep, args=(k, cmd), daemon=True).start()

    def run(spec: str) -> None:
        k = parse_spec(spec)[0]
        if k in prepared:
            prepared[k].wait()
            if prep_rc.get(k, 1):
                rcs[spec] = prep_rc.get(k, 1)
                why.setdefault(spec, []).append(f"its preparation `{prepare[k]}` failed (exit {rcs[spec]})")
                return
        with sem:
            t0 = time.monotonic()
            proc = subprocess.Popen([sys.executable, __file__, spec, "--timeout", timeout], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in proc.stdout:
                say(k, line)
                if line.startswith(("FAILED ", "ERROR ", "lab-test: ")):
                    why.setdefault(spec, []).append(line.rstrip()[:300])
            rcs[spec] = proc.wait()
            say(k, f"suite ({spec}) ended after {time.monotonic() - t0:.0f} s")
    threads = []
    for spec in specs:      # started in order: each waits for a free slot
        t = threading.Thread(target=run, args=(spec,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(0.2)     # keep the order in which they take the slots
    for t in threads:
        t.join()
    for spec in specs:
        rc = rcs.get(spec, 1)
        print(f"lab-test: {spec}: " + ("passed" if rc == 0 else f"failed (exit {rc})"), flush=True)
        for line in why.get(spec, []) if rc else []:    # CI keeps the log's tail: name what failed there
            print(f"lab-test:   {line}", flush=True)
    return next((rcs.get(s, 1) for s in specs if rcs.get(s, 1)), 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernel", nargs="+", help="KERNEL[:SCOPE] (all, kernel, context), one or several: "
                                              "their suites run side by side")
    ap.add_argument("--timeout", default="600", help="per-test limit (pytest-timeout), seconds")
    ap.add_argument("--jobs", type=int, default=2, help="guests at once (default 2)")
    ap.add_argument("--prepare", action="append", default=[], metavar="KERNEL=COMMAND",
                    help="a command that kernel's suite waits for (e.g. 6.12-arm64='make arm64-root'), "
                         "run at once beside the first suites; repeatable")
    a = ap.parse_args()
    for spec in a.kernel:
        parse_spec(spec)
    prepare = parse_prepare(a.prepare, a.kernel)
    if len(a.kernel) > 1:
        return parallel(a.kernel, a.timeout, a.jobs, prepare)
    a.kernel, scope = parse_spec(a.kernel[0])
    if a.kernel in prepare:
        rc = prepare_cmd(prepare[a.kernel], lambda line: print(line.rstrip(), flush=True))
        if rc:
            return rc
    build = Path(os.environ.get("LAB_SUITE_BUILD", REPO / "build"))
    build.mkdir(exist_ok=True)
    prog = build / f"lab-progress-{a.kernel}.txt"
    prog.unlink(missing_ok=True)
    py = [str(REPO / ".venv" / "bin" / "python")]
    from mmnlab.vm import resolve_kernel
    kern = resolve_kernel(a.kernel)
    if kern.foreign:        # the guest's own Python (build/arm64/root), this checkout on its path
        py = [f"PYTHONPATH={REPO}:{REPO / 'lab'}", kern.python]
    mmntrace = os.environ.get("LAB_SUITE_MMNTRACE", str(REPO / ".venv" / "bin" / "mmntrace"))
    done: dict[str, str] = {}          # what the dead guest finished (nothing before the first run)
    for attempt in (1, 2):
        argv = ["env", f"MMNTRACE_LAB_PROGRESS={prog}", *py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "--timeout", a.timeout, "--durations", "0", "--durations-min", "30", "-m", SCOPES[scope], "tests",
                *[f"--deselect={n}" for n in done]]
        # the whole suite in one guest: 17-40 min (the host's speed varies that much); each test
        # has its own limit (--timeout), and a guest in which none finishes is stopped (watch)
        proc = subprocess.Popen([mmntrace, "lab", "--kernel", a.kernel, "--timeout", str(SUITE_TIMEOUT_S),
                                 "--memory", "3G", "--share", str(build), "--", *argv], cwd=REPO)
        stalled = watch(proc, prog, stall_s=float(a.timeout) + STALL_MARGIN_S)
        rc = proc.wait()
        if stalled:
            print(f"lab-test: no test of the {a.kernel} guest finished for {stalled:.0f} s, past every "
                  f"test's own limit: its kernel is wedged; the VM was stopped", file=sys.stderr, flush=True)
            rc = VM_DIED
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
