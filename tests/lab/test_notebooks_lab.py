"""Issue 4 in the lab: the notebooks, the HTML report and the plots on a real recording.

The recording is made here (KVM + the test module, with a mutex injected in
the secondary-TLB callback so the violations notebook has something to
triage) and is not committed.
"""

import json
import os
import subprocess
import sys

import pytest

from groundtruth import Recorder, WorkloadProcess

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    rec = Recorder(tmp / "rec")
    wp = WorkloadProcess(["munmap", "mprotect", "cow"], tmp / "wl", kvm=os.path.exists("/dev/kvm"),
                         extra=["--behave", "secondary_tlb:mutex"])
    rec.wait_callbacks(["mmnt_invalidate_range_start", "mmnt_secondary_tlb"])
    wp.go()
    res = wp.collect()
    wp.finish()
    assert rec.stop() == 0, rec.log.read_text()
    return tmp / "rec", res


def test_notebooks_run_on_a_lab_recording(recording, tmp_path):
    from mmntrace.notebooks import run_notebooks
    rec, _ = recording
    done = run_notebooks(rec, tmp_path / "out")
    assert {p.name for p in done} >= {"latency.ipynb", "violations.ipynb"}
    # the violations notebook found the injected mutex_lock
    nb = json.loads(next(p for p in done if p.name == "violations.ipynb").read_text())
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert "mutex_lock" in text and "mmnt_secondary_tlb" in text


def test_report_html_and_plots_on_a_lab_recording(recording, tmp_path):
    rec, res = recording
    py = [sys.executable, "-m", "mmntrace.cli"]
    out = subprocess.run(py + ["report", str(rec), "--format", "json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    rows = [v for v in rep["violations"] if (v["callback"] or "").startswith("mmnt_secondary_tlb")]
    assert len(rows) == 1 and rows[0]["sleeper"] == "mutex_lock"
    html = tmp_path / "r.html"
    out = subprocess.run(py + ["report", str(rec), "--format", "html", "-o", str(html)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert html.stat().st_size > 10_000 and "mmnt_secondary_tlb" in html.read_text()
    out = subprocess.run(py + ["plot", str(rec), "-o", str(tmp_path / "plots")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "plots").glob("*.png"))) >= 3
