"""scripts/lab_suite.py: a guest that dies is resumed once, without the tests
that had finished; earlier failures and a second death still fail the run.

The fake `mmntrace lab` below plays the guest: it appends to the progress file
the way tests/conftest.py does and exits like `mmntrace lab` would.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE = r"""#!/usr/bin/env python3
import os, re, sys, time
argv = sys.argv[1:]
calls = os.path.join(os.environ["FAKE_DIR"], "calls")
n = len(open(calls).read().splitlines()) if os.path.exists(calls) else 0
with open(calls, "a") as f:
    f.write(" ".join(argv) + "\n")
prog = next(a.split("=", 1)[1] for a in argv if a.startswith("MMNTRACE_LAB_PROGRESS="))
plan = os.environ["FAKE_PLAN"].split(";")[n]     # "t1 passed,t2 failed|125"
done, rc = plan.split("|")
with open(prog, "a") as f:
    for d in filter(None, done.split(",")):
        f.write(d + "\n")
if rc == "hang":            # a wedged guest: alive, silent, until the VM is stopped
    time.sleep(600)
sys.exit(int(rc))
"""


def _run(tmp_path, plan, *args, **env_extra):
    fake = tmp_path / "mmntrace"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    env = dict(os.environ, LAB_SUITE_MMNTRACE=str(fake), LAB_SUITE_BUILD=str(tmp_path), FAKE_DIR=str(tmp_path),
               FAKE_PLAN=plan, **env_extra)
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "lab_suite.py"), "6.1", *args], env=env,
                       capture_output=True, text=True)
    calls = (tmp_path / "calls").read_text().splitlines()
    return r, calls


def test_death_resumes_once_without_finished_tests(tmp_path):
    r, calls = _run(tmp_path, "tests/a.py::t1 passed,tests/a.py::t2[x-y] skipped|125;tests/a.py::t3 passed|0")
    assert r.returncode == 0, r.stderr
    assert len(calls) == 2
    assert "--deselect" not in calls[0]
    assert "--deselect=tests/a.py::t1" in calls[1].split() and "--deselect=tests/a.py::t2[x-y]" in calls[1].split()
    assert "guest died" in r.stderr and "2 test(s) finished" in r.stderr


def test_failure_before_the_death_still_fails(tmp_path):
    r, calls = _run(tmp_path, "tests/a.py::t1 failed|125;tests/a.py::t2 passed|0")
    assert r.returncode == 1 and len(calls) == 2
    assert "failed before the guest died: tests/a.py::t1" in r.stderr


def test_second_death_fails(tmp_path):
    r, calls = _run(tmp_path, "tests/a.py::t1 passed|125;|125")
    assert r.returncode == 125 and len(calls) == 2


@pytest.mark.parametrize("rc", [0, 1, 3, 124])
def test_no_resume_unless_the_vm_died(tmp_path, rc):
    r, calls = _run(tmp_path, f"tests/a.py::t1 passed|{rc}")
    assert r.returncode == rc and len(calls) == 1


def test_death_after_the_last_test(tmp_path):
    """Everything had finished: the resumed pytest selects nothing (its exit 5), which is a pass."""
    r, calls = _run(tmp_path, "tests/a.py::t1 passed|125;|5")
    assert r.returncode == 0 and len(calls) == 2


def test_wedged_guest_is_stopped_and_resumed(tmp_path):
    """No test finishes for longer than a test may run: the VM is stopped
    (SIGTERM to `mmntrace lab`) and that counts as a death."""
    t0 = time.monotonic()
    r, calls = _run(tmp_path, "tests/a.py::t1 passed|hang;tests/a.py::t2 passed|0", "--timeout", "1",
                    LAB_SUITE_STALL_MARGIN_S="2")
    assert time.monotonic() - t0 < 60
    assert r.returncode == 0 and len(calls) == 2, r.stderr
    assert "--deselect=tests/a.py::t1" in calls[1].split()
    assert "kernel is wedged" in r.stderr and "guest died" in r.stderr


def _span(d, k: str) -> tuple[float, float]:
    """When the fake guest of kernel k began and ended (CLOCK_MONOTONIC)."""
    return (float((d / f"argv-{k}").read_text().splitlines()[0]), float((d / f"end-{k}").read_text()))


PARALLEL_FAKE = r"""#!/usr/bin/env python3
import os, sys, time
argv = sys.argv[1:]
k = argv[argv.index("--kernel") + 1]
prog = next(a.split("=", 1)[1] for a in argv if a.startswith("MMNTRACE_LAB_PROGRESS="))
with open(os.path.join(os.path.dirname(prog), f"argv-{k}"), "w") as f:
    f.write(f"{time.monotonic()}\n" + "\n".join(argv))
