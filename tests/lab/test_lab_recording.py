"""Issue 4: a real lab recording for the notebooks, the HTML report and the plots.

The recording is made here (KVM + the test module, with a mutex injected in
the secondary-TLB callback so the violations notebook has something to
triage) into build/lab-recordings/<release>/ (the shared directory of
`make lab-test`; never committed). The notebooks, HTML and plots then run on
the host, not emulated: tests/unit/test_lab_recordings.py.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from groundtruth import record_workload

# every x86 lab kernel records one for the host's notebooks: a sleeping-rule test (the
# mutex under the page-table lock), so PREEMPT_RT runs it too (lock_context); arm64's
# in `make lab-test-arm64` (arm64_full: the emulated guest's time)
pytestmark = [pytest.mark.lab, pytest.mark.lock_context, pytest.mark.arm64_full]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    # the workload's subscribers exist before the recorder, as a user's VM does:
    # --ready-file means they are probed (nothing waits on the recorder's internals)
    rec, res = record_workload(["munmap", "mprotect", "cow"], tmp / "wl", tmp / "rec", "--might-sleep",
                               kvm=os.path.exists("/dev/kvm"), extra=["--behave", "secondary_tlb:mutex"])
    assert rec.proc.returncode == 0, rec.log.read_text()
    share = Path(__file__).resolve().parents[2] / "build"
    if os.access(share, os.W_OK):   # hand it to the host-side tests
        dest = share / "lab-recordings" / os.uname().release
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(tmp / "rec", dest)
    return tmp / "rec", res


def test_lab_recording_reports_the_injected_mutex(recording, tmp_path):
    rec, res = recording
    py = [sys.executable, "-m", "mmntrace.cli"]
    out = subprocess.run(py + ["report", str(rec), "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    rows = [v for v in rep["violations"] if (v["callback"] or "").startswith("mmnt_secondary_tlb")]
    assert len(rows) == 1 and rows[0]["sleeper"] == "mutex_lock"
