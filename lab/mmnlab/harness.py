"""Harness: drive a recorder, a workload process and bpftrace together.

Used by the lab tests, `make demo` and the benchmarks. bpftrace is an
independent peer: it attaches its own kprobes, so a count it takes agrees
with mmntrace only if both are right. Everything waits on explicit readiness
signals (ready files, protocol lines, bpftrace's BEGIN), never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]     # the checkout: lab/mmnlab/harness.py


def interrupt(proc: subprocess.Popen, timeout: float, every: float = 5.0) -> bool:
    """SIGINT `proc` until it exits (True), at most `timeout` seconds (False).

    Once is not enough: bpftrace checks its exit flag and then blocks in
    epoll_wait() with no timeout, so a SIGINT that lands between the two is
    lost (seen in the lab: bpftrace asleep in do_epoll_wait 120 s after it).
    communicate() drains the pipes meanwhile: an exit-time print must not
    block on a full one."""
    deadline = time.monotonic() + timeout
    while True:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=max(0.1, min(every, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                return False


class Bpftrace:
    """Count calls of kernel functions (by one process, or by anyone), with bpftrace.

    With ``events=True`` every call is also kept with its tid and ``nsecs`` (the
    clock the tracer and the test module use), so counts can be taken over an
    exact window afterwards with :meth:`count`. A name ``ret:FUNC`` counts
    FUNC's returns (a kretprobe) instead of its calls.
    """

    MAX_EVENTS = 32768     # per function, in events mode (its maps are preallocated, per CPU)
    DUMPED = "MMNT_MAPS_DUMPED"
    EXIT_TIMEOUT = 120     # seconds bpftrace has to exit once its maps are read

    def __init__(self, funcs: list[str], pid: int | None = None, timeout: float = 240, events: bool = False):
        # One map per function: keying one map by `func` makes bpftrace
        # symbolize at exit, which took minutes under QEMU TCG.
        self.funcs = list(funcs)
        self.events: list[tuple[str, int, int]] = []
        self.event_mode = events
        # @mmnt_frozen: set by the dump probe below, so that the maps it prints
        # stop moving (system-wide probes keep firing while bpftrace reads them:
        # a count read before its per-call map then disagreed with it)
        flt = "/@mmnt_frozen == 0/ " if pid is None else f"/@mmnt_frozen == 0 && pid == {pid}/ "
        # Per-call keys live in a map, read whole at exit (printf goes through a
        # perf buffer that bpftrace does not drain at SIGINT: calls went missing).
        act = ((lambda i: f"@c{i} = count(); @e{i}[tid, nsecs] = count();") if events
               else (lambda i: f"@c{i} = count();"))
        # The maps are printed on demand, before bpftrace is asked to exit: a
        # kill(self, 0) by this process fires the dump (see stop()), so the
        # counts never depend on how bpftrace's exit goes (a CI run lost a
        # test to one that had not exited after 240 s).
        me = os.getpid()
        dump = " ".join(f"print(@c{i});" + (f" print(@e{i});" if events else "") for i in range(len(funcs)))
        prog = 'BEGIN { printf("READY\\n"); } ' + " ".join(
            (f"kretprobe:{f[4:]}" if f.startswith("ret:") else f"kprobe:{f}") + f" {flt}{{ {act(i)} }}"
            for i, f in enumerate(funcs)) + \
            (f" tracepoint:syscalls:sys_enter_kill /pid == {me} && args->pid == {me} && args->sig == 0/"
             f" {{ @mmnt_frozen = 1; {dump} printf(\"{self.DUMPED}\\n\"); }}")
        env = dict(os.environ, BPFTRACE_MAP_KEYS_MAX=str(self.MAX_EVENTS))
        self.proc = subprocess.Popen(["bpftrace", "-f", "json", "-e", prog], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while True:   # wait until attached
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"bpftrace did not attach: {self.proc.stderr.read()}")
            r, _, _ = select.select([self.proc.stdout], [], [], 1)
            if r:
                line = self.proc.stdout.readline()
                if "READY" in line:
                    break

    def stop(self) -> dict[str, int]:
        """Read the counts (a dump bpftrace prints on demand), then end bpftrace.

        An exit that hangs is reported with the kernel stacks of bpftrace's
        threads (a warning and the test's output), and bpftrace is killed; the
        counts, read before, stand."""
        os.kill(os.getpid(), 0)           # fires the dump probe: the maps, then DUMPED
        why: list[str] = []

        def too_late():                   # a blocking readline, bounded by this watchdog
            why.append(self._diagnose())
            self.proc.kill()
        watchdog = threading.Timer(600, too_late)
        watchdog.start()
        lines = []
        try:
            for line in self.proc.stdout:
                if self.DUMPED in line:
                    break
                lines.append(line)
            else:
                self.proc.wait()
                raise RuntimeError("bpftrace ended before printing its maps"
                                   + (f" (600 s):\n{why[0]}" if why else f": {self.proc.stderr.read()}"))
        finally:
            watchdog.cancel()
        self._end()
        counts = {f: 0 for f in self.funcs}
        for line in lines:
            if '"type": "map"' not in line:
                continue
            for name, v in json.loads(line)["data"].items():
                f = self.funcs[int(name[2:])]
                if name.startswith("@c"):
                    counts[f] = int(v)
                else:
                    for key, n in v.items():
                        tid, ts = key.split(",")
                        self.events += [(f, int(tid), int(ts))] * int(n)
        if self.event_mode and any(counts[f] != sum(1 for e in self.events if e[0] == f) for f in self.funcs):
            raise RuntimeError("bpftrace's per-call map is incomplete (more calls than BPFTRACE_MAP_KEYS_MAX?)")
        return counts

    def _end(self) -> None:
        if interrupt(self.proc, self.EXIT_TIMEOUT):
            return
        why = self._diagnose()
        msg = f"bpftrace did not exit in {self.EXIT_TIMEOUT} s of SIGINTs (its counts were read before); killed it.\n{why}"
        print(msg, file=sys.stderr, flush=True)
        import warnings
        warnings.warn(msg)
        self.proc.kill()
        try:
            self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            print(f"bpftrace (pid {self.proc.pid}) is still there 60 s after SIGKILL:\n{self._diagnose()}",
                  file=sys.stderr, flush=True)

    def _diagnose(self) -> str:
        """Where bpftrace's threads are (state, wchan, kernel stack), and the
        kernel's list of blocked tasks (sysrq w, to the kernel log)."""
        out = []
        for t in sorted(Path(f"/proc/{self.proc.pid}/task").glob("*")):
            def rd(name):
                try:
                    return (t / name).read_text().strip()
                except OSError as e:
                    return f"({e.strerror})"
            state = next((ln for ln in rd("status").splitlines() if ln.startswith("State:")), "")
            out.append(f"thread {t.name} {rd('comm')} {state} wchan={rd('wchan')}\n{rd('stack')}")
        try:
            Path("/proc/sysrq-trigger").write_text("w")
            out.append("(sysrq w: blocked tasks are in the kernel log)")
        except OSError:
            pass
        return "\n".join(out) or f"(no /proc/{self.proc.pid}/task)"

    def count_inside(self, func: str, outer: str, lo: int, hi: int, tid: int | None = None) -> int:
        """Calls of `func` with lo <= nsecs <= hi made while `outer` was running
        on the same thread (between a call of `outer` and its return: both
        `outer` and `ret:outer` must be traced); needs events=True."""
        ev = sorted((ts, f != "ret:" + outer, t, f) for f, t, ts in self.events
                    if f in (func, outer, "ret:" + outer) and (tid is None or t == tid))
        depth: dict[int, int] = {}
        n = 0
        for ts, _, t, f in ev:
            if f == outer:
                depth[t] = depth.get(t, 0) + 1
            elif f == "ret:" + outer:
                depth[t] = max(0, depth.get(t, 0) - 1)
            elif depth.get(t, 0) and lo <= ts <= hi:
                n += 1
        return n

    def count(self, func: str, lo: int, hi: int, tid: int | None = None) -> int:
        """Calls of `func` with lo <= nsecs <= hi (by `tid` if given); needs events=True."""
        return sum(1 for f, t, ts in self.events if f == func and lo <= ts <= hi and (tid is None or t == tid))


class WorkloadProcess:
    """`python -m mmnlab.workload --sync`: set up, wait for go, run, report, wait for exit."""

    def __init__(self, scenarios: list[str], out: Path, kvm: bool = False, extra: list[str] = ()):
        cmd = [sys.executable, "-m", "mmnlab.workload", "--sync", "--out", str(out), *extra, *scenarios]
        if kvm:
            cmd.insert(3, "--kvm")
        self.out = out
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.proc.kill()
            raise RuntimeError(f"workload did not start: {line!r}")
        self.pid = int(line.split()[1])

    def _say(self, word: str, expect: str) -> None:
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if line.strip() != expect:
            raise RuntimeError(f"workload failed (expected {expect!r}, got {line!r})")

    def go(self) -> None:
        """Run the scenarios; returns once the module's counters are read.
        The process then stays idle (no mm activity) until collect()."""
        self._say("go", "counted")

    def collect(self) -> dict:
        self._say("save", "done")
        return json.loads((self.out / "workload.json").read_text())

    def finish(self) -> int:
        try:
            self.proc.stdin.write("exit\n")
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        return self.proc.wait(timeout=60)


def user_env(venv: Path) -> dict:
    """An installed mmntrace's user's environment: ``venv``'s bin first on PATH,
    nothing pointing into this checkout or its .venv (no PYTHONPATH,
    VIRTUAL_ENV, PYTHONHOME; no PATH entry under the checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join([str(Path(venv) / "bin")] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                               if p and not p.startswith(str(REPO))])
    return env


class Recorder:
    """`mmntrace record` as a subprocess, ready once --ready-file says so."""

    def __init__(self, out: Path, *extra, timeout: float = 600, side: Path | None = None,
                 cmd: list[str] | None = None, cwd: Path | None = None, env: dict | None = None):
        """``side``: where the ready file and the log go (default: next to ``out``);
        ``cmd``: the mmntrace to run (default: this checkout's, by this Python);
        ``env``: its environment (default: this process's)."""
        self.out = Path(out)
        side = Path(side) if side else self.out.parent
        self.ready = side / (self.out.name + ".ready.json")
        self.log = side / (self.out.name + ".log")
        self._log = open(self.log, "w")
        self.proc = subprocess.Popen([*(cmd or [sys.executable, "-m", "mmntrace.cli"]), "record", "-q",
                                      "-o", str(self.out), "--ready-file", str(self.ready), *extra],
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd or REPO, env=env)
        # what --ready-file said first: every subscriber that existed is probed
        self.first_ready = self.wait_for(lambda att: True, timeout=timeout)

    def wait_for(self, pred, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recorder exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            if self.ready.exists():
                att = json.loads(self.ready.read_text())["attached"]
                if pred(att):
                    return att
            time.sleep(0.2)
        raise TimeoutError(f"recorder not ready after {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=300)
        finally:
            self._log.close()
        return self.proc.returncode


def record_workload(scenarios, wl_dir: Path, rec_dir: Path, *rec_args, kvm: bool = False,
                    extra=()) -> tuple[Recorder, dict]:
    """A workload recorded as a user records one: the process with subscribers
    exists first, the recorder starts and its --ready-file says their callbacks
    are probed (nothing waits on its internals), then the work runs. The
    recorder is stopped however the work ends (its exit status:
    ``rec.proc.returncode``); returns it and the workload's results."""
    wp = WorkloadProcess(list(scenarios), wl_dir, kvm=kvm, extra=list(extra))
    try:
        rec = Recorder(rec_dir, *rec_args)
    except BaseException:
        wp.finish()
        raise
    try:
        wp.go()
        res = wp.collect()
        wp.finish()
    finally:
        rec.stop()
    return rec, res


NUMA_BALANCING = "/proc/sys/kernel/numa_balancing"


@contextlib.contextmanager
def numa_scanner_off():
    """Automatic NUMA balancing off while the block runs. The lab guest has two
    NUMA nodes, so the kernel's NUMA scanner (task_numa_work ->
    change_prot_numa) makes every populated VMA PROT_NONE about once a second,
    each time with a PROTECTION_VMA range callback, at a moment nobody chose:
    a test that counts a region's callbacks, or a hook's calls, exactly over
    a window of its own switches it off rather than filtering it out."""
    try:
        old = open(NUMA_BALANCING).read().strip()
    except FileNotFoundError:      # no CONFIG_NUMA_BALANCING: no scanner
        yield
        return
    with open(NUMA_BALANCING, "w") as fh:
        fh.write("0")
    try:
        yield
    finally:
        with open(NUMA_BALANCING, "w") as fh:
            fh.write(old)


def expect_dmesg(pattern: str) -> None:
    """Declare a kernel-log line this test provokes on purpose (see mmnlab.guest)."""
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


def event_names() -> dict[str, int]:
    """enum mmu_notifier_event of the running kernel, from its BTF: name ("release",
    "unmap", as recordings spell them) -> value (as the test module logs it)."""
    from mmntrace import btf
    return {k.lower().removeprefix("mmu_notify_"): v
            for k, v in btf.load_vmlinux().enum("mmu_notifier_event").items()}


#: the bug the demo injects on purpose: the test module takes a mutex in its
#: secondary-TLB callback, which runs under the page-table lock and must never sleep
DEMO_BEHAVE = "secondary_tlb:mutex"


def demo(out: Path, scenarios=("munmap", "dontneed", "mprotect", "soft_dirty", "cow", "thp_split"),
         repeat: int = 3) -> Path:
    """Record KVM + the test module running the scenarios, the module with an
    injected rule violation (:data:`DEMO_BEHAVE`), KVM clean; returns the recording."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kvm = Path("/dev/kvm").exists()
    print("demo: registering the subscribers (test module" + (", KVM" if kvm else "") +
          "), then the recorder with --might-sleep...", file=sys.stderr, flush=True)
    rec, res = record_workload(scenarios, out / "workload", out / "rec", "--might-sleep", kvm=kvm,
                               extra=["--repeat", str(repeat), "--behave", DEMO_BEHAVE])
    rc = rec.proc.returncode
    if rc != 0:
        raise RuntimeError(f"recorder failed ({rc}): {rec.log.read_text()[-2000:]}")
    calls = res["counts"]["calls"]
    (out / "injected.txt").write_text(
        f"The test module (mmnt_test) was told to take a mutex in its secondary-TLB callback "
        f"(--behave {DEMO_BEHAVE}): every call of it (from the workload's scenarios, "
        f"{calls.get('secondary_tlb', 0)} by the module's own count, and from its set-up and exit) is a "
        f"might-sleep call where sleeping is forbidden. The report's violations of mmnt_secondary_tlb are this "
        f"injected bug; KVM's callbacks" + (" (a real KVM VM on the same mm)" if kvm else "") +
        " break no rule.\n")
    return out / "rec"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "demo":
        sys.exit("usage: python -m mmnlab.harness demo OUTDIR")
    demo(Path(sys.argv[2]))