print(f"guest of {k} up", flush=True)
time.sleep(5)
with open(prog, "a") as f:
    f.write(f"tests/a.py::t_{k} passed\n")
with open(os.path.join(os.path.dirname(prog), f"end-{k}"), "w") as f:
    f.write(f"{time.monotonic()}\n")
print(f"guest of {k} done", flush=True)
rc = int(os.environ.get("FAKE_RC_" + k.replace(".", "_"), "0"))
if rc:
    print(f"FAILED tests/a.py::t_{k} - assert 2 == 1", flush=True)
sys.exit(rc)
"""


@pytest.mark.parametrize("fail", [None, "6.12"])
def test_several_kernels_run_side_by_side(tmp_path, fail):
    """`lab_suite.py 6.1 6.12`: both guests at once (each began before the
    other ended: the fakes' own CLOCK_MONOTONIC stamps, not a wall-clock bound
    that a loaded host stretches), every line led by its kernel, the exit
    status a failing suite's."""
    fake = tmp_path / "mmntrace"
    fake.write_text(PARALLEL_FAKE)
    fake.chmod(0o755)
    env = dict(os.environ, LAB_SUITE_MMNTRACE=str(fake), LAB_SUITE_BUILD=str(tmp_path))
    if fail:
        env["FAKE_RC_" + fail.replace(".", "_")] = "1"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "lab_suite.py"), "6.1", "6.12"], env=env,
                       capture_output=True, text=True)
    span = {k: _span(tmp_path, k) for k in ("6.1", "6.12")}
    assert span["6.1"][0] < span["6.12"][1] and span["6.12"][0] < span["6.1"][1], span     # side by side
    lines = r.stdout.splitlines()
    for k in ("6.1", "6.12"):
        assert f"[{k}] guest of {k} up" in lines and f"[{k}] guest of {k} done" in lines, r.stdout
        assert (tmp_path / f"lab-progress-{k}.txt").read_text() == f"tests/a.py::t_{k} passed\n"
    if fail:
        assert r.returncode == 1 and "lab-test: 6.12: failed (exit 1)" in lines and "lab-test: 6.1: passed" in lines
        # CI shows the log's tail only: the failed test is named again after the verdicts
        assert lines[-1] == "lab-test:   FAILED tests/a.py::t_6.12 - assert 2 == 1", r.stdout
    else:
        assert r.returncode == 0 and "lab-test: 6.12: passed" in lines, r.stdout + r.stderr


