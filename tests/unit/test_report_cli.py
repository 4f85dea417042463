"""`mmntrace report` (text, json, html, --compare) and `mmntrace plot` through
the CLI; bad input gives one sentence and a non-zero exit; the notebooks run;
the HTML renders in a real browser."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from mmntrace import hooks, synthetic
from mmntrace.cli import main
from mmntrace.recording import RecordingWriter

META = {"kernel": {"release": "6.12.0-test", "arch": "x86_64"}, "backend": "kprobe", "aggregate": False}


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    d = tmp_path_factory.mktemp("recs")
    a = synthetic.write(d / "a", n_events=6000, segments=3, violations=12, span_s=10.0, seed=1)
    b = synthetic.write(d / "b", n_events=3000, segments=2, violations=0, span_s=10.0, seed=2)
    agg = synthetic.write(d / "agg", n_events=3000, segments=2, violations=4, aggregate=True, span_s=10.0, seed=3)
    empty = d / "empty"
    RecordingWriter(empty, META).finish(drops={"total": 0})
    return {"a": a, "b": b, "agg": agg, "empty": empty, "dir": d}


def _run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


def test_text_report_sections(recs):
    r = _run("report", recs["a"])
    assert r.exit_code == 0, r.output
    for s in ("Latency (µs) by hook x callback x event", "Over time:", "Top processes", "Top mms",
              "Callers of the secondary-TLB hook", "ptl_clear", "Rule violations (12 callback invocations)",
              "example stack 1", "Drops: 3 records lost", "Coverage: 16 probes attached, 1 skipped",
              "kvm_mmu_notifier_invalidate_range_start [kvm]", "p99.9"):
        assert s in r.output, s


def test_json_report_contract_and_additions(recs):
    r = _run("report", recs["a"], "--format", "json")
    assert r.exit_code == 0
    rep = json.loads(r.output)
    # the schema-1 contract (docs/report-schema.md) ...
    assert rep["schema_version"] == 1
    assert {"kernel", "complete", "backend", "aggregate", "duration_s", "events", "dropped", "drops", "latency",
            "violations", "coverage"} <= rep.keys()
    assert {"hook", "callback", "event", "count", "p50_ns", "p90_ns", "p99_ns", "max_ns"} <= rep["latency"][0].keys()
    assert {"rule", "hook", "callback", "sleeper", "atomic", "count", "stack", "first_ns", "last_ns", "pids"} \
        <= rep["violations"][0].keys()
    assert {"attached", "skipped"} <= rep["coverage"].keys()
    # ... and what minor 1 added
    assert rep["schema_minor"] >= 1
    assert {"p999_ns", "rate_per_s", "mean_ns", "min_ns", "total_ns", "hist_log2"} <= rep["latency"][0].keys()
    assert {"timeline", "processes", "mms", "secondary_tlb", "quantile_method", "hook_invocations",
            "callback_invocations", "events_per_s", "violation_invocations"} <= rep.keys()
    assert rep["events"] == 6000 and rep["violation_invocations"] == 12
    assert "compare" not in rep
    # ... and minor 2: the verdict, counted from the same rows
    assert rep["schema_minor"] >= 2
    v = rep["verdict"]
    assert v["violation_invocations"] == 12 and v["violation_rules"] == len(rep["violations"])
    assert v["atomic_violation_invocations"] == sum(x["atomic_count"] for x in rep["violations"])
    assert all(0 <= x["atomic_count"] <= x["count"] for x in rep["violations"])
    from mmntrace.recording import Recording
    ev = Recording(recs["a"]).events()
    assert v["must_not_sleep_watched"] == int(((ev.kind == "callback") & ev.must_not_sleep).sum()) > 0
    assert v["dropped"] == rep["dropped"]
    text = _run("report", recs["a"]).output
    assert text.splitlines()[4].startswith("VERDICT: 12 callback calls broke the sleeping rules")
    # ... and minor 3: the seconds every rate is per
    assert rep["schema_minor"] >= 3
    assert rep["rate_s"] == rep["duration_s"] == 10.0
    assert all(r["rate_per_s"] == round(r["count"] / rep["rate_s"], 3) for r in rep["latency"])
    # ... and minor 4: whether calls that may sleep were watched (this recording has such violations)
    assert rep["schema_minor"] >= 4
    assert v["might_sleep_watched"] is True and "not watched" not in text.splitlines()[4]
    # ... and minor 6: hooks by their stable names, the kernel's symbol of each beside them
    assert rep["schema_minor"] >= 6
    assert rep["coverage"]["hook_symbols"]["secondary_tlb"] == "__mmu_notifier_arch_invalidate_secondary_tlbs"
    assert list(rep["coverage"]["hook_symbols"]) == [h for h in hooks.choices() if h in rep["coverage"]["hooks"]]
    assert {r["hook"] for r in rep["latency"]} <= set(hooks.choices())
    assert "kernel symbols: secondary_tlb at __mmu_notifier_arch_invalidate_secondary_tlbs" in text
    # ... and minor 9: how the lock context was read (the usual way: not printed)
    assert rep["schema_minor"] >= 9
    assert rep["context"]["source"] == v["context"] == "preempt_count" and v["rt_lock_violation_invocations"] == 0
    assert "lock context" not in text


def test_verdict_says_when_might_sleep_calls_were_not_watched(recs, tmp_path):
    """record without --might-sleep (the default): a clean verdict covers sleeps only, and says so."""
    import shutil
    rec = tmp_path / "rec"
    shutil.copytree(recs["a"], rec)
    meta = json.loads((rec / "metadata.json").read_text())
    meta["might_sleep"] = False
    (rec / "metadata.json").write_text(json.dumps(meta))
    rep = json.loads(_run("report", rec, "--format", "json").output)
    assert rep["verdict"]["might_sleep_watched"] is False
    text = " ".join(_run("report", rec).output.split())       # the verdict wraps at the width
    assert "must-not-sleep callback calls watched (for sleeps; calls that may sleep were not watched: " \
           "record --might-sleep)" in text
    # ... and minor 10: sleeps seen by the switch count (--sleep-detect count) have no sleeper
    assert rep["schema_minor"] >= 10 and rep["verdict"]["sleep_detect"] == "switch"
    meta["sleep_detect"] = "count"
    (rec / "metadata.json").write_text(json.dumps(meta))
    assert json.loads(_run("report", rec, "--format", "json").output)["verdict"]["sleep_detect"] == "count"
    text = " ".join(_run("report", rec).output.split())
    assert "sleeps seen by the task's switch count, without what slept" in text


def test_callbacks_left_out_by_choice_are_not_gaps(recs, tmp_path):
    """record --module/--callback: the callbacks not chosen are listed apart from the
    skipped probes (a choice, not a gap), with the options that chose."""
    import shutil
    rec = tmp_path / "rec"
    shutil.copytree(recs["a"], rec)
    meta = json.loads((rec / "metadata.json").read_text())
    base = json.loads(_run("report", rec, "--format", "json").output)
    why = "not selected: --module mmnt_test"
    meta["attached"] += [{"kind": "callback", "symbol": s, "module": "kvm", "hook": "invalidate_range_end",
                          "status": why} for s in ("kvm_b", "kvm_a")]
    meta["filters"] |= {"modules": ["mmnt_test"], "callbacks": None}
    (rec / "metadata.json").write_text(json.dumps(meta))
    rep = json.loads(_run("report", rec, "--format", "json").output)
    cov = rep["coverage"]
    assert cov["not_selected"] == ["kvm_a", "kvm_b"] and cov["filters"]["modules"] == ["mmnt_test"]
    assert rep["verdict"]["skipped_probes"] == base["verdict"]["skipped_probes"]
    assert cov["by_kind"] == base["coverage"]["by_kind"] and cov["skipped"] == base["coverage"]["skipped"]
    text = " ".join(_run("report", rec).output.split())
    assert "not probed, as chosen (--module mmnt_test): kvm_a, kvm_b" in text


@pytest.mark.parametrize("opt,value,says", [("--module", "kv m", "'kv m' is not a module name"),
                                            ("--callback", "kvm,", "'' is not a function name"),
                                            ("--callback", "1abc", "'1abc' is not a function name")])
def test_record_module_and_callback_names_are_checked_first(tmp_path, opt, value, says):
    r = _run("record", "-o", tmp_path / "r", opt, value)
    assert r.exit_code == 2 and says in r.output and not (tmp_path / "r").exists()


def test_compare_text_json_html(recs, tmp_path):
    r = _run("report", recs["a"], "--compare", recs["b"], "--format", "json")
    assert r.exit_code == 0
    rep = json.loads(r.output)
    c = rep["compare"]
    assert c["a"] == str(recs["a"]) and c["b"] == str(recs["b"])
    summ = {x["metric"]: x for x in c["summary"]}
    assert summ["events"]["a"] == 6000 and summ["events"]["b"] == 3000 and summ["events"]["ratio"] == 0.5
    a_rows = {(x["hook"], x["callback"], x["event"]): x for x in rep["latency"]}
    b_rows = {(x["hook"], x["callback"], x["event"]): x for x in c["report_b"]["latency"]}
    for row in c["latency"]:
        k = (row["hook"], row["callback"], row["event"])
        if k in a_rows and k in b_rows:
            assert row["ratio"]["p99_ns"] == round(b_rows[k]["p99_ns"] / a_rows[k]["p99_ns"], 4)
            assert row["ratio"]["count"] == round(b_rows[k]["count"] / a_rows[k]["count"], 4)
        else:
            assert row["ratio"]["count"] is None
    v = c["violations"]
    assert v and all(x["b_count"] == 0 and x["ratio"] == 0.0 for x in v)     # none in B
    t = _run("report", recs["a"], "--compare", recs["b"])
    assert t.exit_code == 0 and "Latency (µs), before → after" in t.output and "0.00x" not in t.output
    out = tmp_path / "cmp.html"
    h = _run("report", recs["a"], "--compare", recs["b"], "--format", "html", "-o", out)
    assert h.exit_code == 0 and "mmntrace comparison: before → after" in out.read_text()


def test_html_is_self_contained(recs, tmp_path):
    out = tmp_path / "r.html"
    r = _run("report", recs["a"], "--format", "html", "-o", out)
    assert r.exit_code == 0 and str(out) in r.output
    html = out.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("data:image/png;base64,") >= 4
    assert not re.search(r'(src|href)="(?!data:)', html)          # nothing fetched from anywhere
    assert "<script" not in html
    for s in ("Latency by hook × callback × event", "Over time", "Top processes", "Callers of the secondary-TLB hook",
              "Sleeping-rule violations", "Drops and coverage", "mutex_lock"):
        assert s in html, s


def test_plot_png_and_svg(recs, tmp_path):
    r = _run("plot", recs["a"], "-o", tmp_path / "p")
    assert r.exit_code == 0, r.output
    files = r.output.split()
    assert [os.path.basename(f) for f in files] == ["latency-cdf.png", "latency-heatmap.png", "rate-timeline.png",
                                                    "violations-timeline.png"]
    for f in files:
        assert open(f, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    r = _run("plot", recs["a"], "-o", tmp_path / "s", "--format", "svg")
    assert r.exit_code == 0 and all(open(f).read(200).lstrip().startswith("<?xml") for f in r.output.split())


def test_plot_default_dir_and_aggregate(recs):
    r = _run("plot", recs["agg"])
    assert r.exit_code == 0
    out = r.stdout.split()
    assert [os.path.basename(f) for f in out] == ["latency-cdf.png", "violations-timeline.png"]
    assert all(os.path.dirname(f) == str(recs["dir"] / "agg-plots") for f in out)
    assert "skipped latency-heatmap" in r.stderr


def test_aggregate_recording_report(recs):
    r = _run("report", recs["agg"])
    assert r.exit_code == 0 and "aggregated in kernel" in r.output and "log2 slots" in r.output
    rep = json.loads(_run("report", recs["agg"], "--format", "json").output)
    assert rep["aggregate"] and rep["quantile_method"] == "log2_upper" and rep["timeline"] is None


@pytest.mark.parametrize("args,code,msg", [
    (["report", "{empty}"], 20, "holds no events, violations or histograms"),
    (["plot", "{empty}"], 20, "holds no events, violations or histograms"),
    (["report", "{a}", "--compare", "{dir}/missing"], 20, "is not a directory"),
    (["report", "{a}", "--compare", "{dir}"], 20, "not an mmntrace recording"),
    (["report", "{a}", "--format", "html"], 2, "add -o FILE"),
    (["report", "{a}", "-o", "{dir}/no/such/dir/r.txt"], 2, "cannot write"),
    (["plot", "{dir}/missing"], 20, "is not a directory"),
    (["report", "{a}", "--format", "pdf"], 2, "Invalid value"),
])
def test_bad_input_one_sentence(recs, args, code, msg):
    r = _run(*[a.format(**{k: str(v) for k, v in recs.items()}) for a in args])
    assert r.exit_code == code, r.output
    assert msg in r.output


def test_help_teaches():
    for cmd in ("report", "plot"):
        r = _run(cmd, "--help")
        assert r.exit_code == 0 and "Examples:" in r.output and f"mmntrace {cmd} rec" in r.output


def test_notebooks_run(recs, tmp_path):
    pytest.importorskip("nbclient")
    from mmntrace.notebooks import notebook_paths, run_notebooks
    import nbformat
    for p in notebook_paths():      # kept in git with outputs cleared
        nb = nbformat.read(p, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), p
    out = run_notebooks(recs["a"], tmp_path / "nb")
    assert sorted(p.name for p in out) == ["latency.ipynb", "violations.ipynb"]
    for p in out:
        nb = nbformat.read(p, as_version=4)
        outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outs if o.output_type == "error"]
        assert any("image/png" in o.get("data", {}) for o in outs), p.name
        _assert_notebook_units(outs, p.name)
    # an --aggregate recording: bounds marked, and what cannot be drawn says why
    out = run_notebooks(recs["agg"], tmp_path / "nb-agg")
    outs = [o for p in out for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code"
            for o in c.outputs]
    _assert_notebook_units(outs, "agg")
    text = json.dumps(outs, ensure_ascii=False)
    assert "≤ " in text and "an --aggregate recording keeps no per-event times: nothing to plot over time" in text


def _assert_notebook_units(outs, name):
    """Durations with the report's units (never '8388.61 µs'); no cell that
    prints only 'nothing to plot' without saying why."""
    text = json.dumps(outs, ensure_ascii=False)
    assert not re.search(r"\d{4,}(\.\d+)? (ns|µs|ms)", text), name
    streams = ["".join(o.get("text", "")).strip() for o in outs if o.output_type == "stream"]
    assert "nothing to plot" not in streams, name


def test_notebook_failure_is_one_sentence(recs, tmp_path):
    pytest.importorskip("nbclient")
    from mmntrace.notebooks import NotebookError, run_notebooks
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nb = new_notebook(cells=[new_code_cell("raise ValueError('boom')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, nbdir / "bad.ipynb")
    with pytest.raises(NotebookError, match="bad.ipynb failed.*ValueError: boom"):
        run_notebooks(recs["a"], tmp_path / "o", notebooks_dir=nbdir)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (scripts/setup.sh installs Debian's "
                                                 "chromium package): cannot check that the HTML report renders")
def test_html_renders_in_chromium(recs, tmp_path):
    from PIL import Image
    html = tmp_path / "r.html"
    assert _run("report", recs["a"], "--format", "html", "-o", html).exit_code == 0
    shot = tmp_path / "shot.png"
    args = [_chromium(), "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
            html.as_uri()]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert shot.exists(), p.stderr[-2000:]
    img = Image.open(shot)
    img.verify()                                 # a valid PNG ...
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 2000)
    px = np.asarray(img).reshape(-1, 3).astype(int)
    nonwhite = (px < 240).any(axis=1).mean()
    colored = ((px.max(axis=1) - px.min(axis=1)) > 60).mean()
    assert nonwhite > 0.03, f"only {nonwhite:.1%} of the screenshot is not white: blank page?"
    assert colored > 0.001, "no coloured pixels: the embedded plots did not render"


_json = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False)
                     | st.text(max_size=8), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                              max_size=3), max_leaves=8)
_keys = ["kernel", "backend", "aggregate", "drops", "attached", "hooks", "filters", "totals", "start_time", "end_time",
         "status"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(_keys), _json, max_size=6))
def test_fuzz_metadata_fields_never_traceback(recs, tmp_path_factory, fields):
    """Whatever a recording's metadata holds, report and plot say one sentence or report: never a traceback."""
    d = tmp_path_factory.mktemp("fz") / "r"
    shutil.copytree(recs["b"], d)
    meta = json.loads((d / "metadata.json").read_text()) | fields
    (d / "metadata.json").write_text(json.dumps(meta))
    for args in (["--format", "json"], ["--format", "text"], ["--compare", str(recs["a"])]):
        r = CliRunner().invoke(main, ["report", str(d), *args])
        assert r.exit_code in (0, 20), r.output
        assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)


