"""Issue 15 (goals 4-6): every output is written atomically, never through a
symbolic link, private where it can hold a kernel address; under sudo it is
handed to the user who ran sudo; the lab leaves no run directory behind a
clean run.

The hand-over tests chown, so they need root (skipped otherwise, saying so);
the rest run anywhere.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from mmntrace import daemon, kernel, outpath, synthetic
from mmnlab import vm as lab
from mmntrace.cli import main
from mmntrace.errors import UsageError
from mmntrace.record import Session
from mmntrace.recording import RecordingWriter

REPO = Path(__file__).resolve().parents[2]
META = {"kernel": {"release": "6.12.0-test", "arch": "x86_64"}, "backend": "kprobe", "aggregate": False}
NOBODY = 65534
SENTENCE = "is a symbolic link; mmntrace does not write through links"


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def _events(n=3) -> pd.DataFrame:
    return pd.DataFrame([dict(kind="hook", ts_ns=i + 1, hook="invalidate_range_start", dur_ns=5, pid=1, tid=1,
                              comm="t", mm=0xffff888012345678, callback=None, event=None, atomic=False,
                              irqs_off=False, blockable=True, must_not_sleep=False, preempt_count=0, seq=i,
                              stack_id=-1) for i in range(n)])


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return synthetic.write(tmp_path_factory.mktemp("rec") / "rec", n_events=2000, segments=2, violations=5,
                           span_s=5.0)


@pytest.fixture
def no_sudo(monkeypatch):
    """Whatever the test runner was started with, no hand-over unless a test asks for it."""
    monkeypatch.delenv("SUDO_UID", raising=False)
    monkeypatch.delenv("SUDO_GID", raising=False)


def _victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_text("keep")
    os.chmod(v, 0o644)
    return v


def _assert_refused(r, victim: Path):
    assert r.exit_code == 2, r.output
    assert SENTENCE in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert victim.read_text() == "keep" and mode(victim) == 0o644


# -- the writer ---------------------------------------------------------------------------------------------
def test_write_atomic_is_private_whatever_the_umask(tmp_path, no_sudo):
    old = os.umask(0)
    try:
        p = outpath.write_atomic(tmp_path / "a", b"x")
        (tmp_path / "b").write_text("old")
        os.chmod(tmp_path / "b", 0o644)
        outpath.write_atomic(tmp_path / "b", lambda f: f.write(b"new"))       # a replaced file is private too
    finally:
        os.umask(old)
    assert mode(p) == 0o600 and mode(tmp_path / "b") == 0o600
    assert (tmp_path / "b").read_bytes() == b"new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "b"]           # no temporary left


def test_write_atomic_refuses_a_link_with_one_sentence(tmp_path, no_sudo):
    victim = _victim(tmp_path)
    os.symlink(victim, tmp_path / "out")
    with pytest.raises(UsageError) as e:
        outpath.write_atomic(tmp_path / "out", b"x")
    assert str(e.value) == f"{tmp_path / 'out'} {SENTENCE}"
    assert victim.read_text() == "keep" and (tmp_path / "out").is_symlink()
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")                   # a dangling link: not created
    with pytest.raises(UsageError, match="symbolic link"):
        outpath.write_atomic(tmp_path / "dangling", b"x")
    assert not (tmp_path / "nowhere").exists()


def test_output_dir_refuses_links_at_every_level(tmp_path, no_sudo):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(UsageError, match=SENTENCE):
        outpath.OutputDir(tmp_path / "link")
    with outpath.OutputDir(tmp_path / "out") as od:
        os.symlink(tmp_path / "real", tmp_path / "out" / "sub")
        with pytest.raises(UsageError, match=SENTENCE):
            od.subdir("sub", "deeper")
        with pytest.raises(UsageError, match="cannot be a file or directory name"):
            od.subdir("a/b")
    assert list((tmp_path / "real").iterdir()) == []
    assert mode(tmp_path / "out") == 0o700


def test_a_recording_directory_swapped_for_a_link_is_not_followed(tmp_path, no_sudo):
    """The writer holds its directory open: renaming it away and planting a link
    in its place diverts nothing."""
    w = RecordingWriter(tmp_path / "rec", META)
    (tmp_path / "elsewhere").mkdir()
    os.rename(tmp_path / "rec", tmp_path / "moved")
    os.symlink(tmp_path / "elsewhere", tmp_path / "rec")
    w.write_segment(_events(), pd.DataFrame())
    w.finish(drops={"total": 0})
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert (tmp_path / "moved" / "events-000001.parquet").exists()


# -- a link planted at each output ------------------------------------------------------------------------
def test_recording_refuses_links_at_the_directory_and_at_a_file(tmp_path, no_sudo):
    victim = _victim(tmp_path)
    os.symlink(tmp_path, tmp_path / "link")
    r = CliRunner().invoke(main, ["record", "-q", "-o", str(tmp_path / "link")])
    assert r.exit_code == 2 and SENTENCE in r.output
    with pytest.raises(UsageError, match=SENTENCE):
        RecordingWriter(tmp_path / "link", META)
    w = RecordingWriter(tmp_path / "rec", META)                       # a link planted in the recording
    os.symlink(victim, tmp_path / "rec" / "events-000001.parquet")
    with pytest.raises(UsageError, match=SENTENCE):
        w.write_segment(_events(), pd.DataFrame())
    assert victim.read_text() == "keep"


def test_record_refuses_a_ready_file_link_before_anything_else(tmp_path, monkeypatch, no_sudo):
    victim = _victim(tmp_path)
    os.symlink(victim, tmp_path / "ready.json")
    monkeypatch.setattr(kernel, "probe", lambda: pytest.fail("the environment was probed first"))
    r = CliRunner().invoke(main, ["record", "-q", "-o", str(tmp_path / "rec"), "--ready-file",
                                  str(tmp_path / "ready.json")])
    _assert_refused(r, victim)
    assert not (tmp_path / "rec").exists()


class _FakeTracer:
    backend, ringbuf, layout, aggregate, pid, comm = "kprobe", True, None, False, None, None

    def attached(self):
        return [{"kind": "callback", "symbol": "0xffffffffc0a01230", "hook": "release", "module": None,
                 "status": "attached", "attach": "kprobe"}]

    def probe_state(self):
        return [(a.get("symbol"), a.get("status")) for a in self.attached()]


def test_ready_file_is_private_and_refuses_a_link(tmp_path, no_sudo):
    s = Session(_FakeTracer(), None, tmp_path / "rec", ready_file=tmp_path / "ready.json")
    s._write_ready()
    assert mode(tmp_path / "ready.json") == 0o600
    assert json.loads((tmp_path / "ready.json").read_text())["attached"][0]["symbol"] == "0xffffffffc0a01230"
    victim = _victim(tmp_path)
    (tmp_path / "ready.json").unlink()
    os.symlink(victim, tmp_path / "ready.json")
    with pytest.raises(UsageError, match=SENTENCE):
        s._write_ready()
    assert victim.read_text() == "keep"


def test_ready_file_rewritten_when_a_poll_changed_the_probes_only(tmp_path, no_sudo):
    """--ready-file follows the probes (a callback attached, a module's detached)
    without being rewritten at every poll: ten a second in an idle session."""
    t = _FakeTracer()
    probes = t.attached()
    t.attached = lambda: [dict(a) for a in probes]
    changes = []
    t.poll = lambda ms: (changes and probes.append(changes.pop())) or b""
    s = Session(t, None, tmp_path / "rec", ready_file=tmp_path / "ready.json")
    writes = []
    s._write_ready = lambda: writes.append(len(t.attached()))
    s._state_seen = s._probe_state()
    for _ in range(3):
        assert s._drain([]) == (0, 0)
    assert writes == []
    changes.append({"kind": "callback", "symbol": "kvm_mmu_notifier_release", "status": "attached"})
    s._drain([])
    s._drain([])
    assert writes == [2]
    probes[0]["status"] = "detached: module unloaded"
    s._drain([])
    assert writes == [2, 2]


@pytest.mark.parametrize("fmt", ["text", "json", "html"])
def test_report_output_refuses_a_link_and_is_private(rec, tmp_path, fmt, no_sudo):
    victim = _victim(tmp_path)
    os.symlink(victim, tmp_path / "link")
    _assert_refused(CliRunner().invoke(main, ["report", str(rec), "--format", fmt, "-o", str(tmp_path / "link")]),
                    victim)
    out = tmp_path / f"r.{fmt}"
    r = CliRunner().invoke(main, ["report", str(rec), "--format", fmt, "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert mode(out) == 0o600 and out.stat().st_uid == os.geteuid()


def test_plot_output_is_private_and_refuses_links(rec, tmp_path, no_sudo):
    out = tmp_path / "figs" / "new"
    r = CliRunner().invoke(main, ["plot", str(rec), "-o", str(out)])
    assert r.exit_code == 0, r.output
    figs = list(out.iterdir())
    assert len(figs) >= 3 and all(mode(f) == 0o600 for f in figs) and mode(out) == 0o700
    victim = _victim(tmp_path)
    (out / "latency-cdf.png").unlink()
    os.symlink(victim, out / "latency-cdf.png")
    _assert_refused(CliRunner().invoke(main, ["plot", str(rec), "-o", str(out)]), victim)


# -- the daemon's files ---------------------------------------------------------------------------------------
def _window(name="w0", t=1_700_000_000.0):
    return {"window": name, "index": 0, "start_time": t, "end_time": t + 1, "duration_s": 1.0,
            "sample_every": 1, "drops": {"ringbuf": 0, "total": 0}, "bpf_run_time_ns": 5000,
            "latency": [{"hook": "release", "callback": "0xffffffffc0a01230", "event": None, "count": 2},
                        {"hook": "release", "callback": "0xffffffffc0b04560", "event": None, "count": 3},
                        {"hook": "release", "callback": "drv_cb+0x1a [drv]", "event": None, "count": 1}],
            "violations": [{"rule": "sleep", "hook": "release", "callback": "0xffffffffc0a01230",
                            "sleeper": "0xffffffff81234567", "count": 2}]}


def _sleeps():
    return pd.DataFrame({"ts_ns": [5], "cpu": [0], "pid": [1], "tid": [1], "comm": ["x"], "hook": ["release"],
                         "callback": ["0xffffffffc0a01230"], "rule": ["sleep"], "sleeper": ["msleep"],
                         "atomic": [True], "seq": [1], "stack": [["msleep", "0xffffffffc0a01230"]]})


def test_daemon_windows_are_private_and_the_textfile_holds_no_address(tmp_path, monkeypatch):
    monkeypatch.setenv("SUDO_UID", str(NOBODY))      # the daemon is a service: its files stay root's
    monkeypatch.setenv("SUDO_GID", str(NOBODY))
    out = tmp_path / "out"
    paths = daemon.write_window(out, "h1", _window(), [], _sleeps())
    assert set(paths) == {"hist", "violations", "summary"}
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 3 and all(mode(p) == 0o600 for p in files)
    assert all(p.stat().st_uid == os.geteuid() for p in out.rglob("*"))
    totals = {("release", "0xffffffffc0a01230", None): {3: 2}, ("release", "0xffffffffc0b04560", None): {3: 3},
              ("release", "drv_cb+0x1a [drv]", None): {4: 1}}
    dm = daemon.Daemon(daemon.DaemonConfig(out=out))
    dm._metrics(_window(), totals)
    prom = out / "mmntrace.prom"
    text = prom.read_text()
    # 0644 for node_exporter, so no address: the two unresolved callbacks add up under one label
    assert mode(prom) == 0o644 and "0xffff" not in text
    assert 'mmntrace_window_calls{callback="unresolved",event="",hook="release"} 5.0' in text
    assert 'callback="drv_cb+0x1a [drv]"' in text
    assert 'mmntrace_latency_seconds_count{callback="unresolved",event="",hook="release"} 5.0' in text
    assert not [p for p in out.rglob(".*")]


def test_daemon_refuses_links_at_its_outputs(tmp_path):
    victim = _victim(tmp_path)
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(UsageError, match=SENTENCE):
        daemon.write_window(tmp_path / "link", "h", _window(), [], None)
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "real", out / "hist")                    # a link for a partition directory
    with pytest.raises(UsageError, match=SENTENCE):
        daemon.write_window(out, "h", _window(), [], None)
    (out / "hist").unlink()
    daemon.write_window(out, "h", _window("w0"), [], None)
    summary = next(out.glob("windows/*/*/w0.json"))
    summary.unlink()
    os.symlink(victim, summary)                                     # a link for a window's file
    with pytest.raises(UsageError, match=SENTENCE):
        daemon.write_window(out, "h", _window("w0"), [], None)
    os.symlink(victim, tmp_path / "m.prom")
    with pytest.raises(UsageError, match=SENTENCE):
        daemon.Daemon(daemon.DaemonConfig(out=out, textfile=tmp_path / "m.prom"))._metrics(_window(), {})
    assert victim.read_text() == "keep" and list((tmp_path / "real").iterdir()) == []


def test_metric_labels_keep_symbols_and_drop_addresses():
    assert daemon.metric_label(None) == "" and daemon.metric_label("kvm_cb [kvm]") == "kvm_cb [kvm]"
    assert daemon.metric_label("f+0x1a2b/0x3000 [m]") == "f+0x1a2b/0x3000 [m]"
    assert daemon.metric_label("0xffffffffc0a01230") == "unresolved"


# -- sudo: outputs go to the user who ran it ----------------------------------------------------------------
@pytest.mark.parametrize("env,owner", [
    ({"SUDO_UID": "1000", "SUDO_GID": "1001"}, (1000, 1001)),
    ({}, None),
    ({"SUDO_UID": "1000"}, None),
    ({"SUDO_UID": "0", "SUDO_GID": "0"}, None),                 # sudo from root: nobody to hand to
    ({"SUDO_UID": "abc", "SUDO_GID": "1000"}, None),
    ({"SUDO_UID": "-1", "SUDO_GID": "1000"}, None),
    ({"SUDO_UID": "4294967295", "SUDO_GID": "1000"}, None),     # (uid_t)-1: chown's "unchanged"
    ({"SUDO_UID": "", "SUDO_GID": ""}, None),
])
def test_sudo_owner_only_for_a_valid_invoking_user(env, owner):
    assert outpath.sudo_owner(env, euid=0) == owner
    assert outpath.sudo_owner(env, euid=1000) is None           # not root: nothing to hand over


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="hands files over with chown: needs root")


@pytest.fixture
def shared_tmp():
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="mmntrace-sudo-test-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sudo(monkeypatch):
    monkeypatch.setenv("SUDO_UID", str(NOBODY))
    monkeypatch.setenv("SUDO_GID", str(NOBODY))


def _as_nobody(*args, cwd: Path) -> subprocess.CompletedProcess:
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "MPLCONFIGDIR": str(cwd),
           "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                           sys.executable, "-m", "mmntrace.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _owned_by_nobody(top: Path, dir_mode=0o700, file_mode=0o600) -> list[str]:
    """What under ``top`` (itself included) is not nobody's, or has another mode."""
    bad = []
    for p in [top, *top.rglob("*")]:
        st = os.lstat(p)
        want = dir_mode if stat.S_ISDIR(st.st_mode) else file_mode
        if (st.st_uid, st.st_gid) != (NOBODY, NOBODY) or stat.S_IMODE(st.st_mode) != want:
            bad.append(f"{p} {stat.S_IMODE(st.st_mode):04o} {st.st_uid}:{st.st_gid}")
    return bad


@needs_root
def test_under_sudo_the_recording_is_the_users_and_report_reads_it(shared_tmp, sudo):
    """The documented flow: `sudo mmntrace record -o rec`, then `mmntrace report rec` as the user."""
    rec = synthetic.write(shared_tmp / "new" / "rec", n_events=2000, segments=2, violations=5, span_s=5.0)
    assert _owned_by_nobody(rec) == []
    parent = os.lstat(shared_tmp / "new")                          # a parent it made is theirs too
    assert (parent.st_uid, parent.st_gid) == (NOBODY, NOBODY)
    r = _as_nobody("report", rec, "--format", "json", cwd=shared_tmp)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["events"] == 2000


@needs_root
def test_a_recording_cut_short_is_already_the_users(shared_tmp, sudo):
    """Each file is handed over as it is made: a Ctrl-C (no finish()) leaves a readable recording."""
    w = RecordingWriter(shared_tmp / "rec", META)
    w.write_segment(_events(), pd.DataFrame())
    assert _owned_by_nobody(shared_tmp / "rec") == []
    r = _as_nobody("report", shared_tmp / "rec", "--format", "json", cwd=shared_tmp)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["complete"] is False


@needs_root
def test_under_sudo_report_and_plot_outputs_are_the_users(rec, shared_tmp, sudo):
    for fmt in ("json", "html"):
        r = CliRunner().invoke(main, ["report", str(rec), "--format", fmt, "-o", str(shared_tmp / f"r.{fmt}")])
        assert r.exit_code == 0, r.output
        assert _owned_by_nobody(shared_tmp / f"r.{fmt}") == []
    r = CliRunner().invoke(main, ["plot", str(rec), "-o", str(shared_tmp / "figs")])
    assert r.exit_code == 0, r.output
    assert _owned_by_nobody(shared_tmp / "figs") == []
    r = CliRunner().invoke(main, ["report", str(rec), "--format", "json", "--keep-root-owner",
                                  "-o", str(shared_tmp / "root.json")])
    assert r.exit_code == 0 and os.stat(shared_tmp / "root.json").st_uid == 0
    assert mode(shared_tmp / "root.json") == 0o600


@needs_root
def test_without_sudo_or_with_keep_root_owner_the_recording_stays_roots(shared_tmp, monkeypatch, no_sudo):
    RecordingWriter(shared_tmp / "a", META).finish(drops={"total": 0})
    monkeypatch.setenv("SUDO_UID", str(NOBODY))
    monkeypatch.setenv("SUDO_GID", str(NOBODY))
    RecordingWriter(shared_tmp / "b", META, hand_over=False).finish(drops={"total": 0})
    for d in ("a", "b"):
        assert {os.lstat(p).st_uid for p in [shared_tmp / d, *(shared_tmp / d).iterdir()]} == {0}
        assert mode(shared_tmp / d) == 0o700 and mode(shared_tmp / d / "metadata.json") == 0o600
    # the user cannot read root's private recording: told in one sentence, not "no metadata.json"
    r = _as_nobody("report", shared_tmp / "a", cwd=shared_tmp)
    assert r.returncode == 20, r.stderr
    assert "is not readable by this user" in r.stderr and "chown" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


# -- the lab's run directory ----------------------------------------------------------------------------------
def _att(*outcomes):
    return [lab.Attempt(i + 1, o, 0, 1.0, 1.0 if o == "finished" else None) for i, o in enumerate(outcomes)]


@pytest.mark.parametrize("rc,outcomes,keep,why", [
    (0, ["finished"], False, None),                                         # clean: removed
    (0, ["finished"], True, "--keep-run-dir"),
    (1, ["finished"], False, "exit 1"),                                     # the command failed
    (lab.DMESG_EXIT, ["finished"], False, "exit 3"),                        # BUG/WARNING in the kernel log
    (0, ["died-early", "finished"], False, "1 boot(s) lost before the command"),
    (None, ["died"], False, "the guest did not finish"),
    (None, ["timeout"], False, "the guest did not finish"),
])
def test_run_dir_kept_or_removed_by_outcome(rc, outcomes, keep, why):
    assert lab.keep_run_dir_reason(rc, _att(*outcomes), keep) == why


def _fake_lab(tmp_path, monkeypatch, returncode: int):
    """vng stand-in whose guest finishes with ``returncode``; run directories go under tmp_path."""
    fake = tmp_path / "vng"
    fake.write_text('#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = --rwdir ] && { RD=$2; break; }; shift; done\n'
                    'touch "$RD/started"\n'
                    f'echo \'{{"returncode": {returncode}, "dmesg_problems": [], "dmesg_expected": [], '
                    f'"boot_s": 1.0}}\' > "$RD/result.json"\n')
    fake.chmod(0o755)
    monkeypatch.setattr(lab, "_vng", lambda: str(fake))
    real = lab.tempfile.mkdtemp
    monkeypatch.setattr(lab.tempfile, "mkdtemp", lambda prefix: real(prefix=prefix, dir=tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    img = tmp_path / "vmlinuz-1.0"
    img.write_bytes(b"x")
    return img


def test_a_clean_lab_run_leaves_no_run_directory(tmp_path, monkeypatch):
    img = _fake_lab(tmp_path, monkeypatch, 0)
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--", "true"])
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "runs").iterdir()) == [] and "run directory kept" not in r.stderr
    res = lab.run(lab.Kernel(img, None), ["true"], build_module=False)
    assert res.returncode == 0 and res.run_dir is None


@pytest.mark.parametrize("rc,args,why", [(0, ["--keep-run-dir"], "--keep-run-dir"), (5, [], "exit 5")])
def test_a_lab_run_dir_that_stays_is_named_on_one_line(tmp_path, monkeypatch, rc, args, why):
    img = _fake_lab(tmp_path, monkeypatch, rc)
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), *args, "--", "true"])
    assert r.exit_code == rc
    kept = list((tmp_path / "runs").iterdir())
    assert len(kept) == 1 and (kept[0] / "attempts.json").exists()
    lines = [ln for ln in r.stderr.splitlines() if "run directory kept" in ln]
    assert lines == [f"lab: run directory kept ({why}): {kept[0]}"]


def test_lab_help_tells_keep_run_dir():
    r = CliRunner().invoke(main, ["lab", "--help"])
    assert "--keep-run-dir" in r.output
