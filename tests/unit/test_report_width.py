"""The text report laid out for a width: snapshots at 80, 120 and 200 columns
(and of a --compare at 80 and 120), and for any width from 60 up no line is wider, nothing is cut to `…`, and no
number of the widest layout is missing from a narrow one; `--width` on the CLI.

A snapshot that no longer matches fails with a diff. When the change is meant,
rewrite them and review the diff in git:

    MMNTRACE_UPDATE_SNAPSHOTS=1 python -m pytest tests/unit/test_report_width.py
"""

import difflib
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from mmntrace import render, report, synthetic
from mmntrace.cli import main
from mmntrace.textfit import Col, Grid, layout, wrap

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("MMNTRACE_UPDATE_SNAPSHOTS") == "1"
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _fixed_recording(path: Path, **kw) -> Path:
    """A synthetic recording that renders byte for byte the same on any host:
    a fixed seed, and fixed wall-clock start and end in its metadata."""
    synthetic.write(path, **kw)
    meta = json.loads((path / "metadata.json").read_text())
    meta |= {"start_time": 1_700_000_000.0, "end_time": 1_700_000_000.0 + kw["span_s"]}
    (path / "metadata.json").write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def recdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("width")
    _fixed_recording(d / "rec", n_events=3000, segments=2, violations=12, span_s=10.0, seed=1)
    _fixed_recording(d / "other", n_events=2000, segments=2, violations=0, span_s=10.0, seed=2)
    _fixed_recording(d / "agg", n_events=2000, segments=2, violations=4, span_s=10.0, seed=3, aggregate=True)
    # a 6.1 kernel's recording (the secondary-TLB hook at its old symbol), half as long, no violation:
    # compared with rec, every warning line, the renamed symbol and the new violations' stacks are laid out
    _fixed_recording(d / "old", n_events=1500, segments=1, violations=0, span_s=5.0, seed=4,
                     release="6.1.0-synthetic", secondary="invalidate_range", backend="fentry")
    return d


@pytest.fixture(scope="module")
def reports(recdir):
    a = report.build(recdir / "rec")
    return {"plain": a, "compare": report.with_compare(a, report.build(recdir / "other")),
            "aggregate": report.build(recdir / "agg"),
            "compare_kernels": report.with_compare(report.build(recdir / "old"), a)}


def _cli(*args, cwd=None):
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        r = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(old)
    assert "Traceback" not in r.output, r.output
    return r


@pytest.mark.parametrize("width", [80, 120, 200])
def test_snapshot(recdir, width):
    """`mmntrace report rec --top 5 --width N`, run where the recording is
    (so the header names it `rec`), matches tests/unit/snapshots/report-N.txt."""
    r = _cli("report", "rec", "--top", "5", "--width", width, cwd=recdir)
    assert r.exit_code == 0, r.output
    path = SNAPSHOTS / f"report-{width}.txt"
    if UPDATE:
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(r.output)
    assert path.exists(), f"{path} is missing: run with MMNTRACE_UPDATE_SNAPSHOTS=1 to write it"
    want = path.read_text()
    if r.output != want:
        diff = "".join(difflib.unified_diff(want.splitlines(True), r.output.splitlines(True),
                                            f"{path.name} (stored)", f"{path.name} (rendered now)"))
        pytest.fail(f"the {width}-column report differs from {path}; if the change is meant, rewrite the snapshots "
                    f"with MMNTRACE_UPDATE_SNAPSHOTS=1 and review them in git diff:\n{diff}")


@pytest.mark.parametrize("width", [80, 120])
def test_compare_snapshot(recdir, width):
    """`mmntrace report old --compare rec --width N` (a 6.1 recording before,
    the 6.12 one after) matches tests/unit/snapshots/compare-N.txt."""
    r = _cli("report", "old", "--compare", "rec", "--top", "5", "--width", width, cwd=recdir)
    assert r.exit_code == 0, r.output
    path = SNAPSHOTS / f"compare-{width}.txt"
    if UPDATE:
        path.write_text(r.output)
    assert path.exists(), f"{path} is missing: run with MMNTRACE_UPDATE_SNAPSHOTS=1 to write it"
    if r.output != path.read_text():
        diff = "".join(difflib.unified_diff(path.read_text().splitlines(True), r.output.splitlines(True),
                                            f"{path.name} (stored)", f"{path.name} (rendered now)"))
        pytest.fail(f"the {width}-column comparison differs from {path}; if the change is meant, rewrite the "
                    f"snapshots with MMNTRACE_UPDATE_SNAPSHOTS=1 and review them in git diff:\n{diff}")


