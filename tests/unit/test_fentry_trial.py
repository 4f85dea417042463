"""doctor tells the truth about fentry (issue 16): a real trial attach decides.

On the host these tests run on, the trial runs for real (as root): whatever
the kernel answers must come back as a verdict, and `doctor` and `record
--backend fentry` must say it. The errno cases this host cannot produce
(ENOTSUPP at attach, EINVAL at load, one target failing and the next
working) are made at the bpf(2) boundary, mmntrace.bpfsys.
"""

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmntrace import bpfsys, errors, kernel, trial, tracer
from mmntrace.cli import main

REPO = Path(__file__).resolve().parents[2]
ERRNO_IN_REASON = re.compile(r"\b(E[A-Z0-9]+|errno) \d+ on (loading|attaching) a trial fentry program$")


@pytest.fixture(autouse=True)
def _fresh_verdict():
    """The verdict is cached per process: each test asks again."""
    kernel.fentry_verdict.cache_clear()
    yield
    kernel.fentry_verdict.cache_clear()


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("the real trial needs root (loading BPF programs)")


def _bpftrace_says_no_kfunc() -> bool | None:
    """bpftrace --info's own kfunc probe, as an outside opinion (None: no bpftrace)."""
    exe = shutil.which("bpftrace")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--info"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"^\s*kfunc:\s*(yes|no)\s*$", out, re.M)
    return None if m is None else m.group(1) == "no"


# -- the trial on this host, for real ---------------------------------------------------------------
def test_real_trial_on_this_host():
    """ok with no reason where trampolines work; otherwise one plain sentence
    naming the errno and the step that failed. Where bpftrace says `kfunc: no`
    (this project's host: EPERM even for root), ours must say no too."""
    _need_root()
    v = trial.fentry_trial()
    assert isinstance(v.ok, bool)
    if v.ok:
        assert v.reason is None
    else:
        assert v.reason and "\n" not in v.reason and not v.reason.endswith(".")
        assert ERRNO_IN_REASON.search(v.reason), v.reason
    if _bpftrace_says_no_kfunc():
        assert not v.ok, "bpftrace says kfunc: no, the trial said yes"
    assert kernel.fentry_verdict() == trial.fentry_trial(targets=[s for _h, s, _n in kernel.probe().hooks])


def test_real_trial_without_privileges_says_root():
    """EPERM for lack of capabilities, for real: the trial in a child that
    dropped root (uid nobody: no capabilities left)."""
    _need_root()
    code = ("import sys; sys.path.insert(0, %r); from mmntrace import trial; "
            "v = trial.fentry_trial(); print(v.ok); print(v.reason)" % str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       user=65534, group=65534, extra_groups=[], cwd="/")
    assert r.returncode == 0, r.stderr
    ok, reason = r.stdout.splitlines()[:2]
    assert ok == "False" and reason.startswith("fentry programs need root"), reason
    assert ERRNO_IN_REASON.search(reason) and r.stderr == ""


def test_no_btf_is_said_without_a_syscall():
    v = trial.fentry_trial(btf_path="/nonexistent/vmlinux")
    assert v == trial.Verdict(False, "fentry programs need BTF, and this kernel has no /nonexistent/vmlinux: "
                                     "CONFIG_DEBUG_INFO_BTF is off")


def test_the_verdict_is_cached_per_process(monkeypatch):
    calls = []
    monkeypatch.setattr(trial, "fentry_trial", lambda **kw: calls.append(kw) or trial.Verdict(True))
    assert kernel.fentry_verdict().ok and kernel.fentry_verdict().ok
    assert len(calls) == 1


