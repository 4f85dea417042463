"""Issue 15: mmntrace as a user installs it, not as this checkout runs it.

`make lab-test` builds the wheel and installs it, non-editable, into
build/wheel-venv (scripts/wheel-venv.sh: a venv that sees Debian's bcc, the
wheel with its dependencies and the notebooks extra). Here, in a lab kernel,
that install records the test module's workload (counts against the
module's own) and reports on it, and samples one daemon window through the
exact command line of the systemd unit; all from a directory outside the
checkout, with nothing of the checkout on its path. The recording is left in
build/lab-recordings-installed/<release>/ for the host, where the installed
command plots it and runs the notebooks (tests/unit/test_installed.py).
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from groundtruth import Recorder, WorkloadProcess
from mmnlab.harness import user_env
from mmnlab import testmod

pytestmark = [pytest.mark.lab, pytest.mark.one_kernel]

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MMNTRACE_WHEEL_VENV", REPO / "build" / "wheel-venv"))
MMNTRACE = VENV / "bin" / "mmntrace"
UNIT = REPO / "packaging" / "systemd" / "mmntrace-once.service"
CONFIG = REPO / "packaging" / "daemon.toml"


def _env() -> dict:
    return user_env(VENV)


def _run(args, cwd, timeout=600, check=True):
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{shlex.join(map(str, args))}: exit {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-3000:]}"
    return p


@pytest.fixture(scope="module")
def installed():
    assert MMNTRACE.exists(), f"no installed mmntrace at {MMNTRACE}: run scripts/wheel-venv.sh (make lab-test does)"
    return VENV


def test_installed_mmntrace_records_from_the_first_call(installed, tmp_path):
    work = tmp_path / "user"
    work.mkdir()
    wp = WorkloadProcess(["mprotect", "dontneed"], tmp_path / "wl")
    try:
        t0 = time.monotonic()
        rec = Recorder(work / "rec", cmd=[str(MMNTRACE)], cwd=work, side=tmp_path, env=_env())
        print(f"installed recorder ready after {time.monotonic() - t0:.1f} s")
        wp.go()
        res = wp.collect()
    finally:
        wp.finish()
    assert rec.stop() == 0, rec.log.read_text()
    # the recording's callback counts equal the module's, for the workload's own thread
    import mmntrace
    r = mmntrace.Recording(work / "rec")
    assert r.complete
    ev = r.events()
    lo, hi = res["window_ns"]
    mod = np.concatenate([np.load(s[k]) for s in res["scenarios"] for k in ("records_pre", "records_before", "records")
                          if k in s])
    mod = mod[mod["tid"] == res["pid"]]
    win = ev[(ev["tid"] == res["pid"]) & (ev["ts_ns"] >= lo) & (ev["ts_ns"] <= hi) & (ev["kind"] == "callback")]
    for fn in ("mmnt_invalidate_range_start", "mmnt_invalidate_range_end", "mmnt_secondary_tlb"):
        n = int((win["callback"].astype(str).str.startswith(fn)).sum())
        hook = {"mmnt_invalidate_range_start": "start", "mmnt_invalidate_range_end": "end",
                "mmnt_secondary_tlb": "secondary_tlb"}[fn]
        assert n == int((mod["hook"] == testmod.HOOKS[hook]).sum()) and n > 0, fn
    # the report the installed command writes agrees; the host runs its plots and
    # notebooks on a copy (tests/unit/test_installed.py: Jupyter is not emulated)
    t0 = time.monotonic()
    _run([MMNTRACE, "report", "rec", "--format", "json", "-o", "rep.json"], work)
    print(f"installed report: {time.monotonic() - t0:.1f} s")
    rep = json.loads((work / "rep.json").read_text())
    assert rep["dropped"] == 0 and rep["violations"] == []
    share = REPO / "build"
    if os.access(share, os.W_OK):   # hand it to the host-side tests
        dest = share / "lab-recordings-installed" / os.uname().release
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(work / "rec", dest)


@pytest.mark.matrix_all     # the installed wheel records in the test above; CI's 90 minutes
def test_the_systemd_units_command_line_samples_a_window(installed, tmp_path):
    """mmntrace-once.service's ExecStart, with the installed mmntrace where the
    unit expects /usr/local/bin/mmntrace and the shipped daemon.toml (its
    output directory moved to a scratch one; the window shortened by a flag,
    which wins over the file)."""
    execs = [ln.split("=", 1)[1] for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStart=")]
    assert len(execs) == 1
    argv = shlex.split(execs[0])
    assert argv[0] == "/usr/local/bin/mmntrace" and argv[1:3] == ["daemon", "--once"], argv
    state = tmp_path / "state"
    cfg = tmp_path / "daemon.toml"
    text = CONFIG.read_text()
    assert 'out = "/var/lib/mmntrace"' in text
    cfg.write_text(text.replace('out = "/var/lib/mmntrace"', f'out = "{state}"'))
    argv = [str(MMNTRACE), *[str(cfg) if a == "/etc/mmntrace/daemon.toml" else a for a in argv[1:]], "--for", "3s"]
    p = _run(argv, tmp_path)
    lines = [json.loads(ln) for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, p.stdout + p.stderr
    assert list(state.rglob("*.parquet")) or list(state.rglob("*.json")), sorted(map(str, state.rglob("*")))
    assert (state / "mmntrace.prom").is_file()
