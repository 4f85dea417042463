"""The notebooks, the HTML report and the plots on real lab recordings.

`make lab-test` records KVM + the test module in each lab kernel into
build/lab-recordings/<release>/ (tests/lab/test_lab_recording.py). This runs
on the host, where Jupyter is not emulated. `make test` sets
MMNTRACE_REQUIRE_LAB_RECORDINGS=1, so a missing recording fails there; run
alone, it skips with the reason.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RECS = sorted(p for p in (REPO / "build" / "lab-recordings").glob("*") if (p / "metadata.json").exists())

if not RECS:
    if os.environ.get("MMNTRACE_REQUIRE_LAB_RECORDINGS") == "1":
        raise RuntimeError("no lab recordings in build/lab-recordings: `make lab-test` should have made them")
    pytest.skip("no lab recordings yet (make lab-test writes build/lab-recordings/)", allow_module_level=True)


@pytest.mark.parametrize("rec", RECS, ids=[p.name for p in RECS])
def test_notebooks_on_lab_recording(rec, tmp_path):
    from mmntrace.notebooks import run_notebooks
    done = run_notebooks(rec, tmp_path / "out")
    assert {p.name for p in done} >= {"latency.ipynb", "violations.ipynb"}
    nb = json.loads(next(p for p in done if p.name == "violations.ipynb").read_text())
    text = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert "mutex_lock" in text and "mmnt_secondary_tlb" in text    # the injected violation, triaged


@pytest.mark.parametrize("rec", RECS, ids=[p.name for p in RECS])
def test_html_and_plots_on_lab_recording(rec, tmp_path):
    py = [sys.executable, "-m", "mmntrace.cli"]
    html = tmp_path / "r.html"
    out = subprocess.run(py + ["report", str(rec), "--format", "html", "-o", str(html)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert html.stat().st_size > 10_000 and "mmnt_secondary_tlb" in html.read_text()
    out = subprocess.run(py + ["plot", str(rec), "-o", str(tmp_path / "plots")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "plots").glob("*.png"))) >= 3