# -- errno -> sentence (the cases this host cannot make happen) --------------------------------------
@pytest.mark.parametrize("stage,err,priv,words", [
    ("attaching", trial.ENOTSUPP, True, "the kernel refuses BPF trampolines: ENOTSUPP 524 on attaching"),
    ("attaching", errno.EOPNOTSUPP, True, "the kernel refuses BPF trampolines: EOPNOTSUPP 95"),
    ("loading", errno.EPERM, False, "fentry programs need root, or CAP_BPF with CAP_PERFMON: EPERM 1 on loading"),
    ("loading", errno.EPERM, True, "the kernel refuses fentry programs even to root"),
    ("loading", errno.EACCES, True, "EACCES 13 on loading"),
    ("loading", errno.EINVAL, True, "older than BPF trampolines or built without them: EINVAL 22 on loading"),
    ("loading", errno.ENOSYS, True, "no bpf(2) system call"),
    ("attaching", errno.EBUSY, True, "fentry programs fail on this kernel, Device or resource busy: EBUSY 16"),
    ("attaching", 600, True, "errno 600 on attaching"),
])
def test_reason_for_each_errno(stage, err, priv, words):
    r = trial.reason_for(stage, err, priv)
    assert words in r and ERRNO_IN_REASON.search(r) and "\n" not in r


def _fake_bpf(monkeypatch, load_errs: dict, attach_errs: dict):
    """bpf(2) as mmntrace.bpfsys sees it: per BTF id, an errno for the load or
    for the attach; fds are real (pipes) so that closing them works."""
    opened, seen = [], []

    def load_tracing(insns, *, name, attach, btf_obj_fd, btf_id, license="GPL"):
        seen.append(btf_id)
        assert attach == bpfsys.TRACE_FENTRY and btf_obj_fd == 0 and len(insns) == 16
        if btf_id in load_errs:
            raise bpfsys.BpfSysError("loading", load_errs[btf_id])
        r, w = os.pipe()
        os.close(w)
        opened.append(r)
        fentry_ids[r] = btf_id
        return r

    fentry_ids: dict = {}

    def attach_tracing(prog_fd):
        if fentry_ids[prog_fd] in attach_errs:
            raise bpfsys.BpfSysError("RAW_TRACEPOINT_OPEN", attach_errs[fentry_ids[prog_fd]])
        return os.dup(prog_fd)

    monkeypatch.setattr(bpfsys, "load_tracing", load_tracing)
    monkeypatch.setattr(bpfsys, "attach_tracing", attach_tracing)
    return seen, opened


class _Btf:
    def __init__(self, ids):
        self.ids = ids

    def find(self, name, kinds):
        return self.ids.get(name)


def test_enotsupp_at_attach_ends_the_trial_and_closes_its_fds(monkeypatch):
    seen, opened = _fake_bpf(monkeypatch, {}, {10: trial.ENOTSUPP})
    v = trial.fentry_trial(targets=["__mmu_notifier_release"], btf=_Btf({"bpf_fentry_test1": 10,
                                                                          "__mmu_notifier_release": 11}))
    assert v == trial.Verdict(False, "the kernel refuses BPF trampolines: ENOTSUPP 524 on attaching a trial "
                                     "fentry program")
    assert seen == [10]                                  # kernel-wide: no second target
    for fd in opened:
        with pytest.raises(OSError):
            os.fstat(fd)                                 # the program was closed


def test_a_failure_of_one_function_tries_the_next(monkeypatch):
    seen, _ = _fake_bpf(monkeypatch, {10: errno.ENOENT}, {})
    v = trial.fentry_trial(targets=["__mmu_notifier_release"], btf=_Btf({"bpf_fentry_test1": 10,
                                                                          "__mmu_notifier_release": 11}))
    assert v == trial.Verdict(True) and seen == [10, 11]


def test_every_function_failing_reports_the_first(monkeypatch):
    _fake_bpf(monkeypatch, {11: errno.ENOENT}, {10: errno.EBUSY})
    v = trial.fentry_trial(targets=["__mmu_notifier_release"], btf=_Btf({"bpf_fentry_test1": 10,
                                                                          "__mmu_notifier_release": 11}))
    assert not v.ok and "EBUSY 16 on attaching" in v.reason


def test_no_target_in_btf():
    v = trial.fentry_trial(targets=["nope"], btf=_Btf({}))
    assert not v.ok and "bpf_fentry_test1" in v.reason


