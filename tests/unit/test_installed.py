"""Issue 15: the installed wheel (build/wheel-venv, scripts/wheel-venv.sh) on the host.

It runs from a directory outside the checkout with nothing of the checkout
on its path: the package it imports is the installed one, with the BPF
sources and the notebooks as package data and no lab; and it reports on,
plots and runs the notebooks over the recording that install made in each
lab kernel (tests/lab/test_install.py, build/lab-recordings-installed/).
`make test` builds the venv and sets MMNTRACE_REQUIRE_LAB_RECORDINGS=1, so a
missing venv or recording fails there; run alone, these skip saying why.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from mmnlab.harness import user_env

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MMNTRACE_WHEEL_VENV", REPO / "build" / "wheel-venv"))
MMNTRACE = VENV / "bin" / "mmntrace"
RECS = sorted(p for p in (REPO / "build" / "lab-recordings-installed").glob("*") if (p / "metadata.json").exists())
REQUIRED = os.environ.get("MMNTRACE_REQUIRE_LAB_RECORDINGS") == "1"

if not MMNTRACE.exists():
    if REQUIRED:
        raise RuntimeError(f"no installed mmntrace at {MMNTRACE}: `make wheel` should have made it")
    pytest.skip(f"no installed mmntrace at {MMNTRACE} (make wheel)", allow_module_level=True)


def _env() -> dict:
    return user_env(VENV)


def _run(args, cwd, timeout=600):
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{args}: exit {p.returncode}\n{p.stdout[-2000:]}{p.stderr[-3000:]}"
    return p


def test_the_install_is_what_runs_and_carries_no_lab(tmp_path):
    p = _run([VENV / "bin" / "python", "-c",
              "import importlib.util, mmntrace, mmntrace.tracer as t, mmntrace.notebooks as nb; "
              "print(mmntrace.__file__); print(t.BPF_SRC.is_file() and t.BPF_SRC.with_name('mmntrace.h').is_file()); "
              "print(len(list(nb.NOTEBOOKS.glob('*.ipynb')))); print(importlib.util.find_spec('mmnlab'))"], tmp_path)
    where, bpf_src, n_nb, lab = p.stdout.split()
    assert Path(where).resolve().is_relative_to(VENV.resolve()) and "site-packages" in where, where
    assert bpf_src == "True"          # the BPF sources are package data
    assert int(n_nb) >= 2             # so are the notebooks
    assert lab == "None"              # the lab is not shipped
    helptext = _run([MMNTRACE, "--help"], tmp_path).stdout
    assert re.search(r"^\s+record\s", helptext, re.M) and not re.search(r"^\s+lab\s", helptext, re.M)
    bad = subprocess.run([str(MMNTRACE), "lab", "--kernel", "6.12", "--", "true"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "No such command 'lab'" in bad.stderr


@pytest.mark.skipif(not RECS and not REQUIRED, reason="no installed-wheel lab recordings yet (make lab-test)")
@pytest.mark.parametrize("rec", RECS or [None], ids=[p.name for p in RECS] or ["missing"])
def test_installed_report_plot_and_notebooks_on_its_lab_recording(rec, tmp_path):
    assert rec is not None, "no recording in build/lab-recordings-installed: tests/lab/test_install.py makes it"
    text = _run([MMNTRACE, "report", rec, "--width", "120"], tmp_path).stdout
    assert "mmnt_invalidate_range_start" in text and "secondary_tlb" in text
    figs = _run([MMNTRACE, "plot", rec, "-o", "figs"], tmp_path).stdout.split()
    assert len(figs) >= 2 and all((tmp_path / f).stat().st_size > 0 for f in figs)
    nbs = _run([MMNTRACE, "notebooks", rec, "nb"], tmp_path, timeout=900).stdout.split()
    assert sorted(Path(p).name for p in nbs) == ["latency.ipynb", "violations.ipynb"]
    cells = json.loads((tmp_path / next(p for p in nbs if p.endswith("latency.ipynb"))).read_text())["cells"]
    assert "mmnt_invalidate_range_start" in json.dumps([c.get("outputs", []) for c in cells])
    shipped = Path(_run([MMNTRACE, "notebooks", "--where"], tmp_path).stdout.strip())
    assert shipped.resolve().is_relative_to(VENV.resolve()) and (shipped / "latency.ipynb").is_file()
