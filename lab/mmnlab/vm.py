"""The lab: boot a real kernel under QEMU (virtme-ng) and run one command in it.

The guest sees the host's root file system read-only, each ``share`` directory
writable at the same path, and a private run directory where the guest side
(:mod:`mmnlab.guest`) writes the command's exit status and the kernel log.
A guest that never writes its status died: that is a failure, never a pass.

Commands travel as an argument vector in a JSON file, never through a shell.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import platform
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

from mmntrace.errors import UsageError
from mmntrace.outpath import write_atomic

from .errors import LabError, LabTimeout, LabVmDied

REPO = Path(__file__).resolve().parents[2]     # the checkout: lab/mmnlab/vm.py
KMOD_DIR = REPO / "tests" / "kmod"

#: exit code when the command passed but the kernel log shows unexpected BUG:/WARNING: lines
DMESG_EXIT = 3


#: the arm64 lab (scripts/arm64_root.sh, `make arm64-root`): a Debian arm64 root
#: file system with its kernel, and that kernel's headers set up for a cross build
ARM64_DIR = REPO / "build" / "arm64"


def host_arch() -> str:
    """The Debian name of this machine's architecture (amd64, arm64)."""
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


@dataclasses.dataclass(frozen=True)
class Kernel:
    image: Path
    release: str | None  # None when the image name does not tell it
    arch: str = dataclasses.field(default_factory=host_arch)
    #: the guest's root file system; None: the host's own (read-only)
    root: Path | None = None

    @property
    def foreign(self) -> bool:
        """Booted under an emulator of another architecture, on its own root file system."""
        return self.arch != host_arch()

    @property
    def headers(self) -> Path | None:
        if self.release is None:
            return None
        if self.foreign:
            p = ARM64_DIR / "headers"          # build/arm64/headers (scripts/arm64_root.sh)
            return p if (p / "Makefile").exists() else None
        p = Path("/lib/modules") / self.release / "build"
        return p if p.is_dir() else None

    @property
    def python(self) -> str:
        """The Python the guest runs the lab's side with."""
        return "/usr/bin/python3" if self.foreign else sys.executable


@dataclasses.dataclass
class LabResult:
    returncode: int
    dmesg_problems: list[str]
    dmesg_expected: list[str]
    boot_s: float | None
    wall_s: float
    run_dir: Path | None    # None: removed after a clean run (see keep_run_dir_reason)


def _release_key(rel: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"[.\-+]", rel)]


def installed_kernels() -> list[Kernel]:
    """The host's kernels in /boot, and the arm64 lab's kernel where it is built."""
    out = []
    for img in sorted(glob.glob("/boot/vmlinuz-*")):
        out.append(Kernel(Path(img), Path(img).name[len("vmlinuz-"):]))
    root = ARM64_DIR / "root"
    if (ARM64_DIR / "root.stamp").exists() and host_arch() != "arm64":
        for img in sorted(glob.glob(str(root / "boot" / "vmlinuz-*"))):
            out.append(Kernel(Path(img), Path(img).name[len("vmlinuz-"):], arch="arm64", root=root))
    return out


_ARCHES = {"amd64", "arm64", "i386", "armmp", "armhf", "ppc64el", "s390x", "riscv64"}


def flavour(release: str) -> str:
    """The Debian flavour of a kernel release: ``rt`` for ``6.12.95+deb12-rt-amd64``
    and ``6.1.0-57-rt-amd64``, ``cloud`` for ``...-cloud-amd64``, ``""`` for the
    generic ``6.12.95+deb12-amd64``: the alphabetic words between the version
    and the architecture."""
    words = release.split("-")[1:]
    if words and words[-1] in _ARCHES:
        words = words[:-1]
    return "-".join(w for w in words if w.isalpha())


