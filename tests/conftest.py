import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


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