def test_record_buffer_defaults_follow_the_mode_and_transport():
    from mmntrace.cli import default_buffer_pages
    assert default_buffer_pages(False, False, 2) == 2048       # one ring, streaming
    assert default_buffer_pages(True, False, 64) == 256        # --aggregate: violations only
    assert default_buffer_pages(False, True, 2) == 1024        # perf: per CPU, shared out
    assert default_buffer_pages(False, True, 6) == 256         # a power of two
    assert default_buffer_pages(True, True, 64) == 64          # never below 64 per CPU


def test_sleeps_without_stacks_are_reported(recs, tmp_path):
    """--sleep-detect count: sleep records carry no stack. A segment in which no
    record has one was typed list<null> by pyarrow: it is read, and written
    from now on, as lists of strings."""
    import shutil
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mmntrace.store import typed
    rec = tmp_path / "rec"
    shutil.copytree(recs["a"], rec)
    segs = sorted(rec.glob("sleeps-*.parquet"))
    assert segs
    for p in segs:
        t = pq.read_table(p)
        t = t.set_column(t.column_names.index("stack"), "stack", pa.array([[]] * len(t), pa.list_(pa.null())))
        pq.write_table(t, p)
    rep = json.loads(_run("report", rec, "--format", "json").output)
    assert rep["verdict"]["violation_invocations"] == 12
    assert all(v["stack"] == [] for v in rep["violations"])
    t = typed(pa.Table.from_pandas(pd.DataFrame({"stack": [[], []], "sleeper": [None, None]})))
    assert t.schema.field("stack").type == pa.list_(pa.string()) and t.schema.field("sleeper").type == pa.string()