def resolve_kernel(spec: str, arch: str | None = None) -> Kernel:
    """``spec`` is an installed kernel's release, a version prefix with an
    optional flavour or architecture (``6.1``, ``6.12``, ``6.12-rt``,
    ``6.12-arm64``: the newest such kernel; ``6.12`` never picks a flavoured
    one such as PREEMPT_RT, nor one of another architecture), or an image path.
    ``arch`` (``--arch arm64``) is the same as ``-arm64`` after the version."""
    if arch is not None:
        if arch not in _ARCHES:
            raise UsageError(f"--arch {arch}: not a Debian architecture name (amd64, arm64, ...)")
        if arch != host_arch():
            spec = f"{spec}-{arch}"
    p = Path(spec)
    if "/" in spec or p.exists():
        if not p.is_file():
            raise UsageError(f"kernel image {spec} does not exist")
        rel = p.name[len("vmlinuz-"):] if p.name.startswith("vmlinuz-") else None
        return Kernel(p.resolve(), rel)
    m = re.fullmatch(r"(\d+(?:\.\d+)*)(?:-([a-z][a-z0-9]*))?", spec)
    series, flav = (m.group(1), m.group(2) or "") if m else (spec, None)

    want_arch = host_arch()
    if flav in _ARCHES:
        want_arch, flav = flav, ""

    def fits(k: Kernel) -> bool:
        if k.release == spec:
            return True
        if not (k.release.startswith(series + ".") or k.release.startswith(series + "-")):
            return False
        if k.arch != want_arch:
            return False
        return flav is None or flavour(k.release) == flav
    matches = [k for k in installed_kernels() if fits(k)]
    if not matches:
        have = ", ".join(k.release for k in installed_kernels()) or "none"
        hint = "run `make arm64-root`" if want_arch == "arm64" else "run `make setup`"
        raise UsageError(f"no installed kernel matches '{spec}' (installed: {have}); {hint}")
    return max(matches, key=lambda k: _release_key(k.release))


def build_test_module(kernel: Kernel, quiet: bool = True) -> Path | None:
    """Build tests/kmod for ``kernel`` against its own headers; returns the .ko or None."""
    if kernel.headers is None or not (KMOD_DIR / "mmnt_test.c").exists():
        return None
    ko = KMOD_DIR / "build" / kernel.release / "mmnt_test.ko"
    cmd = ["make", "-s", "-C", str(KMOD_DIR), f"KVER={kernel.release}"]
    if kernel.foreign:      # cross-built (gcc-aarch64-linux-gnu) against build/arm64/headers
        cmd += [f"KDIR={kernel.headers}", "ARCH=arm64", "CROSS_COMPILE=aarch64-linux-gnu-"]
    r = subprocess.run(cmd, capture_output=quiet, text=True)
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


def tcg_threads() -> str:
    """How QEMU's TCG runs the guest's vCPUs: ``single`` (one host thread, the
    default) or ``multi`` (a thread per vCPU, faster but racy on live kernel
    text patching), from ``MMNTRACE_LAB_TCG_THREAD``."""
    v = os.environ.get("MMNTRACE_LAB_TCG_THREAD", "single")
    if v not in ("single", "multi"):
        raise LabError(f"MMNTRACE_LAB_TCG_THREAD must be single or multi, not {v!r}")
    return v


def clock_options() -> list[str]:
    """Kernel options for the guest's clock, from ``MMNTRACE_LAB_CLOCK``:
    ``tsc`` (the default) or ``kernel`` (whatever the guest kernel picks).

    Under TCG a guest with more than one vCPU finds its TSCs "unsynchronized"
    and falls back to the HPET, so every clock read (``bpf_ktime_get_ns()``
    in each probe, ``ktime_get()`` all over the kernel) becomes an emulated
    MMIO read. QEMU derives every vCPU's TSC from one host clock, so they
    are in fact synchronized: the guest runs on the TSC, as real x86
    machines do and as the tracer's costs should be measured."""
    v = os.environ.get("MMNTRACE_LAB_CLOCK", "tsc")
    if v not in ("tsc", "kernel"):
        raise LabError(f"MMNTRACE_LAB_CLOCK must be tsc or kernel, not {v!r}")
    if v == "kernel" or platform.machine() not in ("x86_64", "i686"):
        return []
    return ["tsc=reliable", "clocksource=tsc"]


