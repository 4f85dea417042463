"""The lab's host-side logic, without booting anything."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmnlab import guest, vm as lab
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


def test_resolve_flavours_pick_their_own_kernel(monkeypatch):
    """6.12 is the generic kernel even when a PREEMPT_RT one sorts after it;
    6.12-rt is the RT one; a full release names itself."""
    ks = [lab.Kernel(Path("/boot/vmlinuz-6.12.95+deb12-rt-amd64"), "6.12.95+deb12-rt-amd64"),
          lab.Kernel(Path("/boot/vmlinuz-6.12.95+deb12-amd64"), "6.12.95+deb12-amd64"),
          lab.Kernel(Path("/boot/vmlinuz-6.1.0-57-rt-amd64"), "6.1.0-57-rt-amd64"),
          lab.Kernel(Path("/boot/vmlinuz-6.1.0-57-amd64"), "6.1.0-57-amd64")]
    monkeypatch.setattr(lab, "installed_kernels", lambda: ks)
    assert lab.resolve_kernel("6.12").release == "6.12.95+deb12-amd64"
    assert lab.resolve_kernel("6.12-rt").release == "6.12.95+deb12-rt-amd64"
    assert lab.resolve_kernel("6.1").release == "6.1.0-57-amd64"
    assert lab.resolve_kernel("6.1-rt").release == "6.1.0-57-rt-amd64"
    assert lab.resolve_kernel("6.12.95+deb12-rt-amd64").release == "6.12.95+deb12-rt-amd64"
    with pytest.raises(UsageError, match="no installed kernel matches '6.12-cloud'"):
        lab.resolve_kernel("6.12-cloud")
    assert [lab.flavour(k.release) for k in ks] == ["rt", "", "rt", ""]


def test_resolve_arm64_kernel_only_when_asked(monkeypatch, tmp_path):
    """The arm64 lab's kernel (build/arm64/root) is picked by 6.12-arm64 only:
    6.12 stays this machine's own architecture, even though it sorts after."""
    root = tmp_path / "root"
    ks = [lab.Kernel(Path("/boot/vmlinuz-6.12.95+deb12-amd64"), "6.12.95+deb12-amd64", arch="amd64"),
          lab.Kernel(root / "boot/vmlinuz-6.12.99+deb12-arm64", "6.12.99+deb12-arm64", arch="arm64", root=root)]
    monkeypatch.setattr(lab, "installed_kernels", lambda: ks)
    monkeypatch.setattr(lab, "host_arch", lambda: "amd64")
    assert lab.resolve_kernel("6.12").release == "6.12.95+deb12-amd64"
    k = lab.resolve_kernel("6.12-arm64")
    assert k.release == "6.12.99+deb12-arm64" and k.foreign and k.python == "/usr/bin/python3"
    assert not ks[0].foreign
    assert lab.resolve_kernel("6.12", arch="arm64").release == "6.12.99+deb12-arm64"
    assert lab.resolve_kernel("6.12", arch="amd64").release == "6.12.95+deb12-amd64"
    with pytest.raises(UsageError, match="--arch sparc"):
        lab.resolve_kernel("6.12", arch="sparc")
    monkeypatch.setattr(lab, "installed_kernels", lambda: ks[:1])
    with pytest.raises(UsageError, match="make arm64-root"):
        lab.resolve_kernel("6.12-arm64")


def test_vng_command_for_the_arm64_lab(tmp_path, monkeypatch):
    """An arm64 guest: QEMU's virt machine with its own root and Python, the
    checkout mounted where it is here, no x86 clock options."""
    root = tmp_path / "root"
    k = lab.Kernel(root / "boot/vmlinuz-6.12.99+deb12-arm64", "6.12.99+deb12-arm64", arch="arm64", root=root)
    monkeypatch.setattr(lab, "host_arch", lambda: "amd64")
    cmd = lab._vng_cmd(k, tmp_path / "run", 1, shares=[str(tmp_path / "share")], cpus=2, memory="3G", numa=True)
    i = cmd.index("--arch")
    assert cmd[i + 1] == "arm64" and cmd[cmd.index("--root") + 1] == str(root)
    assert "tsc=reliable" not in " ".join(cmd)
    assert any("virtualization=on" in c for c in cmd)
    guest = cmd[cmd.index("--exec") + 1]
    assert "/usr/bin/python3 -m mmnlab.guest" in guest and "PYTHONPATH=" in guest
    assert (root / str(lab.REPO).lstrip("/")).is_dir() and (root / str(tmp_path / "share").lstrip("/")).is_dir()


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


