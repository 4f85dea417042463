"""Issue 7 on the host: missing features, bad input, output paths, the guards.

Each case here is real without a kernel to trace (the CLI's handling of what
the kernel probe reported, files on disk, pure decisions). Faults that need a
kernel (kill -9, disk full, module reload, storms, leftovers) are lab tests:
tests/lab/test_lab_reliability.py. docs/reliability.md tables them all.
"""

import ast
import dataclasses
import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from mmntrace import decode, kernel, outpath
from mmntrace.cli import main
from mmntrace.daemon import overhead_guard_tripped
from mmntrace.errors import RecordingError, UsageError
from mmntrace.record import overhead_warning
from mmntrace.recording import Recording, RecordingWriter

REPO = Path(__file__).resolve().parents[2]
META = {"kernel": {"release": "6.12.0-test", "arch": "x86_64"}, "backend": "kprobe", "aggregate": False}

GOOD = kernel.Features(
    release="6.12.0-test", is_root=True, kallsyms=True, kprobes=True, btf=True,
    headers="/lib/modules/6.12.0-test/build", headers_release="6.12.0-test", headers_match=True,
    ringbuf=True, fentry_possible=True, mmu_notifiers=True,
    hooks=((0, "__mmu_notifier_invalidate_range_start", "invalidate_range_start"),),
    registration=(), events=((1, "unmap"),), ops=("invalidate_range_start",), preempt_count_sym=None,
    preempt_count_addr=None, per_cpu_offset_addr=None, subs_list_off=None, sleepers=(), gfp_direct_reclaim=None)


# -- missing kernel features: one sentence, a distinct exit code, no traceback ----------------------
@pytest.mark.parametrize("change,code,words", [
    (dict(is_root=False), 10, "needs root"),
    (dict(kprobes=False), 11, "kprobes are not available"),
    (dict(kallsyms=False), 11, "kallsyms"),
    (dict(btf=False, headers=None, headers_release=None, headers_match=False), 12, "neither BTF nor headers"),
    (dict(headers_release="6.1.0-other", headers_match=False), 13, "not the running"),
    (dict(mmu_notifiers=False), 14, "no MMU notifiers"),
])
def test_missing_features_exit_codes(monkeypatch, tmp_path, change, code, words):
    monkeypatch.setattr(kernel, "probe", lambda: dataclasses.replace(GOOD, **change))
    r = CliRunner().invoke(main, ["record", "-q", "-o", str(tmp_path / "rec"), "-d", "1"])
    assert r.exit_code == code, r.output
    assert words in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1          # one sentence
    assert not (tmp_path / "rec").exists()                  # nothing half-made
    d = CliRunner().invoke(main, ["doctor"])                  # doctor says the same and fails too
    assert d.exit_code == code and words in d.output


def test_fentry_refused_without_trampolines(monkeypatch, tmp_path):
    """--backend fentry where the trial attach fails: its reason, one sentence,
    before any compile (the trial itself: tests/unit/test_fentry_trial.py)."""
    from mmntrace.trial import Verdict
    monkeypatch.setattr(kernel, "probe", lambda: GOOD)
    why = "the kernel refuses BPF trampolines: ENOTSUPP 524 on attaching a trial fentry program"
    monkeypatch.setattr(kernel, "fentry_verdict", lambda: Verdict(False, why))
    r = CliRunner().invoke(main, ["record", "-q", "--backend", "fentry", "-o", str(tmp_path / "r")])
    assert r.exit_code == 1 and "use --backend kprobe" in r.output and "Traceback" not in r.output
    assert why in r.output and len(r.output.strip().splitlines()) == 1