def test_header_names_the_probe_kinds_that_are_not_the_backends(recs, tmp_path):
    """minor 11: a streaming `auto` recording on a kernel with trampolines has backend
    fentry and its hooks on kprobes; the header says so, and an older recording
    (no probe_kinds) reads as before."""
    import shutil
    rec = tmp_path / "rec"
    shutil.copytree(recs["a"], rec)
    assert json.loads(_run("report", rec, "--format", "json").output)["probe_kinds"] is None
    out = _run("report", rec).output
    assert "backend kprobe" in out and "backend kprobe (" not in out
    meta = json.loads((rec / "metadata.json").read_text())
    meta["backend"] = "fentry"
    meta["probe_kinds"] = {"hooks": "kprobe", "callbacks": "kprobe", "might_sleep": "fentry"}
    (rec / "metadata.json").write_text(json.dumps(meta))
    rep = json.loads(_run("report", rec, "--format", "json").output)
    assert rep["schema_minor"] >= 11 and rep["probe_kinds"]["hooks"] == "kprobe"
    text = " ".join(_run("report", rec).output.split())
    assert "backend fentry (hooks by kprobe, driver callbacks by kprobe)" in text
    meta["probe_kinds"] = "garbage"
    (rec / "metadata.json").write_text(json.dumps(meta))
    r = _run("report", rec)
    assert r.exit_code == 0 and "backend fentry" in r.output and "by kprobe" not in r.output


def test_record_metadata_probe_kinds_follow_the_tracer():
    from types import SimpleNamespace as NS
    from mmntrace.record import probe_kinds
    streaming_auto = NS(backend="fentry", hook_fentry=False, callback_fentry=False, might_sleep=True)
    assert probe_kinds(streaming_auto) == {"hooks": "kprobe", "callbacks": "kprobe", "might_sleep": "fentry"}
    asked = NS(backend="fentry", hook_fentry=True, callback_fentry=True, might_sleep=False)
    assert probe_kinds(asked) == {"hooks": "fentry", "callbacks": "fentry", "might_sleep": None}
    assert probe_kinds(NS(backend="kprobe", hook_fentry=False, callback_fentry=False, might_sleep=True))["might_sleep"] == "kprobe"
