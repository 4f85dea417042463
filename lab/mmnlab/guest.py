"""Guest side of the lab: prepare the kernel, run the command, check the kernel log.

Runs as root inside the VM that :func:`mmnlab.vm.run` boots, as
``python -m mmnlab.guest RUN_DIR``. It always writes ``RUN_DIR/result.json``
last; a run directory without it means the VM died.

Commands may declare expected kernel-log lines (for example a test that injects
a sleep in atomic context expects "BUG: scheduling while atomic") by appending
regular expressions, one per line, to ``$MMNTRACE_LAB_DIR/dmesg-expected``.

The kernel log is also copied to ``RUN_DIR/kmsg.log`` as it is written, so a
guest that dies (an Oops on every vCPU, a hang killed by the host's timeout)
still leaves what the kernel said before it went.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PROBLEM = re.compile(r"\b(BUG:|WARNING:|Oops|general protection fault|Kernel panic)")


def _log(msg: str) -> None:
    print(f"lab(guest): {msg}", file=sys.stderr, flush=True)


def _mount_options(path: str) -> tuple[str, dict] | None:
    """(fstype, options) of the topmost mount at ``path``, or None."""
    found = None
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4 and parts[1] == path:
                opts = dict(o.partition("=")[::2] for o in parts[3].split(","))
                found = (parts[2], opts)
    return found


def _mounted(path: str) -> bool:
    return _mount_options(path) is not None


def prepare(kmod_dir: str) -> dict:
    info: dict = {"release": os.uname().release}
    for fstype, path in (("debugfs", "/sys/kernel/debug"), ("tracefs", "/sys/kernel/tracing")):
        if not _mounted(path):
            subprocess.run(["mount", "-t", fstype, fstype, path], check=False)
    cpuinfo = Path("/proc/cpuinfo").read_text()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    kvm_mod = "kvm_amd" if "svm" in flags else "kvm_intel" if "vmx" in flags else None
    info["kvm"] = os.path.exists("/dev/kvm")     # built in (arm64: with virtualization=on)
    if kvm_mod and not info["kvm"]:
        r = subprocess.run(["modprobe", kvm_mod], capture_output=True, text=True)
        info["kvm"] = r.returncode == 0 and os.path.exists("/dev/kvm")
        if not info["kvm"]:
            _log(f"modprobe {kvm_mod} failed: {r.stderr.strip()}")
    ko = Path(kmod_dir) / info["release"] / "mmnt_test.ko"
    info["test_module"] = False
    if ko.exists():
        if not Path("/sys/module/mmnt_test").exists():
            r = subprocess.run(["insmod", str(ko)], capture_output=True, text=True)
            if r.returncode != 0:
                _log(f"insmod {ko} failed: {r.stderr.strip()}")
        info["test_module"] = Path("/dev/mmnt_test").exists()
    else:
        _log(f"test module not built for {info['release']} ({ko} missing)")
    # bpftrace and bcc want these; harmless otherwise.
    for knob, val in (("/proc/sys/kernel/kptr_restrict", "0"), ("/proc/sys/kernel/perf_event_paranoid", "-1")):
        try:
            Path(knob).write_text(val)
        except OSError:
            pass
    return info


def cache_root(paths: list[str], tag: str) -> str:
    """Read ``paths`` through the host's second, cached export of the root
    (mmnlab.vm.root_cache: virtme-ng's own root mount caches nothing, so each
    process re-read its libraries through the emulated 9p transport). A
    directory that virtme-ng overlaid (/usr: writable, changes in memory)
    gets a new overlay whose lower layers are the old one's changes and the
    cached export; any other is bound to the cached export, read-only.
    Returns what was done, for guest.json; a failure leaves the path as it
    was (slower, nothing else)."""
    if not paths:
        return "none"
    mnt = "/run/mmnt-root"
    os.makedirs(mnt, exist_ok=True)
    r = subprocess.run(["mount", "-t", "9p", "-o", "trans=virtio,version=9p2000.L,cache=loose,msize=512000,"
                        "ro,access=any", tag, mnt], capture_output=True, text=True)
    if r.returncode != 0:
        _log(f"the cached root export did not mount ({r.stderr.strip()}): reads stay uncached")
        return "failed"
    done = []
    for i, path in enumerate(paths):
        src = mnt + path
        if not os.path.isdir(src):
            continue
        cur = _mount_options(path)
        if cur and cur[0] == "overlay" and cur[1].get("upperdir"):
            base = f"/run/tmp/mmnt-cached{i}"
            os.makedirs(base + "/upper", exist_ok=True)
            os.makedirs(base + "/work", exist_ok=True)
            old = cur[1]["upperdir"]
            lower = f"{old}:{src}" if os.path.isdir(old) and os.listdir(old) else src
            cmd = ["mount", "-t", "overlay", f"mmnt_cached{i}", "-o",
                   f"lowerdir={lower},upperdir={base}/upper,workdir={base}/work", path]
        else:
            cmd = ["mount", "--bind", "-o", "ro", src, path]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            _log(f"{path} stays uncached: {' '.join(cmd)}: {r.stderr.strip()}")
        else:
            done.append(path)
    return "loose: " + " ".join(done) if done else "failed"


_PINNED: list[int] = []


def pin_preempt_notifier_key() -> str | None:
    """Hold one KVM VM open for the whole command.

    Every KVM VM created or destroyed moves preempt_notifier_key, a static key
    in __schedule(); its first and last users patch kernel text with
    text_poke_bp(). Under QEMU's multi-threaded TCG a vCPU sometimes executes
    the int3 that text_poke_bp() leaves there after the kernel has finished
    with it: both vCPUs of a 6.12 guest died with "Oops: int3" at
    __schedule+0x444 as a benchmark process holding a KVM VM exited (and the
    same guest deaths ended earlier test suites at random). With one VM held
    here, the workloads' VMs move the key between 1 and 2 users, which patches
    nothing. Returns why it could not, or None (no KVM: nothing to pin).
    """
    import fcntl
    if not os.path.exists("/dev/kvm"):
        return None
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        _PINNED.append(kvm)
        _PINNED.append(fcntl.ioctl(kvm, 0xAE01, 0))      # KVM_CREATE_VM
    except OSError as e:
        return f"KVM_CREATE_VM: {e}"
    return None


@contextlib.contextmanager
def one_cpu():
    """Take the other CPUs offline for the set-up that patches kernel text.

    Loading kvm, the test module, and the first KVM VM (preempt_notifier_key,
    in __schedule) patch live kernel text with text_poke_bp(). Under QEMU's
    multi-threaded TCG another vCPU sometimes runs the int3 that patching
    leaves behind after the kernel is done with it, and the guest dies with
    "Oops: int3". 2 boots in 30 died during this set-up, before the command
    started (issue 17). With one CPU online nothing can run the text meanwhile.
    """
    down = []
    for f in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*/online")):
        try:
            if f.read_text().strip() == "1":
                f.write_text("0")
                down.append(f)
        except OSError as e:
            _log(f"cannot take {f.parent.name} offline ({e.strerror})")
    try:
        yield
    finally:
        for f in down:
            try:
                f.write_text("1")
            except OSError as e:
                _log(f"cannot bring {f.parent.name} back online ({e.strerror})")


def kmsg_lines(rec: bytes) -> list[str]:
    """One /dev/kmsg record as dmesg prints it: ``[seconds] text``.

    A record is ``prio,seq,usec,flags;text``, the text's unprintable bytes
    escaped as ``\\xNN``, then optional continuation lines (`` KEY=value``)."""
    head, _, text = rec.decode(errors="replace").partition(";")
    f = head.split(",")
    ts = f"[{int(f[2]) / 1e6:12.6f}] " if len(f) > 2 and f[2].isdigit() else ""
    first = text.rstrip("\n").split("\n")[0]
    first = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), first)
    return [ts + ln for ln in first.split("\n")]


def follow_kmsg(path: Path) -> None:
    """Copy /dev/kmsg to ``path`` line by line, flushed, from a daemon thread.

    Records are written as :func:`kmsg_lines` formats them.
    """
    import threading

    def pump():
        try:
            src = open("/dev/kmsg", "rb", buffering=0)
        except OSError as e:
            _log(f"cannot follow the kernel log (/dev/kmsg: {e.strerror})")
            return
        with src, open(path, "a", buffering=1) as dst:
            while True:
                try:
                    rec = src.read(8192)
                except BrokenPipeError:      # overwritten before we read it: go on
                    dst.write("[kmsg: records lost]\n")
                    continue
                except OSError:
                    return
                if not rec:
                    return
                for line in kmsg_lines(rec):
                    dst.write(line + "\n")

    threading.Thread(target=pump, daemon=True, name="kmsg").start()


def dmesg_verdict(text: str, expected_patterns: list[str]) -> tuple[list[str], list[str]]:
    """Split the kernel log's problem lines into (unexpected, expected)."""
    pats = [re.compile(p) for p in expected_patterns if p.strip()]
    bad, ok = [], []
    for line in text.splitlines():
        if PROBLEM.search(line):
            (ok if any(p.search(line) for p in pats) else bad).append(line.strip())
    return bad, ok