# A fake vng finds the run directory the way the guest does: the first --rwdir.
_RD = 'while [ $# -gt 0 ]; do [ "$1" = --rwdir ] && { RD=$2; break; }; shift; done\n'


def _attempts(stderr: str) -> list[dict]:
    rd = re.search(r"see (/\S+mmntrace-lab-\w+)", stderr).group(1)
    return json.loads(Path(rd, lab.ATTEMPTS).read_text())


def test_vm_that_dies_before_the_command_is_booted_again_then_fails(tmp_path, monkeypatch):
    """A guest that never starts the command is retried up to --boot-attempts, then reported dead (125)."""
    img = _fake_vm(tmp_path, monkeypatch, _RD + "echo qemu-says-bye >&2; exit 255\n")
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--boot-attempts", "3", "--", "true"])
    assert r.exit_code == 125
    assert "before the command started in all 3 boot(s)" in r.stderr
    assert r.stderr.count("booting again") == 2
    att = _attempts(r.stderr)
    assert [(a["n"], a["outcome"], a["status"]) for a in att] == [(i, "died-early", 255) for i in (1, 2, 3)]
    rd = Path(re.search(r"see (/\S+mmntrace-lab-\w+)", r.stderr).group(1))
    assert all((rd / f"attempt-{i}.stderr").read_text() == "qemu-says-bye\n" for i in (1, 2, 3))


def test_vm_that_dies_after_the_command_started_is_not_retried(tmp_path, monkeypatch):
    img = _fake_vm(tmp_path, monkeypatch, _RD + 'touch "$RD/started"; exit 255\n')
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--", "true"])
    assert r.exit_code == 125
    assert "before the command finished" in r.stderr and "booting again" not in r.stderr
    assert [a["outcome"] for a in _attempts(r.stderr)] == ["died"]


def test_early_death_then_a_good_boot_passes(tmp_path, monkeypatch):
    """The second boot's result is the run's result; the lost boot is kept aside."""
    count = tmp_path / "boots"
    img = _fake_vm(tmp_path, monkeypatch, _RD + f"""echo x >> {count}
if [ $(wc -l < {count}) = 1 ]; then echo lost > "$RD/kmsg.log"; exit 255; fi
touch "$RD/started"
echo '{{"returncode": 7, "dmesg_problems": [], "dmesg_expected": [], "boot_s": 1.0}}' > "$RD/result.json"
""")
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--", "true"])
    assert r.exit_code == 7, r.output
    line = [ln for ln in r.stderr.splitlines() if "booting again" in ln]
    assert len(line) == 1 and "exited (status 255) before the command started" in line[0]
    rd = Path(re.search(r"kept in (/\S+mmntrace-lab-\w+)", line[0]).group(1))
    att = json.loads((rd / lab.ATTEMPTS).read_text())
    assert [a["outcome"] for a in att] == ["died-early", "finished"] and att[1]["started_s"] is not None
    assert (rd / "attempt-1.kmsg.log").read_text() == "lost\n"


def test_vm_that_hangs_in_boot_is_killed_and_booted_again(tmp_path, monkeypatch):
    import time
    img = _fake_vm(tmp_path, monkeypatch, _RD + "exec sleep 60\n")
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--boot-timeout", "1",
                                  "--boot-attempts", "2", "--", "true"])
    assert r.exit_code == 125 and time.monotonic() - t0 < 30
    assert "did not reach the command within 1 s" in r.stderr
    assert [(a["outcome"], a["status"]) for a in _attempts(r.stderr)] == [("hung-early", None)] * 2