def _kvm_usable() -> bool:
    # /dev/kvm can exist yet refuse to run a guest (seen on this project's
    # machines: QEMU aborts setting MSR 0x10a), so acceleration is opt-in.
    return os.environ.get("MMNTRACE_LAB_KVM") == "1" and os.access("/dev/kvm", os.R_OK | os.W_OK)


#: mount tag of the second, cached, read-only export of the guest's root
ROOT_CACHE_TAG = "mmntroot"


def root_cache() -> str:
    """How the guest reads its root's programs and libraries, from
    ``MMNTRACE_LAB_ROOT_CACHE``: ``loose`` (the default) or ``none``.

    virtme-ng mounts the root over 9p without a cache: no page of a file
    outlives the last process that has it open, so every process re-reads
    what it loads through the emulated transport (measured in a 6.12 guest:
    ``cat libLLVM-14.so.1`` 17-30 s every time, ``import pandas, pyarrow``
    41-45 s every time; a 1-second ``mmntrace record`` 129-166 s). ``loose``
    exports the root a second time, read-only, and the guest mounts it with
    the page cache on under /usr and the checkout's .venv (nothing changes
    there while a guest runs), as a real machine's disk is cached: the same
    reads took 0.9-1.2 s and 16 s, the record 93-103 s."""
    v = os.environ.get("MMNTRACE_LAB_ROOT_CACHE", "loose")
    if v not in ("loose", "none"):
        raise LabError(f"MMNTRACE_LAB_ROOT_CACHE must be loose or none, not {v!r}")
    return v


def cached_paths(kernel: "Kernel") -> list[str]:
    """The guest's directories read through the cached root (:func:`root_cache`)."""
    if root_cache() == "none":
        return []
    # a foreign root has its own Python under /usr; here the checkout's venv too
    return ["/usr"] if kernel.foreign else ["/usr", str(REPO / ".venv")]


#: the guest writes this file just before it starts the command
STARTED = "started"
#: per-attempt records of one run: status, outcome, times (kept in the run directory)
ATTEMPTS = "attempts.json"
#: how long a guest may take to reach the command (a normal boot: 13-23 s)
BOOT_TIMEOUT = 150.0
#: the same for a guest of another architecture (arm64 under emulation: ~95 s
#: alone, past 150 s with a second guest and unit tests beside it)
BOOT_TIMEOUT_FOREIGN = 450.0
#: boots tried when a guest dies or hangs before the command starts
BOOT_ATTEMPTS = 3


@dataclasses.dataclass
class Attempt:
    """One boot of a lab run."""
    n: int
    outcome: str            # finished | died-early | hung-early | died | timeout | interrupted
    status: int | None      # virtme-ng's exit status (255: no status from the guest); None if killed
    wall_s: float
    started_s: float | None  # when the guest started the command, seconds after the boot began

    @property
    def early(self) -> bool:
        return self.outcome in ("died-early", "hung-early")


