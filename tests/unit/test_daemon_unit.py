"""The daemon's pure parts: config, output partitions, retention, metrics.

The windows themselves (attach/detach, counts against the module) are lab
tests: tests/lab/test_daemon.py.
"""

import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
from hypothesis import given, settings, strategies as st
from prometheus_client.parser import text_string_to_metric_families

from mmntrace import daemon as d
from mmntrace.errors import MmntraceError, UsageError


def test_durations_and_sizes():
    assert d.parse_duration("30s") == 30 and d.parse_duration("10m") == 600
    assert d.parse_duration("1.5h") == 5400 and d.parse_duration("2d") == 172800
    assert d.parse_duration("250ms") == 0.25 and d.parse_duration(7) == 7
    assert d.parse_size("1G") == 1 << 30 and d.parse_size("500M") == 500 << 20
    assert d.parse_size("2KiB") == 2048 and d.parse_size("100") == 100
    for bad in ("", "ten", "-1s", "0s", "5 parsecs"):
        with pytest.raises(UsageError):
            d.parse_duration(bad)
    for bad in ("", "1X", "0"):
        with pytest.raises(UsageError):
            d.parse_size(bad)


def test_config_mirrors_flags(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[daemon]\nevery = "5m"\nfor = "20s"\nout = "/x"\nmax-events-per-s = 1000\n'
                 'http = "9475"\nretention_size = "10M"\nhooks = ["invalidate_range_start"]\nonce = true\n')
    c = d.load_config(p)
    assert (c.every_s, c.for_s, c.out, c.max_events_per_s, c.http, c.retention_bytes, c.hooks, c.count) == \
        (300, 20, Path("/x"), 1000.0, "9475", 10 << 20, ["invalidate_range_start"], 1)
    assert c.sleep_detect == "count"          # the default: nothing on the machine's context switches
    p.write_text('sleep-detect = "switch"\n')
    assert d.load_config(p).sleep_detect == "switch"
    assert d.parse_http("9475") == ("127.0.0.1", 9475)     # loopback unless told otherwise
    assert d.parse_http("0.0.0.0:9") == ("0.0.0.0", 9)


@pytest.mark.parametrize("text, words", [
    ("every = 5m\n", "not valid TOML"),
    ('bogus = 1\n', "unknown key"),
    ('every = "soon"\n', "duration"),
    ('every = "10s"\nfor = "1m"\n', "longer than the period"),
    ('count = 0\n', "at least 1"),
    ('pid = "x"\n', "bad value"),
    ('sleep_detect = "often"\n', "use count or switch"),
])
def test_config_errors_are_one_sentence(tmp_path, text, words):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(UsageError) as e:
        d.load_config(p)
    assert words in str(e.value) and "\n" not in str(e.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_config_reader_fuzz(text):
    """Whatever the file holds: a config or a UsageError, nothing else."""
    p = Path(os.environ.get("TMPDIR", "/tmp")) / f"mmntrace-fuzz-{os.getpid()}.toml"
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        d.load_config(p)
    except MmntraceError:
        pass
    finally:
        p.unlink(missing_ok=True)


def _summary(name, index, t):
    return {"window": name, "index": index, "start_time": t, "end_time": t + 1, "duration_s": 1.0,
            "sample_every": 1, "drops": {"ringbuf": 0, "total": 0}, "bpf_run_time_ns": 5000,
            "latency": [{"hook": "invalidate_range_start", "callback": None, "event": "unmap", "count": 3},
                        {"hook": "invalidate_range_start", "callback": "kvm_cb [kvm]", "event": "unmap",
                         "count": 3}],
            "violations": [{"rule": "sleep", "hook": "secondary_tlb", "callback": "drv_cb [drv]",
                            "sleeper": "msleep", "count": 2}]}


def test_partitions_are_hive_and_atomic(tmp_path):
    t = 1_700_000_000.0
    rows = [{"window": "w0", "start_ns": 1, "hook": "invalidate_range_start", "callback": None, "event": "unmap",
             "slot": 10, "count": 3}]
    sl = pd.DataFrame({"ts_ns": [5], "cpu": [0], "pid": [1], "tid": [1], "comm": ["x"], "hook": ["secondary_tlb"],
                       "callback": ["drv_cb [drv]"], "rule": ["sleep"], "sleeper": ["msleep"], "atomic": [True],
                       "seq": [1], "stack": [["msleep", "drv_cb"]]})
    paths = d.write_window(tmp_path, "h1", _summary("w0", 0, t), rows, sl)
    assert set(paths) == {"hist", "violations", "summary"}
    assert "host=h1/date=2023-11-14" in paths["hist"]
    assert not [p for p in tmp_path.rglob(".*")]            # no temporary left behind
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in tmp_path.rglob("*") if p.is_file())
    # a leftover partial (dot) file is invisible to dataset readers
    (Path(paths["hist"]).parent / ".w1.parquet.tmp").write_bytes(b"PAR1 partial")
    tab = ds.dataset(tmp_path / "hist", format="parquet", partitioning="hive").to_table().to_pandas()
    assert list(tab["count"]) == [3] and list(tab["host"]) == ["h1"]
    v = ds.dataset(tmp_path / "violations", format="parquet", partitioning="hive").to_table().to_pandas()
    assert list(v["sleeper"]) == ["msleep"] and list(v["stack"][0]) == ["msleep", "drv_cb"]


