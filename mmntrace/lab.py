"""The lab: boot a real kernel under QEMU (virtme-ng) and run one command in it.

The guest sees the host's root file system read-only, each ``share`` directory
writable at the same path, and a private run directory where the guest side
(:mod:`mmntrace.guest`) writes the command's exit status and the kernel log.
A guest that never writes its status died: that is a failure, never a pass.

Commands travel as an argument vector in a JSON file, never through a shell.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .errors import LabError, LabTimeout, LabVmDied, UsageError

REPO = Path(__file__).resolve().parent.parent
KMOD_DIR = REPO / "tests" / "kmod"

#: exit code when the command passed but the kernel log shows unexpected BUG:/WARNING: lines
DMESG_EXIT = 3


@dataclasses.dataclass(frozen=True)
class Kernel:
    image: Path
    release: str | None  # None when the image name does not tell it

    @property
    def headers(self) -> Path | None:
        if self.release is None:
            return None
        p = Path("/lib/modules") / self.release / "build"
        return p if p.is_dir() else None


@dataclasses.dataclass
class LabResult:
    returncode: int
    dmesg_problems: list[str]
    dmesg_expected: list[str]
    boot_s: float | None
    wall_s: float
    run_dir: Path


def _release_key(rel: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.\-+]", rel)]


def installed_kernels() -> list[Kernel]:
    out = []
    for img in sorted(glob.glob("/boot/vmlinuz-*")):
        out.append(Kernel(Path(img), Path(img).name[len("vmlinuz-"):]))
    return out


def resolve_kernel(spec: str) -> Kernel:
    """``spec`` is a version prefix of an installed kernel (``6.1``, ``6.12``) or an image path."""
    p = Path(spec)
    if "/" in spec or p.exists():
        if not p.is_file():
            raise UsageError(f"kernel image {spec} does not exist")
        rel = p.name[len("vmlinuz-"):] if p.name.startswith("vmlinuz-") else None
        return Kernel(p.resolve(), rel)
    matches = [k for k in installed_kernels()
               if k.release == spec or k.release.startswith(spec + ".") or k.release.startswith(spec + "-")]
    if not matches:
        have = ", ".join(k.release for k in installed_kernels()) or "none"
        raise UsageError(f"no installed kernel matches '{spec}' (installed: {have}); run `make setup`")
    return max(matches, key=lambda k: _release_key(k.release))


def build_test_module(kernel: Kernel, quiet: bool = True) -> Path | None:
    """Build tests/kmod for ``kernel`` against its own headers; returns the .ko or None."""
    if kernel.headers is None or not (KMOD_DIR / "mmnt_test.c").exists():
        return None
    ko = KMOD_DIR / "build" / kernel.release / "mmnt_test.ko"
    r = subprocess.run(["make", "-s", "-C", str(KMOD_DIR), f"KVER={kernel.release}"],
                       capture_output=quiet, text=True)
    if r.returncode != 0:
        raise LabError(f"building the test module for {kernel.release} failed:\n{(r.stdout or '')[-2000:]}{(r.stderr or '')[-2000:]}")
    return ko if ko.exists() else None


def _vng() -> str:
    here = Path(sys.executable).parent
    for cand in (here / "vng", REPO / ".venv" / "bin" / "vng"):
        if cand.exists():
            return str(cand)
    found = shutil.which("vng")
    if not found:
        raise LabError("virtme-ng (vng) is not installed: run `make setup`")
    return found


def _kvm_usable() -> bool:
    # /dev/kvm can exist yet refuse to run a guest (seen on this project's
    # machines: QEMU aborts setting MSR 0x10a), so acceleration is opt-in.
    return os.environ.get("MMNTRACE_LAB_KVM") == "1" and os.access("/dev/kvm", os.R_OK | os.W_OK)


def run(kernel: Kernel, argv: list[str], *, shares=(), cpus: int = 2, memory: str = "2G",
        numa: bool = True, timeout: float = 1200, cwd: str | None = None,
        env: dict | None = None, build_module: bool = True, verbose: bool = False) -> LabResult:
    """Boot ``kernel``, run ``argv`` in it, return its exit status and the kernel-log verdict.

    Raises :class:`LabTimeout` or :class:`LabVmDied` when the guest did not finish.
    """
    if not argv:
        raise UsageError("no command given to run in the lab")
    if build_module:
        build_test_module(kernel)
    run_dir = Path(tempfile.mkdtemp(prefix="mmntrace-lab-"))
    os.chmod(run_dir, 0o755)
    spec = {
        "argv": list(argv),
        "cwd": cwd or os.getcwd(),
        "env": env or {},
        "kmod_dir": str(KMOD_DIR / "build"),
        "python": sys.executable,
    }
    (run_dir / "argv.json").write_text(json.dumps(spec))
    shares = [str(Path(s).resolve()) for s in shares]
    for s in shares:
        if not Path(s).is_dir():
            raise UsageError(f"--share {s}: not a directory")
    guest_cmd = " ".join(shlex.quote(x) for x in
                         [sys.executable, "-m", "mmntrace.guest", str(run_dir)])
    cmd = [_vng(), "-r", str(kernel.image), "--cpus", str(cpus), "--memory", memory,
           "--rwdir", str(run_dir), "--cwd", str(REPO),
           # injected sleeps in atomic context log many BUG lines: keep them all
           "--append", "log_buf_len=8M"]
    if not _kvm_usable():
        cmd.append("--disable-kvm")
    if numa and cpus >= 2:
        total = _mem_mib(memory)
        half = total // 2
        cmd += ["--numa", f"{half}M,cpus=0-{cpus // 2 - 1}",
                "--numa", f"{total - half}M,cpus={cpus // 2}-{cpus - 1}",
                # one socket per node, or the guest warns that the topology is insane
                "--qemu-opts", f"-smp {cpus},sockets=2,cores={cpus // 2},threads=1"]
    for s in shares:
        cmd += ["--rwdir", s]
    if os.environ.get("MMNTRACE_LAB_CONSOLE") == "1":
        cmd.append("--verbose")     # the guest kernel's console on our stdout (debugging)
    cmd += ["--exec", guest_cmd]
    if verbose:
        print("lab:", " ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
    venv_bin = str(Path(_vng()).parent)
    penv = dict(os.environ)
    penv["PATH"] = venv_bin + os.pathsep + penv.get("PATH", "")
    t0 = time.monotonic()
    # The guest's output comes through pipes we copy, never QEMU's own stdout:
    # QEMU opens its file chardevs on /proc/self/fd/1 and /proc/self/fd/2 with
    # O_TRUNC, which emptied a log file our stdout was redirected to.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=penv, start_new_session=True)
    pumps = [threading.Thread(target=_pump, args=(src, dst), daemon=True)
             for src, dst in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
    for t in pumps:
        t.start()
    # QEMU runs in its own session: SIGTERM to us (e.g. from `timeout`) must
    # take the VM down too, not leave it running.
    old_term = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _print_kmsg_tail(run_dir / "kmsg.log")
        raise LabTimeout(f"the lab VM ({kernel.release or kernel.image}) did not finish within {timeout:.0f} s and was killed")
    except KeyboardInterrupt:
        _kill_group(proc)
        raise LabError("interrupted: the lab VM was stopped") from None
    finally:
        signal.signal(signal.SIGTERM, old_term)
        for t in pumps:
            t.join(timeout=10)
    wall = time.monotonic() - t0
    res_file = run_dir / "result.json"
    if not res_file.exists():
        _print_kmsg_tail(run_dir / "kmsg.log")
        raise LabVmDied(f"the lab VM ({kernel.release or kernel.image}) exited (status {proc.returncode}) "
                        f"before the command finished; see {run_dir}")
    res = json.loads(res_file.read_text())
    for line in res["dmesg_problems"]:
        print(f"lab: kernel log: {line}", file=sys.stderr)
    if res["dmesg_expected"]:
        print(f"lab: {len(res['dmesg_expected'])} expected BUG/WARNING line(s) in the kernel log "
              f"(declared by the command)", file=sys.stderr)
    rc = res["returncode"]
    if rc == 0 and res["dmesg_problems"]:
        rc = DMESG_EXIT
    return LabResult(rc, res["dmesg_problems"], res["dmesg_expected"], res.get("boot_s"), wall, run_dir)


def _print_kmsg_tail(path: Path, n: int = 40) -> None:
    """What the guest's kernel said last (mmntrace.guest copies it as it goes)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    print(f"lab: the guest kernel's last {min(n, len(lines))} log lines ({path}):", file=sys.stderr)
    for line in lines[-n:]:
        print(f"lab: | {line}", file=sys.stderr)


def _mem_mib(memory: str) -> int:
    m = re.fullmatch(r"(\d+)([MG]?)", memory.strip().upper())
    if not m:
        raise UsageError(f"--memory {memory}: use a size such as 2G or 1536M")
    n = int(m.group(1))
    return n * 1024 if m.group(2) == "G" else n


def _pump(src, dst) -> None:
    """Copy the VM's output as it comes (raw bytes, flushed)."""
    out = getattr(dst, "buffer", dst)
    for chunk in iter(lambda: src.read1(65536), b""):
        try:
            out.write(chunk)
            out.flush()
        except (OSError, ValueError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