def test_vm_timeout_is_a_failure(tmp_path, monkeypatch):
    img = _fake_vm(tmp_path, monkeypatch, _RD + 'touch "$RD/started"; sleep 30\n')
    r = CliRunner().invoke(main, ["lab", "--kernel", str(img), "--timeout", "1", "--", "true"])
    assert r.exit_code == 124
    assert "did not finish within 1 s" in r.output
    assert [a["outcome"] for a in _attempts(r.stderr)] == ["timeout"]


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


def _lab_process(tmp_path, vng_script: str, stderr):
    """`mmntrace lab` in its own process over a fake vng; returns it and the VM's pid
    (the script writes it to $PIDFILE)."""
    import subprocess, sys, time
    pidfile = tmp_path / "vm.pid"
    fake_vng = tmp_path / "vng"
    fake_vng.write_text("#!/bin/sh\n" + vng_script.replace("$PIDFILE", str(pidfile)))
    fake_vng.chmod(0o755)
    img = tmp_path / "vmlinuz-1.0"
    img.write_bytes(b"x")
    code = ("import sys; from mmnlab import vm as lab; from mmntrace import cli; v = sys.argv[1]; lab._vng = lambda: v; "
            "sys.argv = ['mmntrace', 'lab', '--kernel', sys.argv[2], '--', 'true']; cli.main()")
    p = subprocess.Popen([sys.executable, "-c", code, str(fake_vng), str(img)], stderr=stderr, text=True)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    return p, int(pidfile.read_text())


def test_sigterm_takes_the_vm_down(tmp_path):
    """`timeout mmntrace lab ...` must not leave QEMU running (it has its own session)."""
    import os, signal, subprocess, time
    p, vm = _lab_process(tmp_path, "echo $$ > $PIDFILE\nexec sleep 60\n", subprocess.PIPE)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 30 and "interrupted" in err
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(vm, 0)