def _vng_cmd(kernel: Kernel, run_dir: Path, attempt: int, *, shares, cpus: int, memory: str,
             numa: bool) -> list[str]:
    guest = [kernel.python, "-m", "mmnlab.guest", str(run_dir)]
    if kernel.foreign:      # its own Python: the lab and mmntrace from this checkout
        guest = ["env", f"PYTHONPATH={REPO / 'lab'}:{REPO}"] + guest
    guest_cmd = " ".join(shlex.quote(x) for x in guest)
    console = os.environ.get("MMNTRACE_LAB_CONSOLE") == "1"
    kopts = ["log_buf_len=8M",     # injected sleeps in atomic context log many BUG lines: keep them all
             # A guest whose kernel wedges (a CPU stuck in the kernel, or a task
             # in D state for minutes) panics with its stacks on the console
             # instead of sitting silent until --timeout: `mmntrace lab` then
             # reports a died guest and lab_suite.py can resume in a fresh one.
             "softlockup_panic=1", "hung_task_panic=1", "sysctl.kernel.hung_task_timeout_secs=240"]
    if kernel.arch == "amd64":
        kopts += clock_options()
    qopts = []
    if not console:
        # The kernel console also goes to a virtio console (hvc0), into
        # RUN_DIR/attempt-N.console (virtme-ng sends ttyS0 to /dev/null, and
        # the 8250 driver drives one console only). loglevel=1 keeps it
        # silent until an Oops or a panic, which raise the console level
        # themselves (console_verbose()): a guest that dies leaves its last
        # words there, without slowing down the ones that live.
        qopts.append(f"-chardev file,id=mmntcon,path={run_dir / f'attempt-{attempt}.console'} "
                     f"-device virtconsole,chardev=mmntcon")
        kopts += ["console=hvc0", "loglevel=1"]
    def rw(d) -> str:
        """A writable directory at its own path in the guest (its own root: GUEST=HOST)."""
        return f"{d}={d}" if kernel.foreign else str(d)
    cwd = kernel.root / str(REPO).lstrip("/") if kernel.foreign else REPO
    cmd = [_vng(), "-r", str(kernel.image), "--cpus", str(cpus), "--memory", memory,
           "--rwdir", rw(run_dir), "--cwd", str(cwd), "--append", " ".join(kopts)]
    if kernel.foreign:
        # QEMU's `virt` machine under TCG, on the arm64 root file system; the
        # checkout and the shares are mounted at their own paths there too.
        # virtualization=on and GICv3: KVM runs inside the guest (/dev/kvm, a
        # real secondary MMU); -cpu max has hardware dirty-bit management.
        for d in [REPO, run_dir, *shares]:
            (kernel.root / str(d).lstrip("/")).mkdir(parents=True, exist_ok=True)
        cmd += ["--arch", kernel.arch, "--root", str(kernel.root), "--rwdir", rw(REPO)]
        qopts.append("-machine virt,virtualization=on,gic-version=3 -cpu max")
    if console:
        cmd.append("--verbose")     # the guest kernel's whole console on our stderr (debugging)
    if not _kvm_usable() or kernel.foreign:
        cmd.append("--disable-kvm")
    if not _kvm_usable() or kernel.foreign:
        # One host thread runs every vCPU in turn: QEMU's multi-threaded TCG
        # lets one vCPU run kernel text that another is patching (text_poke_bp,
        # static calls), and guests died of it (docs/reliability.md). Measured
        # cost: the 6.1 scenario + record tests took 433 s instead of 377 s.
        qopts.append(f"-accel tcg,thread={tcg_threads()}")
    if numa and cpus >= 2:
        total = _mem_mib(memory)
        half = total // 2
        cmd += ["--numa", f"{half}M,cpus=0-{cpus // 2 - 1}",
                "--numa", f"{total - half}M,cpus={cpus // 2}-{cpus - 1}"]
        # one socket per node, or the guest warns that the topology is insane
        qopts.append(f"-smp {cpus},sockets=2,cores={cpus // 2},threads=1")
    for s in shares:
        cmd += ["--rwdir", rw(s)]
    if cached_paths(kernel):
        src = kernel.root if kernel.foreign else "/"
        qopts.append(f"-fsdev local,id={ROOT_CACHE_TAG},path={src},security_model=none,readonly=on,"
                     f"multidevs=remap -device virtio-9p-pci,fsdev={ROOT_CACHE_TAG},mount_tag={ROOT_CACHE_TAG}")
    for q in qopts:
        cmd.append(f"--qemu-opts={q}")     # "=": a value that starts with "-c" is not vng's -c
    cmd += ["--exec", guest_cmd]
    return cmd


def keep_run_dir_reason(returncode: int | None, attempts: list[Attempt], keep: bool) -> str | None:
    """Why a run directory stays after ``mmntrace lab`` (None: remove it).

    It holds what explains a failure (each boot's output and console, the
    guest's kernel log, attempts.json), so it stays when asked (``keep``),
    when the guest did not finish (``returncode`` None: it died, timed out or
    was interrupted), when a boot was lost before a good one (the record of
    the emulator's losses, docs/reliability.md), and when the command failed
    (a non-zero status, 3 for unexpected BUG/WARNING lines included). A clean
    run leaves nothing in /tmp.
    """
    if keep:
        return "--keep-run-dir"
    if returncode is None:
        return "the guest did not finish"
    lost = sum(1 for a in attempts if a.outcome != "finished")
    if lost:
        return f"{lost} boot(s) lost before the command"
    if returncode != 0:
        return f"exit {returncode}"
    return None