def test_bad_flags_are_usage_errors(monkeypatch, tmp_path):
    monkeypatch.setattr(kernel, "probe", lambda: GOOD)
    r = CliRunner().invoke(main, ["record", "-q", "--buffer-pages", "100", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "power of two" in r.output
    r = CliRunner().invoke(main, ["record", "-q", "--hooks", "nope", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "nope" in r.output and "secondary_tlb" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["record", "-q", "-d", "10x", "-o", str(tmp_path / "r")])
    assert r.exit_code == 2 and "duration" in r.output


def test_argument_errors_come_before_the_environment(monkeypatch, tmp_path):
    """On a host that cannot record (no root, no kprobes), a wrong argument is
    still told as the argument's fault (exit 2), not as the environment's, and a
    non-empty -o before any compile."""
    bad_env = dataclasses.replace(GOOD, is_root=False, kprobes=False)
    monkeypatch.setattr(kernel, "probe", lambda: bad_env)
    for args, says in ((["--hooks", "bogus"], "bogus"), (["-d", "soon"], "duration"),
                       (["--buffer-pages", "3"], "power of two"), (["--min-latency", "100"], "needs a unit"),
                       (["--min-latency", "fast"], "as a latency"), (["--min-latency", "0us"], "at least 1ns"),
                       (["--min-latency", "1ms", "--aggregate"], "give one of them")):
        r = CliRunner().invoke(main, ["record", "-q", *args, "-o", str(tmp_path / "r")])
        assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output, (args, r.output)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    r = CliRunner().invoke(main, ["record", "-q", "-o", str(full)])
    assert r.exit_code == 2 and "not an empty directory" in r.output
    # valid arguments reach the environment check: exit 10 (not root), one sentence
    r = CliRunner().invoke(main, ["record", "-q", "-p", "1", "-d", "1.5m", "--hooks", "secondary_tlb",
                                  "-o", str(tmp_path / "r")])
    assert r.exit_code == 10 and "root" in r.output and not (tmp_path / "r").exists()


def test_durations_with_units():
    from mmntrace.units import parse_duration
    assert parse_duration("10s") == 10 and parse_duration("500ms") == 0.5 and parse_duration("2m") == 120
    assert parse_duration("10") == 10
    for bad in ("0", "-1s", "10x", "s"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_latencies_with_units():
    """record --min-latency: ns, us (or µs), ms, s; a unit is required."""
    from mmntrace.units import parse_latency
    assert parse_latency("100us") == parse_latency("100µs") == parse_latency("0.1ms") == 100_000
    assert parse_latency("500ns") == 500 and parse_latency("2 s") == 2_000_000_000
    for bad in ("100", "0ns", "0.4ns", "-1us", "1 us x", "us"):
        with pytest.raises(UsageError):
            parse_latency(bad)


# -- recordings: empty, truncated, corrupt, newer, not a recording ----------------------------------
def _rec(tmp_path):
    w = RecordingWriter(tmp_path / "rec", META)
    df = pd.DataFrame([dict(kind="hook", ts_ns=1, hook="invalidate_range_start", dur_ns=5, pid=1, tid=1,
                            comm="t", mm=1, callback=None, event=None, atomic=False, irqs_off=False,
                            blockable=True, must_not_sleep=False, preempt_count=0, seq=1, stack_id=-1)])
    w.write_segment(df, pd.DataFrame())
    w.finish(drops={"total": 0})
    return tmp_path / "rec"


def test_truncated_segment_is_one_sentence(tmp_path):
    d = _rec(tmp_path)
    seg = next(d.glob("events-*.parquet"))
    seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    r = CliRunner().invoke(main, ["report", str(d)])
    assert r.exit_code == 20 and "corrupt" in r.output and "Traceback" not in r.output


def test_empty_file_instead_of_directory(tmp_path):
    (tmp_path / "f").write_text("")
    r = CliRunner().invoke(main, ["report", str(tmp_path / "f")])
    assert r.exit_code == 20 and "Traceback" not in r.output


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_segment_reader(tmp_path_factory, blob):
    d = _rec(tmp_path_factory.mktemp("fz"))
    next(d.glob("events-*.parquet")).write_bytes(blob)
    try:
        Recording(d).events()
    except RecordingError:
        pass


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3 * decode.DTYPE.itemsize + 7))
def test_fuzz_raw_decoder(blob):
    try:
        recs = decode.decode(blob)
    except decode.DecodeError:
        assert len(blob) % decode.DTYPE.itemsize
        return
    cols = decode.columns(recs)
    assert len(cols["ts_ns"]) == len(blob) // decode.DTYPE.itemsize


# -- output paths, files, shells ----------------------------------------------------------------------
def test_report_output_refuses_a_planted_symlink(tmp_path):
    d = _rec(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, tmp_path / "out.json")
    r = CliRunner().invoke(main, ["report", str(d), "--format", "json", "-o", str(tmp_path / "out.json")])
    assert r.exit_code == 2 and "symbolic link" in r.output
    assert victim.read_text() == "keep"


def test_plot_output_refuses_symlinked_dir_and_files(tmp_path):
    d = _rec(tmp_path)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    r = CliRunner().invoke(main, ["plot", str(d), "-o", str(tmp_path / "link")])
    assert r.exit_code == 2 and "symbolic link" in r.output
    assert list((tmp_path / "real").iterdir()) == []
    out = tmp_path / "figs"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep")
    os.symlink(victim, out / "latency-cdf.png")
    r = CliRunner().invoke(main, ["plot", str(d), "-o", str(out)])
    assert r.exit_code == 2 and victim.read_text() == "keep"


def test_partial_writes_leave_no_file(tmp_path, monkeypatch):
    """A full disk shortens and then fails a write: no partial file may stay behind."""
    calls = {"n": 0}
    real = os.write

    def full(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(outpath.os, "write", full)
    with pytest.raises(OSError):
        outpath.write_atomic(tmp_path / "x.parquet", b"y" * 100)
    assert list(tmp_path.iterdir()) == []


def test_nothing_reaches_a_shell():
    """No shell=True, os.system or os.popen anywhere in the tool, the lab or the benches."""
    bad = []
    for f in list((REPO / "mmntrace").glob("*.py")) + list((REPO / "bench").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call):
                fn = ast.unparse(node.func)
                if fn in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                    bad.append(f"{f.name}:{node.lineno} {fn}")
                for kw in node.keywords:
                    if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        bad.append(f"{f.name}:{node.lineno} shell=")
    assert bad == []


# -- the guards -------------------------------------------------------------------------------------------
def test_record_overhead_guard_warns_with_an_estimate():
    assert overhead_warning(1000, 0.1, 0, aggregate=False) is None
    assert overhead_warning(500, 0.9, 0, aggregate=False) is None     # a slow recorder, not a fast stream
    w = overhead_warning(250_000, 0.8, 0, aggregate=False)
    assert "250,000 events/s" in w and "80% of a CPU" in w and "--aggregate" in w
    assert "12 records were dropped" in overhead_warning(5000, 0.1, 12, aggregate=False)
    assert overhead_warning(250_000, 0.9, 5, aggregate=True) is None      # already aggregating


def test_daemon_overhead_guard_decision():
    assert overhead_guard_tripped(0.06, 0.05) and not overhead_guard_tripped(0.04, 0.05)
    assert not overhead_guard_tripped(None, 0.05) and not overhead_guard_tripped(0.9, None)


def test_recordings_are_private(tmp_path):
    d = _rec(tmp_path)
    assert (d.stat().st_mode & 0o077) == 0
    assert all((f.stat().st_mode & 0o077) == 0 for f in d.iterdir())
    assert np.all([not f.name.startswith(".") for f in d.iterdir()])      # no leftover temporary files