def _inject_fault(spec: dict) -> None:
    """The lab's own tests make a boot die or hang before the command
    (MMNTRACE_LAB_FAULTS on the host: one word per attempt, "ok", "panic"
    or "hang"), to prove that the host boots again."""
    faults = spec.get("faults") or []
    n = spec.get("attempt", 1)
    fault = faults[n - 1] if n <= len(faults) else "ok"
    if fault == "panic":
        _log(f"attempt {n}: crashing the kernel before the command (MMNTRACE_LAB_FAULTS)")
        Path("/proc/sys/kernel/sysrq").write_text("1")
        Path("/proc/sysrq-trigger").write_text("c")
    elif fault == "hang":
        _log(f"attempt {n}: hanging before the command (MMNTRACE_LAB_FAULTS)")
        while True:
            time.sleep(3600)


def main(run_dir: str) -> int:
    rd = Path(run_dir)
    spec = json.loads((rd / "argv.json").read_text())
    t_boot = time.monotonic()  # CLOCK_MONOTONIC starts at boot in the guest
    follow_kmsg(rd / "kmsg.log")
    root_cache = cache_root(spec.get("cached_paths", []), spec.get("root_cache_tag", ""))
    with one_cpu():
        info = prepare(spec["kmod_dir"])
        why = pin_preempt_notifier_key()
        info["kvm_vm_held"] = bool(_PINNED) and why is None
        if why:
            _log(f"could not hold a KVM VM ({why}): KVM VMs may patch __schedule under TCG")
    try:
        info["clocksource"] = Path("/sys/devices/system/clocksource/clocksource0/current_clocksource") \
            .read_text().strip()
    except OSError:
        pass
    info["root_cache"] = root_cache
    (rd / "guest.json").write_text(json.dumps(info))
    env = dict(os.environ)
    env.update(spec.get("env", {}))
    env["MMNTRACE_LAB_DIR"] = str(rd)
    env["MMNTRACE_LAB_KERNEL"] = info["release"]
    env["PATH"] = str(Path(spec["python"]).parent) + os.pathsep + env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    _inject_fault(spec)
    # The host retries a guest that dies before this file exists (an early
    # death of the emulator), never one that dies after it.
    with open(rd / "started", "w") as f:
        f.write(f"{time.monotonic():.3f}\n")
        f.flush()
        os.fsync(f.fileno())
    try:
        env.setdefault("PYTHONUNBUFFERED", "1")    # output streams out, even if the VM is killed
        rc = subprocess.call(spec["argv"], cwd=spec["cwd"], env=env)
    except FileNotFoundError:
        _log(f"command not found: {spec['argv'][0]}")
        rc = 127
    except KeyboardInterrupt:
        rc = 130
    dmesg = subprocess.run(["dmesg"], capture_output=True, text=True).stdout
    (rd / "dmesg.txt").write_text(dmesg)
    exp_file = rd / "dmesg-expected"
    patterns = exp_file.read_text().splitlines() if exp_file.exists() else []
    bad, ok = dmesg_verdict(dmesg, patterns)
    result = {"returncode": rc, "dmesg_problems": bad, "dmesg_expected": ok,
              "boot_s": t_boot, "guest": info}
    tmp = rd / "result.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, rd / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