def test_retention_by_age_and_size(tmp_path):
    now = time.time()
    for i in range(5):
        paths = d.write_window(tmp_path, "h", _summary(f"w{i}", i, now), [], None)
        for p in paths.values():
            os.utime(p, (now - (5 - i) * 3600, now - (5 - i) * 3600))
    assert d.enforce_retention(tmp_path, 3.5 * 3600, None, now=now) == ["w0", "w1"]
    sizes = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    removed = d.enforce_retention(tmp_path, None, sizes - 1, now=now)
    assert removed == ["w2"]                                  # oldest first, whole windows
    left = sorted(p.stem for p in tmp_path.glob("windows/*/*/*.json"))
    assert left == ["w3", "w4"]


def test_metrics_parse_and_equal_the_summary():
    s = _summary("w0", 2, 1.0)
    totals = {("invalidate_range_start", None, "unmap"): {3: 1, 10: 2},
              ("invalidate_range_start", "kvm_cb [kvm]", "unmap"): {12: 3}}
    from prometheus_client import generate_latest
    text = generate_latest(d.build_metrics(s, totals)).decode()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    calls = {(x.labels["callback"], x.labels["event"]): x.value for x in fams["mmntrace_window_calls"].samples}
    assert calls == {("", "unmap"): 3, ("kvm_cb [kvm]", "unmap"): 3}
    h = [x for x in fams["mmntrace_latency_seconds"].samples if x.labels.get("callback") == ""]
    buckets = {x.labels["le"]: x.value for x in h if x.name.endswith("_bucket")}
    assert buckets["+Inf"] == 3 and buckets[f"{((1 << 3) - 1) / 1e9:.9g}"] == 1
    assert fams["mmntrace_window_violations"].samples[0].value == 2
    assert fams["mmntrace_daemon_windows"].samples[0].value == 3
    assert fams["mmntrace_daemon_bpf_run_seconds"].samples[0].value == 5e-6


def test_cli_daemon_help_and_bad_flags():
    from click.testing import CliRunner
    from mmntrace.cli import main
    r = CliRunner().invoke(main, ["daemon", "--help"])
    assert r.exit_code == 0 and "--every" in r.output and "host=H/date=D" in r.output
    r = CliRunner().invoke(main, ["daemon", "--every", "10s", "--for", "1m"])
    assert r.exit_code == UsageError.exit_code and "longer than the period" in r.output
    assert "Traceback" not in r.output


def test_fleet_notebook_compares_hosts_and_kernels(tmp_path):
    """notebooks/fleet/fleet.ipynb on a synthetic multi-host, two-kernel daemon dataset."""
    from mmntrace.notebooks import run_notebooks
    fleet = tmp_path / "fleet"
    for i, (host, rel) in enumerate([("a", "6.1.0-56-amd64"), ("b", "6.1.0-56-amd64"), ("c", "6.12.95+deb12-amd64")]):
        for w in range(2):
            name = f"2026112{w}T000000Z-00000{w}"
            s = _summary(name, w, 1_790_000_000.0 + w * 600)
            s["kernel"] = {"release": rel, "arch": "x86_64"}
            rows = [{"window": name, "start_ns": 0, "hook": "invalidate_range_start",
                     "callback": "kvm_mmu_notifier_invalidate_range_start [kvm]", "event": "unmap",
                     "slot": 10 + i, "count": 100}]
            sl = pd.DataFrame({"ts_ns": [1], "cpu": [0], "pid": [1], "tid": [1], "comm": ["x"],
                               "hook": ["secondary_tlb"], "callback": ["drv_cb [drv]"], "rule": ["sleep"],
                               "sleeper": ["msleep"], "atomic": [True], "seq": [1], "stack": [["msleep"]]})
            d.write_window(fleet, host, s, rows, sl if host == "c" else None)
    nb_dir = Path(__file__).resolve().parents[2] / "mmntrace" / "notebooks" / "fleet"
    done = run_notebooks(fleet, tmp_path / "out", notebooks_dir=nb_dir)
    text = json.dumps([c.get("outputs", []) for c in json.loads(done[0].read_text())["cells"]])
    assert "3 hosts, 6 windows, 600 traced calls" in text
    assert "6.12.95+deb12-amd64" in text and "msleep" in text


def test_sighup_reload_applies_a_good_config_and_keeps_the_old_one_on_error(tmp_path):
    import signal as sig
    p = tmp_path / "c.toml"
    p.write_text('every = "10m"\nfor = "30s"\n')
    logs = []
    dm = d.Daemon(d.load_config(p), p, log=logs.append)
    dm.install_signals()
    try:
        p.write_text('every = "5m"\nfor = "10s"\nmax_events_per_s = 100\n')
        os.kill(os.getpid(), sig.SIGHUP)
        assert dm.reload.wait(5)
        dm._reload()
        assert (dm.cfg.every_s, dm.cfg.for_s, dm.cfg.max_events_per_s) == (300, 10, 100)
        assert logs[-1] == {"event": "reload", "status": "ok", "recompile": False}
        p.write_text("every = [")                      # broken: logged, old config kept
        dm._reload()
        assert logs[-1]["status"] == "error" and "not valid TOML" in logs[-1]["error"]
        assert dm.cfg.every_s == 300
    finally:
        for s in (sig.SIGTERM, sig.SIGINT, sig.SIGHUP):
            sig.signal(s, sig.SIG_DFL if s != sig.SIGINT else sig.default_int_handler)


def test_http_port_checked_before_the_compile():
    """--http: a port that cannot be had is one sentence at once (the server
    itself starts after the compile, mmntrace/heap.py); a free one passes."""
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(UsageError) as e:
            d.check_port("127.0.0.1", port)
        assert f"--http 127.0.0.1:{port}" in str(e.value) and "\n" not in str(e.value)
    d.check_port("127.0.0.1", port)     # free again
    with pytest.raises(UsageError):
        d.check_port("no-such-host.invalid", 9475)