def _finish_run_dir(run_dir: Path, why: str | None) -> Path | None:
    """Keep the run directory, saying where on one line, or remove it; returns it if kept."""
    if why is not None:
        print(f"lab: run directory kept ({why}): {run_dir}", file=sys.stderr, flush=True)
        return run_dir
    try:
        shutil.rmtree(run_dir)
    except OSError as e:
        print(f"lab: could not remove the run directory {run_dir}: {e.strerror or e}", file=sys.stderr, flush=True)
        return run_dir
    return None


def run(kernel: Kernel, argv: list[str], *, shares=(), cpus: int = 2, memory: str = "2G",
        numa: bool = True, timeout: float = 1200, cwd: str | None = None,
        env: dict | None = None, build_module: bool = True, verbose: bool = False,
        boot_timeout: float | None = None, boot_attempts: int = BOOT_ATTEMPTS,
        keep_run_dir: bool = False) -> LabResult:
    """Boot ``kernel``, run ``argv`` in it, return its exit status and the kernel-log verdict.

    A guest that dies, or does not reach the command within ``boot_timeout``
    seconds, before the command started is booted again, up to
    ``boot_attempts`` boots in all (the emulator loses a few guests in early
    boot; see docs/reliability.md). Once the command has started, a death is
    a failure. Raises :class:`LabTimeout` or :class:`LabVmDied` when the
    guest did not finish (the run directory is kept, and named).

    The run directory (/tmp/mmntrace-lab-*) is removed after a clean run
    unless ``keep_run_dir``; otherwise ``LabResult.run_dir`` names it
    (:func:`keep_run_dir_reason`). Nothing a caller reads after the run is
    in it: commands write their results to their ``shares``.
    """
    if not argv:
        raise UsageError("no command given to run in the lab")
    if boot_timeout is None:
        boot_timeout = BOOT_TIMEOUT_FOREIGN if kernel.foreign else BOOT_TIMEOUT
    if boot_attempts < 1:
        raise UsageError("--boot-attempts must be at least 1")
    shares = [str(Path(s).resolve()) for s in shares]
    for s in shares:
        if not Path(s).is_dir():
            raise UsageError(f"--share {s}: not a directory")
    if build_module:
        build_test_module(kernel)
    run_dir = Path(tempfile.mkdtemp(prefix="mmntrace-lab-"))
    os.chmod(run_dir, 0o755)
    spec = {
        "argv": list(argv),
        "cwd": cwd or os.getcwd(),
        "env": env or {},
        "kmod_dir": str(KMOD_DIR / "build"),
        "python": kernel.python,
        # fault injection for the lab's own tests: what attempt N does before
        # the command ("panic", "hang"), from MMNTRACE_LAB_FAULTS=panic,hang,...
        "faults": [f for f in os.environ.get("MMNTRACE_LAB_FAULTS", "").split(",") if f],
        "tcg_thread": None if _kvm_usable() else tcg_threads(),
        # mounted from the cached export of the root (root_cache())
        "cached_paths": cached_paths(kernel),
        "root_cache_tag": ROOT_CACHE_TAG,
    }
    name = kernel.release or str(kernel.image)
    attempts: list[Attempt] = []
    t_first = time.monotonic()
    for n in range(1, boot_attempts + 1):
        spec["attempt"] = n
        # 0644, as the lab's other files: the guest reads them through the share,
        # and they hold no address of this machine's kernel
        write_atomic(run_dir / "argv.json", json.dumps(spec).encode(), mode=0o644, hand_over=False)
        cmd = _vng_cmd(kernel, run_dir, n, shares=shares, cpus=cpus, memory=memory, numa=numa)
        if verbose:
            print("lab:", " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
        try:
            att = _boot_once(cmd, run_dir, n, timeout=timeout, boot_timeout=boot_timeout)
        except KeyboardInterrupt:
            _note_attempt(run_dir, attempts, Attempt(n, "interrupted", None, 0.0, None))
            raise LabError(f"interrupted: the lab VM was stopped; see {run_dir}") from None
        _note_attempt(run_dir, attempts, att)
        if att.outcome == "timeout":
            _print_last_words(run_dir / "kmsg.log", run_dir / f"attempt-{n}.console")
            raise LabTimeout(f"the lab VM ({name}) did not finish within {timeout:.0f} s and was killed; "
                             f"see {run_dir}")
        if not att.early:
            break
        what = (f"exited (status {att.status})" if att.outcome == "died-early"
                else f"did not reach the command within {boot_timeout:.0f} s and was killed")
        _keep_attempt_files(run_dir, n)
        if n < boot_attempts:
            print(f"lab: the {name} guest {what} before the command started; booting again "
                  f"(attempt {n + 1} of {boot_attempts}; kept in {run_dir})", file=sys.stderr, flush=True)
    wall = time.monotonic() - t_first
    res_file = run_dir / "result.json"
    if not res_file.exists():
        last = attempts[-1]
        if last.early:
            _print_last_words(run_dir / f"attempt-{last.n}.kmsg.log", run_dir / f"attempt-{last.n}.console")
            raise LabVmDied(f"the lab VM ({name}) died or hung before the command started in all "
                            f"{len(attempts)} boot(s); see {run_dir} (attempt-N.stderr, attempt-N.kmsg.log)")
        _print_last_words(run_dir / "kmsg.log", run_dir / f"attempt-{last.n}.console")
        raise LabVmDied(f"the lab VM ({name}) exited (status {last.status}) "
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
    kept = _finish_run_dir(run_dir, keep_run_dir_reason(rc, attempts, keep_run_dir))
    return LabResult(rc, res["dmesg_problems"], res["dmesg_expected"], res.get("boot_s"), wall, kept)


def _boot_once(cmd: list[str], run_dir: Path, n: int, *, timeout: float, boot_timeout: float) -> Attempt:
    """Boot the VM once and wait for it; KeyboardInterrupt (or SIGTERM) kills it."""
    venv_bin = str(Path(cmd[0]).parent)
    penv = dict(os.environ)
    penv["PATH"] = venv_bin + os.pathsep + penv.get("PATH", "")
    started = run_dir / STARTED
    t0 = time.monotonic()
    # The guest's output comes through pipes we copy, never QEMU's own stdout:
    # QEMU opens its file chardevs on /proc/self/fd/1 and /proc/self/fd/2 with
    # O_TRUNC, which emptied a log file our stdout was redirected to. Each
    # stream is also kept, whole, in the run directory.
    logs = [open(run_dir / f"attempt-{n}.{s}", "wb") for s in ("stdout", "stderr")]
    # QEMU runs in its own session (so that a terminal's Ctrl-C reaches us,
    # and we stop it in order); a guard process kills that session if we end
    # without saying so, even by SIGKILL.
    guard = _Guard()
    # SIGTERM to us (e.g. from `timeout`) must take the VM down too: held from
    # before the VM starts (one that came while it was starting is acted on below)
    term: list[int] = []
    old_term = signal.signal(signal.SIGTERM, lambda *_: term.append(1))
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=penv, start_new_session=True)
    except BaseException:
        signal.signal(signal.SIGTERM, old_term)
        raise
    guard.watch(proc.pid)
    pumps = [threading.Thread(target=_pump, args=(src, dst, log), daemon=True)
             for src, dst, log in ((proc.stdout, sys.stdout, logs[0]), (proc.stderr, sys.stderr, logs[1]))]
    for t in pumps:
        t.start()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    started_s = None
    outcome = None
    try:
        if term:
            raise KeyboardInterrupt
        while True:
            try:
                proc.wait(timeout=0.25)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic() - t0
            if started_s is None and started.exists():
                started_s = now
            if started_s is None and now > boot_timeout:
                outcome = "hung-early"
                _kill_group(proc)
                break
            if now > timeout:
                outcome = "timeout"
                _kill_group(proc)
                break
    except KeyboardInterrupt:
        _kill_group(proc)
        raise
    finally:
        signal.signal(signal.SIGTERM, old_term)
        guard.release()
        for t in pumps:
            t.join(timeout=10)
        for f in logs:
            f.close()
    if started_s is None and started.exists():
        started_s = time.monotonic() - t0
    if outcome is None:
        if (run_dir / "result.json").exists():
            outcome = "finished"
        else:
            outcome = "died" if started_s is not None else "died-early"
    status = proc.returncode if outcome in ("finished", "died", "died-early") else None
    return Attempt(n, outcome, status, round(time.monotonic() - t0, 2),
                   None if started_s is None else round(started_s, 2))


def _note_attempt(run_dir: Path, attempts: list[Attempt], att: Attempt) -> None:
    attempts.append(att)
    write_atomic(run_dir / ATTEMPTS, json.dumps([dataclasses.asdict(a) for a in attempts], indent=1).encode(),
                 mode=0o644, hand_over=False)


def _keep_attempt_files(run_dir: Path, n: int) -> None:
    """Set aside what the guest of a lost boot wrote, before the next boot writes its own."""
    for name in ("kmsg.log", "guest.json", STARTED):
        p = run_dir / name
        if p.exists():
            p.rename(run_dir / f"attempt-{n}.{name}")


class _Guard:
    """A process that kills the VM's session if this process ends without releasing it.

    QEMU runs in a session of its own, so nothing else takes it down when we
    die: without this, a SIGKILLed `mmntrace lab` (a CI time limit,
    ``subprocess.run(timeout=...)``) left the VM running for good. The guard
    reads a pipe only we hold the write end of: at EOF (we are gone) it
    kills the session; after ``release()`` it exits quietly.
    """

    def __init__(self):
        r, self._w = os.pipe()          # both non-inheritable: the VM never holds the write end
        self._p = subprocess.Popen([sys.executable, "-c", _GUARD_CODE], stdin=r, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(r)

    def watch(self, pgid: int) -> None:
        os.write(self._w, f"{pgid}\n".encode())

    def release(self) -> None:
        try:
            os.write(self._w, b"done\n")
            os.close(self._w)
        except OSError:
            pass
        try:
            self._p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._p.kill()


_GUARD_CODE = """
import os, signal, sys, time
data = b""
while True:
    chunk = os.read(0, 4096)
    if not chunk:
        break
    data += chunk
lines = data.decode().split()
if lines and lines[-1] != "done" and lines[0].isdigit():
    pgid = int(lines[0])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        time.sleep(3)
"""


def _print_tail(path: Path, what: str, mark: str, n: int, only_if: str | None = None) -> None:
    """The last ``n`` lines of a file the guest left, each prefixed ``lab: MARK``
    (only when a line matches ``only_if``, if given)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return
    if only_if and not any(re.search(only_if, ln) for ln in lines):
        return
    print(f"lab: the guest {what}'s last {min(n, len(lines))} lines ({path}):", file=sys.stderr)
    for line in lines[-n:]:
        print(f"lab: {mark} {line}", file=sys.stderr)


def _print_last_words(kmsg: Path, console: Path) -> None:
    """What a dead or killed guest said last: its kernel log (mmnlab.guest
    copies it as it goes), and its console when that shows an Oops or a panic
    (it is silent otherwise)."""
    _print_tail(kmsg, "kernel log", "|", 40)
    _print_tail(console, "console", "#", 60, only_if=r"Oops|panic|BUG:|RIP:")


def _mem_mib(memory: str) -> int:
    m = re.fullmatch(r"(\d+)([MG]?)", memory.strip().upper())
    if not m:
        raise UsageError(f"--memory {memory}: use a size such as 2G or 1536M")
    n = int(m.group(1))
    return n * 1024 if m.group(2) == "G" else n


def _pump(src, dst, log=None) -> None:
    """Copy the VM's output as it comes (raw bytes, flushed), and into ``log``."""
    out = getattr(dst, "buffer", dst)
    for chunk in iter(lambda: src.read1(65536), b""):
        for f in (out, log):
            if f is None:
                continue
            try:
                f.write(chunk)
                f.flush()
            except (OSError, ValueError):
                pass


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop the VM's session: SIGTERM, then SIGKILL for whatever is left of it."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=5)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