def test_matrix_scopes_and_at_most_jobs_guests(tmp_path):
    """`lab_suite.py 6.12:main 6.1:kernel 6.12-rt:context --jobs 2` (make lab-test's): each kernel
    runs its scope's tests (pytest -m), two guests at once, the third when a
    slot frees; a bad scope is one sentence before anything boots."""
    fake = tmp_path / "mmntrace"
    fake.write_text(PARALLEL_FAKE)
    fake.chmod(0o755)
    env = dict(os.environ, LAB_SUITE_MMNTRACE=str(fake), LAB_SUITE_BUILD=str(tmp_path))
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "lab_suite.py"), "6.12:main", "6.1:kernel",
                        "6.12-rt:context", "--jobs", "2"], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    marks = {}
    span = {k: _span(tmp_path, k) for k in ("6.12", "6.1", "6.12-rt")}
    for k in span:
        argv = (tmp_path / f"argv-{k}").read_text().splitlines()[1:]
        marks[k] = argv[len(argv) - 1 - argv[::-1].index("-m") + 1]
    # the first two side by side; the third waited for a free guest (the fakes' own
    # CLOCK_MONOTONIC stamps: no wall-clock bound, which a loaded host stretches)
    first_end = min(span["6.12"][1], span["6.1"][1])
    assert span["6.12"][0] < first_end and span["6.1"][0] < first_end, span
    assert span["6.12-rt"][0] >= first_end, span
    assert marks == {"6.12": "lab and not second_kernel and not matrix_all",
                     "6.1": "lab and not one_kernel and not matrix_all",
                     "6.12-rt": "lab and lock_context and not matrix_all"}
    assert "lab-test: 6.12-rt:context: passed" in r.stdout.splitlines()
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "lab_suite.py"), "6.1:most"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "SCOPE one of all, main, kernel, context" in bad.stderr


PREP = r"""import sys, time
d, rc = sys.argv[1], int(sys.argv[2])
open(f"{d}/prep-begin", "w").write(f"{time.monotonic()}\n")
time.sleep(2)
print("root built", flush=True)
open(f"{d}/prep-end", "w").write(f"{time.monotonic()}\n")
sys.exit(rc)
"""


@pytest.mark.parametrize("prep_rc", [0, 3])
def test_a_prepared_suite_waits_for_its_preparation_and_no_other_does(tmp_path, prep_rc):
    """`lab_suite.py 6.1 6.12 --prepare 6.12=CMD` (make lab-test's arm64 root
    file system): CMD starts at once, beside the first guest, which does not
    wait for it; the 6.12 guest starts only once CMD has ended, and a CMD that
    fails fails that suite, saying so at the end, without booting its guest,
    while the other passes. A --prepare for a kernel no suite runs is one
    sentence before anything starts."""
    fake = tmp_path / "mmntrace"
    fake.write_text(PARALLEL_FAKE)
    fake.chmod(0o755)
    (tmp_path / "prep.py").write_text(PREP)
    env = dict(os.environ, LAB_SUITE_MMNTRACE=str(fake), LAB_SUITE_BUILD=str(tmp_path))
    cmd = f"{sys.executable} {tmp_path / 'prep.py'} {tmp_path} {prep_rc}"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "lab_suite.py"), "6.1", "6.12", "--jobs", "2",
                        "--prepare", f"6.12={cmd}"], env=env, capture_output=True, text=True)
    lines = r.stdout.splitlines()
    begin = float((tmp_path / "prep-begin").read_text())
    end = float((tmp_path / "prep-end").read_text())
    first = _span(tmp_path, "6.1")
    assert begin < first[1] and first[0] < end, (begin, end, first)     # beside the 6.1 guest
    assert "[6.12] root built" in lines, r.stdout
    assert "lab-test: 6.1: passed" in lines
    if prep_rc == 0:
        assert r.returncode == 0, r.stdout + r.stderr
        assert _span(tmp_path, "6.12")[0] >= end
        assert "lab-test: 6.12: passed" in lines
    else:
        assert r.returncode == prep_rc and not (tmp_path / "argv-6.12").exists(), r.stdout
        assert "lab-test: 6.12: failed (exit 3)" in lines
        assert lines[-1] == f"lab-test:   its preparation `{cmd}` failed (exit 3)", r.stdout
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "lab_suite.py"), "6.1", "--prepare", "6.9=true"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "no suite given runs kernel 6.9" in bad.stderr and not bad.stdout