def test_snapshots_read_well():
    """What the snapshots were taken to show: the verdict first, the tree and
    split layouts where the width is short, and nothing cut."""
    s80, s120, s200 = ((SNAPSHOTS / f"report-{w}.txt").read_text() for w in (80, 120, 200))
    for s in (s80, s120, s200):
        assert s.splitlines()[0] == "mmntrace report: rec" and "\nVERDICT: 12 callback calls" in s
        assert "…" not in s
    assert "hook / callback / event" in s80 and "Latency histograms: log2 buckets" in s80
    assert "hook / callback / event" in s120 and "Latency histograms" not in s120
    assert "hook                     callback" in s200         # the three columns side by side
    assert "\n  hook: secondary_tlb\n" in s80                   # violations stacked
    assert "arch_invalidate_secondary_tlbs" not in s200.replace("__mmu_notifier_arch_invalidate_secondary_tlbs", "")
    c80, c120 = ((SNAPSHOTS / f"compare-{w}.txt").read_text() for w in (80, 120))
    for c in (c80, c120):
        lines = c.splitlines()
        assert lines[:2] == ["mmntrace report --compare: before → after", "  before  old"]
        assert "WARNING" in c and c.index("WARNING") < c.index("CHANGES") < c.index("Totals") < c.index("Latency")
        assert "\nsecondary_tlb\n" in c and "0.00x" not in c and "…" not in c and "VERDICT" not in c
    assert "hook / callback / event" in c120 and "Latency (µs), before → after (1 of 2)" in c80


def _widths_ok(text: str, width: int) -> list[str]:
    return [line for line in text.splitlines() if len(line) > width or "…" in line]


def _numbers(text: str) -> Counter:
    return Counter(NUMBER.findall(text))


@pytest.mark.parametrize("kind", ["plain", "compare", "aggregate", "compare_kernels"])
@pytest.mark.parametrize("width", [60, 80, 93, 100, 120, 137, 160, 200, 220])
def test_every_width_fits_and_keeps_every_number(reports, kind, width):
    rep = reports[kind]
    text = render.text(rep, width=width)
    assert not _widths_ok(text, width), _widths_ok(text, width)[:3]
    missing = _numbers(render.text(rep, width=220)) - _numbers(text)
    assert not missing, f"numbers of the 220-column report missing at {width}: {dict(missing)}"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(60, 240))
def test_any_width_fits(reports, width):
    for kind in ("compare", "compare_kernels"):
        text = render.text(reports[kind], width=width)
        assert not _widths_ok(text, width)
        assert not _numbers(render.text(reports[kind], width=220)) - _numbers(text)


def test_wrap_breaks_names_at_underscores_and_keeps_module_tags():
    assert wrap("kvm_mmu_notifier_invalidate_range_start [kvm]", 25, indent=2) == \
        ["  kvm_mmu_notifier_", "  invalidate_range_start", "  [kvm]"]
    assert wrap("mmnt_secondary_tlb [mmnt_test]", 24) == ["mmnt_secondary_tlb", "[mmnt_test]"]
    assert wrap("qemu-system-x86 (pids 1000, 1007)", 20) == ["qemu-system-x86", "(pids 1000, 1007)"]
    assert wrap("x" * 25, 10, hang=2) == ["x" * 10, "  " + "x" * 8, "  " + "x" * 7]
    assert wrap("", 10) == [""]


def test_numbers_never_wrap_and_tables_split_last():
    g = Grid("t", [Col("name", "name", min_width=8)] + [Col(f"n{i}") for i in range(8)])
    g.add("a_rather_long_function_name", *[f"{10 ** i:,}" for i in range(8)])
    lays = layout(g, 60)
    assert len(lays) == 2 and [lay.grid.title for lay in lays] == ["t (1 of 2)", "t (2 of 2)"]
    for lay in lays:
        for col, w, cell in zip(lay.grid.cols[1:], lay.widths[1:], lay.grid.rows[0][1:]):
            assert w >= len(cell) and col.kind == "num"


@pytest.mark.parametrize("args,msg", [
    (["--width", "59"], "needs at least 60 columns, not 59"),
    (["--width", "wide"], "is not a valid integer"),
    (["--width", "80", "--format", "json"], "--format json has no width"),
])
def test_width_bad_input_one_sentence(recdir, args, msg):
    r = _cli("report", recdir / "rec", *args)
    assert r.exit_code == 2 and msg in r.output, r.output


def test_width_default_and_help(recdir):
    r = _cli("report", recdir / "rec")                 # not a terminal: 220 columns, as before
    assert r.exit_code == 0 and "hook                     callback" in r.output
    assert max(len(line) for line in r.output.splitlines()) <= 220
    h = _cli("report", "--help")
    assert "--width COLUMNS" in h.output and "never cutting a number" in h.output


def test_one_rate_definition_across_tables(tmp_path):
    """Issue 16: the Over-time table's rate/s and the latency table's rate/s
    divide by the same thing, the recording's duration, even when the events
    fill only part of it (here 10 s of 30)."""
    synthetic.write(tmp_path / "rec", n_events=3000, segments=1, violations=0, span_s=10.0,
                    idle_start_s=10.0, idle_end_s=10.0)
    from mmntrace.recording import Recording
    from mmntrace import aggregate
    rep = report.from_summary(aggregate.summarize(Recording(tmp_path / "rec")))
    assert abs(rep["duration_s"] - 30.0) < 0.5
    text = render.text(rep, width=200)
    over = text[text.index("Over time"):]
    for s in rep["timeline"]["series"]:
        hook_rows = [r for r in rep["latency"] if r["hook"] == s["hook"] and r["callback"] is None]
        want = sum(r["rate_per_s"] for r in hook_rows)
        line = next(ln for ln in over.splitlines() if ln.startswith(s["hook"] + " "))
        got = float(line.split()[2].replace(",", ""))
        assert abs(got - want) <= max(0.06, want * 0.01), (s["hook"], got, want, line)