# -- the backend choice -------------------------------------------------------------------------------
def test_auto_follows_the_trial_and_kprobe_never_runs_it(monkeypatch):
    monkeypatch.setattr(kernel, "fentry_verdict", lambda: pytest.fail("no trial for --backend kprobe"))
    assert tracer.resolve_backend("kprobe") == "kprobe"
    no = trial.Verdict(False, "the kernel refuses BPF trampolines: ENOTSUPP 524 on attaching a trial fentry program")
    assert tracer.resolve_backend("auto", no) == "kprobe"
    assert tracer.resolve_backend("auto", trial.Verdict(True)) == "fentry"
    assert tracer.resolve_backend("fentry", trial.Verdict(True)) == "fentry"
    with pytest.raises(errors.MmntraceError, match="ENOTSUPP 524.*use --backend kprobe$"):
        tracer.resolve_backend("fentry", no)
    with pytest.raises(errors.MmntraceError, match="unknown backend"):
        tracer.resolve_backend("uprobe")


# -- the CLI on this host, for real -------------------------------------------------------------------
def _expected_exit(backend: str = "auto") -> tuple[int, str]:
    """What require_recording says of this host: (exit code, sentence)."""
    try:
        kernel.require_recording(kernel.probe(), backend)
    except errors.MmntraceError as e:
        return e.exit_code, str(e)
    return 0, ""


def test_doctor_tells_the_trials_verdict():
    _need_root()
    v = kernel.fentry_verdict()
    r = CliRunner().invoke(main, ["doctor"])
    code, sentence = _expected_exit()
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and sentence in r.output
    line = next(ln for ln in r.output.splitlines() if ln.startswith("fentry "))
    if v.ok:
        assert line.split()[1] == "yes" and "trial fentry program attached" in line
    else:
        assert line.split()[1] == "NO" and f"({v.reason}" in line
    other = [ln.split()[0] for ln in r.output.splitlines() if not ln.startswith(" ")]
    for key in ("kernel", "root", "kprobes", "kallsyms", "BTF", "headers", "ring", "fentry", "kprobe", "MMU",
                "events"):
        assert key in other, r.output           # the rest of doctor is still there
    cookie = next(ln for ln in r.output.splitlines() if ln.startswith("kprobe cookies "))
    assert cookie.split()[2] == ("yes" if kernel.probe().kprobe_cookie else "NO"), cookie
    loop = next(ln for ln in r.output.splitlines() if ln.startswith("bpf_loop "))
    assert loop.split()[1] == ("yes" if kernel.probe().bpf_loop else "NO"), loop


def test_record_backend_fentry_on_this_host_is_one_sentence(tmp_path):
    """The first requirement that fails is the one told: on a host without
    kprobes, that (fentry needs them too); with them, the trial's reason."""
    _need_root()
    r = CliRunner().invoke(main, ["record", "-q", "--backend", "fentry", "-o", str(tmp_path / "r"), "-d", "1"])
    code, sentence = _expected_exit("fentry")
    lines = r.output.strip().splitlines()
    assert "Traceback" not in r.output and len(lines) == 1, r.output
    assert r.exit_code != 0
    if code:
        assert r.exit_code == code and lines[0] == f"mmntrace: {sentence}"
        if not kernel.probe().kprobes:
            assert "--backend fentry needs them too" in sentence
    elif not kernel.fentry_verdict().ok:
        assert r.exit_code == 1 and kernel.fentry_verdict().reason in lines[0]
    assert not (tmp_path / "r").exists()


def test_record_backend_fentry_with_kprobes_says_the_trials_reason(monkeypatch, tmp_path):
    """As if this host had kprobes and headers (the probe's result faked), the
    trial real: where it fails, `record --backend fentry` stops with its
    reason, before any compile."""
    _need_root()
    import dataclasses
    real = kernel.probe()
    good = dataclasses.replace(real, kprobes=True, kallsyms=True, headers="/lib/modules/x/build",
                               headers_release=real.release, headers_match=True, mmu_notifiers=True)
    v = kernel.fentry_verdict()
    if v.ok:
        pytest.skip("fentry works on this host")
    monkeypatch.setattr(kernel, "probe", lambda: good)
    r = CliRunner().invoke(main, ["record", "-q", "--backend", "fentry", "-o", str(tmp_path / "r"), "-d", "1"])
    assert r.exit_code == 1 and r.output == (f"mmntrace: the fentry backend is unavailable on this kernel: "
                                             f"{v.reason}; use --backend kprobe\n")
