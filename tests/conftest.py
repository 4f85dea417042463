import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The checkout under test, first for this process and for every Python it
# starts (a recorder, a workload, a bench script). Run from a git worktree,
# the editable installs in .venv (mmntrace, mmnlab) point at the main
# checkout: mmnlab came from there in this process, and so did mmntrace in
# every subprocess not started in this checkout's directory, which then
# tested the main checkout's code beside this one's.
_CHECKOUT = Path(__file__).resolve().parents[1]
_OURS = [str(_CHECKOUT / "lab"), str(_CHECKOUT)]
sys.path[:0] = [p for p in _OURS if p not in sys.path]
os.environ["PYTHONPATH"] = os.pathsep.join(_OURS + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                                    if p and p not in _OURS])


_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
_stats_was: str | None = None


def pytest_sessionstart(session):
    """In a lab guest, hold kernel.bpf_stats_enabled on for the whole suite.
    The daemon turns it on and off around its windows; each switch patches a
    static key on the BPF dispatch path with text_poke_bp(), and under QEMU's
    multi-threaded TCG a vCPU can keep running into the int3 that patching
    leaves (a 6.12 guest died at bpf_trace_run4+0x80 as the daemon tests
    switched it; a 6.1 suite guest soft-locked a python task for 650 s in the
    daemon test). Held on from before any of our programs run, the daemon's
    switch leaves the key alone (docs/reliability.md, "The lab itself")."""
    global _stats_was
    if os.environ.get("MMNTRACE_LAB_KERNEL") and os.geteuid() == 0 and _STATS.exists():
        try:
            _stats_was = _STATS.read_text().strip()
            if _stats_was != "1":
                _STATS.write_text("1")
        except OSError:
            _stats_was = None


def pytest_sessionfinish(session, exitstatus):
    if _stats_was is not None and _stats_was != "1":
        try:
            _STATS.write_text(_stats_was)
        except OSError:
            pass


def pytest_collection_modifyitems(config, items):
    """Lab tests need a traceable kernel, root and the test module: inside
    `mmntrace lab` they have all three. Elsewhere they skip, saying why."""
    reason = None
    if os.geteuid() != 0:
        reason = "lab test: needs root in a lab guest (run `make lab-test`)"
    elif not os.path.exists("/dev/mmnt_test"):
        reason = "lab test: the test module /dev/mmnt_test is not loaded (run `make lab-test`)"
    if reason:
        for item in items:
            if "lab" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_runtest_logreport(report):
    """In a lab guest, print each failure as it happens (stderr, unbuffered):
    if the guest later hangs or is killed, the log still says what failed."""
    if report.failed and os.environ.get("MMNTRACE_LAB_KERNEL") and report.longrepr is not None:
        sys.stderr.write(f"\n==== FAILED {report.nodeid} ({report.when})\n{report.longreprtext[-6000:]}\n")
        sys.stderr.flush()
    _record_progress(report)


_OUTCOME: dict[str, str] = {}


def _record_progress(report) -> None:
    """With MMNTRACE_LAB_PROGRESS set (scripts/lab_suite.py), append
    "nodeid outcome" once a test has finished, synced: if the guest dies,
    the suite resumes in a fresh one without what is in that file."""
    path = os.environ.get("MMNTRACE_LAB_PROGRESS")
    if not path:
        return
    o = _OUTCOME.get(report.nodeid, "passed")
    if report.failed:
        o = "failed"
    elif report.skipped and o != "failed":
        o = "skipped"
    _OUTCOME[report.nodeid] = o
    if report.when == "teardown":
        with open(path, "a") as f:
            f.write(f"{report.nodeid} {o}\n")
            f.flush()
            os.fsync(f.fileno())