def test_sigkill_does_not_orphan_the_vm(tmp_path):
    """SIGKILL (CI time limits, subprocess.run(timeout=...)) gives us no chance to clean up:
    the guard process takes the VM's session down."""
    import os, signal, subprocess, time
    # a child in the VM's session, as QEMU is virtme-ng's child
    p, vm = _lab_process(tmp_path, "sleep 60 &\necho $! > $PIDFILE\nwait\n", subprocess.DEVNULL)
    os.kill(vm, 0)
    p.kill()
    p.wait()
    for _ in range(50):
        try:
            os.kill(vm, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(vm, signal.SIGKILL)
        raise AssertionError("the VM outlived a SIGKILLed `mmntrace lab`")


def test_kmsg_lines_format_like_dmesg():
    rec = b"6,120,1234567,-;rcu: \\x09RCU restricting CPUs\n SUBSYSTEM=cpu\n"
    assert guest.kmsg_lines(rec) == ["[    1.234567] rcu: \tRCU restricting CPUs"]
    assert guest.kmsg_lines(b"4,1,0,-;a\\x0ab\n") == ["[    0.000000] a", "[    0.000000] b"]


def test_dead_vm_prints_the_guest_kernel_log_tail(tmp_path, monkeypatch):
    """What the guest's kernel said before it died reaches the user (the guest copies it to kmsg.log)."""
    img = _fake_vm(tmp_path, monkeypatch, _RD + 'touch "$RD/started"; exit 0\n')
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


def test_guest_clock_is_the_tsc_unless_asked(monkeypatch, tmp_path):
    monkeypatch.setattr(lab.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("MMNTRACE_LAB_CLOCK", raising=False)
    assert lab.clock_options() == ["tsc=reliable", "clocksource=tsc"]
    k = lab.Kernel(Path("/boot/vmlinuz-x"), "x")
    cmd = lab._vng_cmd(k, tmp_path, 1, shares=[], cpus=2, memory="3G", numa=True)
    append = cmd[cmd.index("--append") + 1].split()
    assert "tsc=reliable" in append and "clocksource=tsc" in append
    monkeypatch.setenv("MMNTRACE_LAB_CLOCK", "kernel")
    assert lab.clock_options() == []
    monkeypatch.setenv("MMNTRACE_LAB_CLOCK", "hpet")
    with pytest.raises(lab.LabError, match="MMNTRACE_LAB_CLOCK must be tsc or kernel"):
        lab.clock_options()
    monkeypatch.setattr(lab.platform, "machine", lambda: "aarch64")
    monkeypatch.delenv("MMNTRACE_LAB_CLOCK")
    assert lab.clock_options() == []


def test_interrupt_sends_sigint_until_the_process_exits():
    """bpftrace can lose a SIGINT (it lands between its exit-flag check and an
    epoll_wait with no timeout): `interrupt` sends another until it exits, and
    says False, not hangs, for a process that never does."""
    import subprocess
    import sys
    import time
    from mmnlab.harness import interrupt
    # counts the SIGINTs it gets, exits at the second, after printing more than a pipe holds
    prog = ("import signal, sys, time\n"
            "n = []\n"
            "signal.signal(signal.SIGINT, lambda *a: n.append(1))\n"
            "print('up', flush=True)\n"
            "while len(n) < 2: time.sleep(0.01)\n"
            "sys.stdout.write('x' * 200000 + '\\n%d\\n' % len(n))\n")
    p = subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "up\n"
    t0 = time.monotonic()
    assert interrupt(p, timeout=30, every=0.5)
    assert p.returncode == 0 and time.monotonic() - t0 < 10
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                 "signal.signal(signal.SIGINT, signal.SIG_IGN)\nprint('up', flush=True)\n"
                                 "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "up\n"
    t0 = time.monotonic()
    assert not interrupt(stubborn, timeout=1.5, every=0.5)
    assert 1.4 < time.monotonic() - t0 < 5 and stubborn.poll() is None
    stubborn.kill()
    stubborn.wait()


def test_guest_root_is_exported_again_with_a_cache_unless_asked(monkeypatch, tmp_path):
    """virtme-ng's root mount caches nothing: the lab exports the root a
    second time (the guest mounts it cached under /usr and the venv), the
    foreign root for an arm64 guest; MMNTRACE_LAB_ROOT_CACHE=none leaves it."""
    monkeypatch.delenv("MMNTRACE_LAB_ROOT_CACHE", raising=False)
    k = lab.Kernel(Path("/boot/vmlinuz-x"), "x")
    cmd = lab._vng_cmd(k, tmp_path, 1, shares=[], cpus=2, memory="3G", numa=True)
    fsdev = [c for c in cmd if lab.ROOT_CACHE_TAG in c]
    assert len(fsdev) == 1 and ",path=/," in fsdev[0] and "readonly=on" in fsdev[0]
    assert lab.cached_paths(k) == ["/usr", str(lab.REPO / ".venv")]
    root = tmp_path / "root"
    a = lab.Kernel(root / "boot/vmlinuz-6.12.99+deb12-arm64", "6.12.99+deb12-arm64", arch="arm64", root=root)
    monkeypatch.setattr(lab, "host_arch", lambda: "amd64")
    cmd = lab._vng_cmd(a, tmp_path / "run", 1, shares=[], cpus=2, memory="3G", numa=True)
    assert any(f",path={root}," in c for c in cmd) and lab.cached_paths(a) == ["/usr"]
    monkeypatch.setenv("MMNTRACE_LAB_ROOT_CACHE", "none")
    cmd = lab._vng_cmd(k, tmp_path, 1, shares=[], cpus=2, memory="3G", numa=True)
    assert not any(lab.ROOT_CACHE_TAG in c for c in cmd) and lab.cached_paths(k) == []
    monkeypatch.setenv("MMNTRACE_LAB_ROOT_CACHE", "always")
    with pytest.raises(lab.LabError, match="MMNTRACE_LAB_ROOT_CACHE must be loose or none"):
        lab.root_cache()
