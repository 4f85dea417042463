"""The lab's host-side logic, without booting anything."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmntrace import guest, lab
from mmntrace.cli import main
from mmntrace.errors import UsageError


def test_resolve_prefix_does_not_confuse_6_1_and_6_12(monkeypatch):
    ks = [lab.Kernel(Path("/boot/vmlinuz-6.1.0-56-amd64"), "6.1.0-56-amd64"),
          lab.Kernel(Path("/boot/vmlinuz-6.1.0-9-amd64"), "6.1.0-9-amd64"),
          lab.Kernel(Path("/boot/vmlinuz-6.12.95+deb12-amd64"), "6.12.95+deb12-amd64")]
    monkeypatch.setattr(lab, "installed_kernels", lambda: ks)
    assert lab.resolve_kernel("6.1").release == "6.1.0-56-amd64"      # newest of the series
    assert lab.resolve_kernel("6.12").release == "6.12.95+deb12-amd64"
    with pytest.raises(UsageError, match="no installed kernel matches '5.10'"):
        lab.resolve_kernel("5.10")


def test_resolve_image_path(tmp_path):
    img = tmp_path / "vmlinuz-6.99.0-test"
    img.write_bytes(b"x")
    k = lab.resolve_kernel(str(img))
    assert k.release == "6.99.0-test" and k.image == img
    with pytest.raises(UsageError, match="does not exist"):
        lab.resolve_kernel(str(tmp_path / "nope" / "bzImage"))


@pytest.mark.parametrize("spec,mib", [("2G", 2048), ("1536M", 1536), ("512", 512)])
def test_memory_sizes(spec, mib):
    assert lab._mem_mib(spec) == mib


def test_memory_size_rejects_garbage():
    with pytest.raises(UsageError):
        lab._mem_mib("lots")


def test_dmesg_verdict_splits_expected():
    log = "\n".join([
        "[    1.0] ok line",
        "[    2.0] BUG: scheduling while atomic: python3/12/0x00000002",
        "[    3.0] WARNING: CPU: 0 PID: 1 at mm/foo.c:1 bar+0x1/0x2",
        "[    4.0] BUG: unable to handle page fault",
    ])
    bad, ok = guest.dmesg_verdict(log, ["scheduling while atomic"])
    assert ok == ["[    2.0] BUG: scheduling while atomic: python3/12/0x00000002"]
    assert [l.split("] ")[1][:8] for l in bad] == ["WARNING:", "BUG: una"]


def _fake_vm(tmp_path, monkeypatch, script: str):
    """A stand-in for vng that runs ``script``, and a kernel image to pass it."""
    fake_vng = tmp_path / "vng"
    fake_vng.write_text("#!/bin/sh\n" + script)
    fake_vng.chmod(0o755)
    monkeypatch.setattr(lab, "_vng", lambda: str(fake_vng))
    img = tmp_path / "vmlinuz-1.0"
    img.write_bytes(b"x")
    return img


def test_vm_that_dies_is_a_failure(tmp_path, monkeypatch):
    """A guest that never writes result.json is reported as dead (exit 125), never as a pass."""
    img = _fake_vm(tmp_path, monkeypatch, "exit 0\n")
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--", "true"])
    assert r.exit_code == 125
    assert "before the command finished" in r.output


def test_vm_timeout_is_a_failure(tmp_path, monkeypatch):
    img = _fake_vm(tmp_path, monkeypatch, "sleep 30\n")
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--timeout", "1", "--", "true"])
    assert r.exit_code == 124
    assert "did not finish within 1 s" in r.output


def test_guest_result_carries_exit_code_and_dmesg(tmp_path, monkeypatch):
    """The host side turns the guest's result into the exit status (3 for an unexpected BUG)."""
    _fake_vm(tmp_path, monkeypatch, "")
    real_mkdtemp = lab.tempfile.mkdtemp
    rd = {}

    def mkdtemp(prefix):
        d = real_mkdtemp(prefix=prefix, dir=tmp_path)
        Path(d, "result.json").write_text(json.dumps(
            {"returncode": 0, "dmesg_problems": ["BUG: oops"], "dmesg_expected": [], "boot_s": 1.0}))
        rd["d"] = d
        return d
    monkeypatch.setattr(lab.tempfile, "mkdtemp", mkdtemp)
    res = lab.run(lab.Kernel(tmp_path / "img", None), ["true"], build_module=False)
    assert res.returncode == lab.DMESG_EXIT and res.dmesg_problems == ["BUG: oops"]
    spec = json.loads(Path(rd["d"], "argv.json").read_text())
    assert spec["argv"] == ["true"]      # an argument vector, no shell


def test_lab_help_teaches():
    r = CliRunner().invoke(main, ["lab", "--help"])
    assert r.exit_code == 0
    for word in ("--kernel", "--share", "tests/kmod", "Examples"):
        assert word in r.output


def test_sigterm_takes_the_vm_down(tmp_path):
    """`timeout mmntrace lab ...` must not leave QEMU running (it has its own session)."""
    import os, signal, subprocess, sys, time
    pidfile = tmp_path / "vm.pid"
    fake_vng = tmp_path / "vng"
    fake_vng.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 60\n")
    fake_vng.chmod(0o755)
    img = tmp_path / "vmlinuz-1.0"
    img.write_bytes(b"x")
    code = ("import sys; from mmntrace import lab, cli; v = sys.argv[1]; lab._vng = lambda: v; "
            "sys.argv = ['mmntrace', 'lab', '--kernel', sys.argv[2], '--', 'true']; cli.main()")
    p = subprocess.Popen([sys.executable, "-c", code, str(fake_vng), str(img)], stderr=subprocess.PIPE, text=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    vm = int(pidfile.read_text())
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 30 and "interrupted" in err
    time.sleep(0.2)
    with __import__("pytest").raises(ProcessLookupError):
        os.kill(vm, 0)


def test_kmsg_lines_format_like_dmesg():
    rec = b"6,120,1234567,-;rcu: \\x09RCU restricting CPUs\n SUBSYSTEM=cpu\n"
    assert guest.kmsg_lines(rec) == ["[    1.234567] rcu: \tRCU restricting CPUs"]
    assert guest.kmsg_lines(b"4,1,0,-;a\\x0ab\n") == ["[    0.000000] a", "[    0.000000] b"]


def test_dead_vm_prints_the_guest_kernel_log_tail(tmp_path, monkeypatch):
    """What the guest's kernel said before it died reaches the user (the guest copies it to kmsg.log)."""
    img = _fake_vm(tmp_path, monkeypatch, "exit 0\n")
    real_mkdtemp = lab.tempfile.mkdtemp

    def mkdtemp(prefix):
        d = real_mkdtemp(prefix=prefix, dir=tmp_path)
        Path(d, "kmsg.log").write_text("".join(f"[ {i}.0] line {i}\n" for i in range(100)) +
                                       "[ 99.9] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n")
        return d
    monkeypatch.setattr(lab.tempfile, "mkdtemp", mkdtemp)
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--", "true"])
    assert r.exit_code == 125
    tail = [ln for ln in r.stderr.splitlines() if ln.startswith("lab: | ")]
    assert len(tail) == 40 and "Oops: int3" in tail[-1] and "line 61" in tail[0]
