"""Issue 7 in the lab: faults while recording, on real kernels.

Three recorder sessions per kernel, each ground-truthed by the test module's
counts as `notifier_bench` reports them (its rounds run only once the
recorder has attached the module's callbacks):

- kill -9 after a module unload/reload: the reloaded module's callbacks are
  re-probed (counts exact again), the old ones are listed as detached; the
  recording stays readable and says it was cut short; --redact kept no
  address; nothing of ours stays attached.
- an event storm into a one-page buffer: records plus counted drops equal the
  module's callbacks exactly, the recorder warns, SIGTERM ends it with exit 0
  and complete metadata, and nothing stays attached.
- a full disk (a 4 MiB tmpfs, filled up once the first segment is on it): exit 22 with one sentence; what was written
  is readable; nothing stays attached.
"""

import contextlib
import errno
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmntrace import kernel, render, report
from mmntrace.tracer import stale_kprobe_events
from mmntrace.recording import Recording
from groundtruth import Recorder

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "build" / "bench" / "notifier_bench"
MOD_CB = ("mmnt_invalidate_range_start", "mmnt_invalidate_range_end", "mmnt_secondary_tlb")
OUR_PROGS = ("hk_entry", "hk_return", "cb_entry", "cb_return", "ms_entry", "reg_", "calib_entry", "kfunc__",
             "kretfunc__", "tracepoint__sch")


KO = REPO / "tests" / "kmod" / "build" / os.uname().release / "mmnt_test.ko"


def _ensure_module():
    if not os.path.exists("/dev/mmnt_test") and KO.exists():
        subprocess.run(["insmod", str(KO)], check=False)
        deadline = time.monotonic() + 30
        while not os.path.exists("/dev/mmnt_test") and time.monotonic() < deadline:
            time.sleep(0.1)


_RECORDERS = []
_BENCHES = []
_KILL9_LEFT: list[str] = []     # stale kprobe events the kill -9 test left, for the next recorder to remove


def _recorder(*a, **kw) -> Recorder:
    r = Recorder(*a, **kw)
    _RECORDERS.append(r)
    return r


@pytest.fixture(autouse=True)
def _need_module_and_bench():
    _ensure_module()
    if not os.path.exists("/dev/mmnt_test"):
        pytest.skip("the test module is not loaded")
    if not BENCH.exists():
        pytest.skip(f"{BENCH} is missing (make build/bench/notifier_bench)")
    yield
    for r in _RECORDERS:     # a failed test must not leave its recorder attached for the next one
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()
    _RECORDERS.clear()
    for b in _BENCHES:       # nor a subscribed notifier_bench waiting for its go file
        if b.p.poll() is None:
            b.p.kill()
            b.p.wait()
    _BENCHES.clear()
    _ensure_module()     # a failed reload test must not take the module from the tests after it


class Bench:
    """notifier_bench subscribed to the module (or, with ``kvm`` and not ``module``, to KVM), held until go()."""

    def __init__(self, tmp: Path, rounds: int, pages: int = 16, kvm: bool = False, module: bool = True,
                 round_us: int = 0):
        self.go_file = tmp / f"go-{time.monotonic_ns()}"
        self.p = subprocess.Popen([str(BENCH), str(rounds), str(pages), *([] if kvm else ["--no-kvm"]),
                                   *([] if module else ["--no-module"]), "--go-file", str(self.go_file),
                                   "--round-us", str(round_us)], stdout=subprocess.PIPE, text=True)
        _BENCHES.append(self)
        deadline = time.monotonic() + 60
        while not Path(str(self.go_file) + ".subscribed").exists():
            assert self.p.poll() is None and time.monotonic() < deadline, "notifier_bench did not subscribe"
            time.sleep(0.05)

    def go(self, timeout=600) -> dict:
        self.go_file.write_text("")
        out, _ = self.p.communicate(timeout=timeout)
        assert self.p.returncode == 0
        return json.loads(out)


def _ours_attached() -> list[str]:
    """Armed probes or loaded programs of ours still in the kernel (kprobes list + bpftool).
    A kretprobe event that a killed process could not remove stays defined but
    [DISABLED] with no program; the next recorder removes it (see _stale_events)."""
    left = []
    try:
        kp = Path("/sys/kernel/debug/kprobes/list").read_text()
        left += [ln for ln in kp.splitlines() if "[DISABLED]" not in ln
                 and any(s in ln for s in ("__mmu_notifier", "mmnt_", "mutex_lock", "getppid"))]
    except OSError:
        pass
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=60)
    for p in json.loads(out.stdout or "[]"):
        if str(p.get("name", "")).startswith(OUR_PROGS):
            left.append(f"prog {p.get('id')} {p.get('name')}")
    return left


def _stale_events() -> list[str]:
    """kprobe_events definitions of bcc processes that no longer exist."""
    return stale_kprobe_events()[1]


def _assert_nothing_left():
    deadline = time.monotonic() + 20      # programs are freed after an RCU grace period
    while True:
        left = _ours_attached()
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert left == [], left


def _untimed_in_hooks(meta) -> int:
    """The module's calls through hooks counted untimed (metadata "untimed"):
    not its release, which MMNT_IOC_UNREGISTER's mmu_notifier_unregister()
    makes outside any hook (counted untimed too when it came first)."""
    return sum(u["count"] for u in meta.get("untimed", [])
               if str(u["callback"]).startswith("mmnt_") and not str(u["callback"]).startswith("mmnt_release"))


def _module_cbs(ev, pid, release=False):
    """The module's callbacks in this process (``pid`` None: in any; change_pte too,
    where the kernel has it); its release comes after the rounds, when
    notifier_bench unsubscribes."""
    cb = ev[ev["kind"] == "callback"]
    if pid is not None:
        cb = cb[cb["pid"] == pid]
    name = cb["callback"].astype(str)
    return cb[name.str.startswith("mmnt_") & (release | ~name.str.startswith("mmnt_release"))]


def _in_window(cbs, res, window="window_ns"):
    """The callbacks made between notifier_bench's two reads of the module's counts
    (its window_ns, the kernel's monotonic clock, as the records' ts_ns): what its
    hook_calls count. Outside them the process may have more of its own: automatic
    NUMA balancing migrates its pages in its context (try_to_migrate_one) while it
    waits for the go file, and the tracer records those too (6.12 and 6.1 guests
    have two nodes: 10 and 49 such calls of a process held 40 s). ``window``:
    another pair of its times (sub_window_ns)."""
    lo, hi = res[window]
    return cbs[(cbs["ts_ns"] >= lo) & (cbs["ts_ns"] <= hi)]


def _in_subscription(ev, res):
    """The module's callbacks (its release left out) from notifier_bench's open of
    the device to its read of the counts after unsubscribing (sub_window_ns), in
    any process: what its sub_calls count, when it is the module's only subscriber."""
    return _in_window(_module_cbs(ev, None), res, "sub_window_ns")


def _reload_module():
    """rmmod, insmod, and the device back: what a user does, without a look at the recorder."""
    subprocess.run(["rmmod", "mmnt_test"], check=True)
    subprocess.run(["insmod", str(KO)], check=True)
    deadline = time.monotonic() + 30
    while not os.path.exists("/dev/mmnt_test"):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_module_reload_then_kill9_redacted(tmp_path):
    """As a user would: the subscriber exists, the recorder starts (its
    --ready-file: the sweep probed the callbacks); the module is unloaded and
    loaded again, and a new subscriber registers and invalidates at once,
    with no wait for the recorder; then kill -9.

    A reload may put the module where it was: the recorder used to notice
    only by a check every 0.5 s, and the BPF side still took the ops table
    for one already probed, so the new subscriber's first calls (532 on 6.1)
    were neither recorded nor counted untimed. Every call is now one or the
    other (a module load starts a new generation of what the BPF side has
    seen: bpf/mmntrace.bpf.c module_loaded())."""
    b1 = Bench(tmp_path, rounds=5)
    rec = _recorder(tmp_path / "rec", "--backend", "kprobe", "--redact", "--comm", "notifier_bench")
    r1 = b1.go()
    _reload_module()
    b2 = Bench(tmp_path, rounds=7)
    r2 = b2.go()
    # what the recorder took in reaches the disk (segments and metadata every 2 s;
    # attaching the reloaded module's callbacks and reloading kallsyms take seconds
    # under TCG): b1's calls, the b2 calls it recorded, and in the metadata those it
    # counted untimed. The metadata may be ahead of the segments (a burst's records
    # become segments once it is over): b1's are waited for too.
    deadline = time.monotonic() + 90
    while True:
        time.sleep(2)
        try:
            live = Recording(tmp_path / "rec")
            ev = live.events()
            got1 = len(_in_window(_module_cbs(ev, b1.p.pid), r1))
            got2 = len(_in_subscription(ev, r2))
            untimed = _untimed_in_hooks(live.meta)
        except Exception:            # a segment being replaced as we read
            got1 = got2 = untimed = -1
        if (got1 >= r1["hook_calls"] and got2 + untimed >= r2["sub_calls"]) or time.monotonic() > deadline:
            break
    time.sleep(2)            # one more flush
    rec.proc.kill()          # kill -9: no flush, no final metadata
    rec.proc.wait()
    rec._log.close()
    _assert_nothing_left()
    _KILL9_LEFT[:] = _stale_events()    # disabled kretprobe definitions: the next recorder removes them
    print(f"kill -9 left {len(_KILL9_LEFT)} disabled kretprobe definitions")
    r = Recording(tmp_path / "rec")
    assert not r.complete
    rep = report.build(r)
    assert "cut short" in render.text(rep)
    ev = r.events()
    # the old callbacks are listed as detached, the reloaded ones probed once each
    att = r.meta["attached"]
    for cb in MOD_CB:
        assert sum(1 for x in att if x["symbol"] == cb and x["status"] == "attached") == 1, (cb, att)
    assert any(x["symbol"] == MOD_CB[0] and x["status"] == "detached: module unloaded" for x in att), att
    assert not [x for x in att if x["symbol"] in MOD_CB and x["status"] not in ("attached", "detached: module unloaded")]
    assert [x["status"] for x in att if x["symbol"] == "module:module_load"] == ["attached"], att
    # counts exact before and after the reload (everything reached the disk: we waited);
    # after it, what came before the new probes is counted untimed (metadata of the
    # last segment flush: a killed recorder leaves that)
    b1_all = _module_cbs(ev, b1.p.pid)
    assert len(_in_window(b1_all, r1)) == r1["hook_calls"] > 0, (len(b1_all), r1)
    # b2's calls whether in its rounds or not: untimed calls have no time, so one
    # made outside its rounds before the new probes (say a NUMA balancing scan in
    # its context) is counted with them (a CI run on 6.1: 556 untimed, 532 in the rounds)
    untimed = _untimed_in_hooks(r.meta)
    b2_got = len(_in_subscription(ev, r2))
    assert b2_got + untimed == r2["sub_calls"] >= r2["hook_calls"] > 0, (b2_got, untimed, r2, r.meta["drops"])
    print(f"after the reload: {b2_got} calls timed, {untimed} untimed, of {r2['sub_calls']}")
    # --redact: symbols kept, raw addresses gone
    assert (ev[["mm", "start", "end", "func"]] == 0).all().all()
    assert all(u["func"] == 0 for u in r.meta.get("untimed", []))
    assert ev["callback"].dropna().astype(str).str.startswith(MOD_CB).any()


@pytest.mark.one_kernel
def test_event_storm_drops_are_exact_then_sigterm(tmp_path):
    b = Bench(tmp_path, rounds=400, pages=64)      # subscribed before the recorder: --ready-file covers it
    rec = _recorder(tmp_path / "rec", "--buffer-pages", "1", "--comm", "notifier_bench")
    # this recorder's start removed what the kill -9 above left defined
    assert _stale_events() == []
    meta = json.loads((tmp_path / "rec" / "metadata.json").read_text())
    assert meta["stale_kprobes_removed"] >= len(_KILL9_LEFT)
    t0 = time.monotonic()
    res = b.go(timeout=900)
    took = time.monotonic() - t0
    rec.proc.send_signal(signal.SIGTERM)
    assert rec.proc.wait(timeout=300) == 0, rec.log.read_text()[-2000:]
    rec._log.close()
    _assert_nothing_left()
    r = Recording(tmp_path / "rec")
    assert r.complete
    ev = r.events()
    drops = r.meta["drops"]
    # every callback of the module (the rounds, plus the release of MMNT_IOC_UNREGISTER)
    # is either in the recording or counted as dropped: exact, never silent
    cbs = _module_cbs(ev, b.p.pid, release=True)
    assert not ev.duplicated(subset=["kind", "cpu", "seq"]).any()     # nothing read twice
    assert drops["callback"] > 0, "the storm did not overflow a one-page buffer"
    assert drops["kretprobe_missed"] == 0 and drops["prog_missed"] == 0
    # Alone on an idle guest this is exact (6.12: 80,400 = 65,354 + 15,047 - 1 release; 6.1:
    # 107,227 = 59,353 + 47,875 - 1). Late in a full suite the guest reclaims memory, and
    # direct reclaim in this task's context calls the module's callbacks for other
    # processes' mms (30 of 107,247 once); a dropped record has no mm to tell them apart.
    # So: nothing of this mm is lost silently (recorded + drops >= calls), nothing of it
    # is counted twice (recorded <= calls), and the excess is the other mms' traffic.
    mm = cbs["mm"].mode()[0]
    mine, others = cbs[cbs["mm"] == mm], cbs[cbs["mm"] != mm]
    expected = res["hook_calls"] + 1
    assert len(mine) <= expected <= len(mine) + drops["callback"]
    excess = len(cbs) + drops["callback"] - expected
    assert excess >= len(others) and excess <= max(100, 0.005 * expected), (excess, len(others))
    assert "records were dropped" in rec.log.read_text()          # the overhead guard said so
    print(f"storm: {res['hook_calls']} module calls in {took:.1f} s, {len(cbs)} recorded, "
          f"{drops['callback']} callback records dropped")


@pytest.mark.one_kernel
def test_disk_full_stops_with_one_sentence(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    # room for the first segments, then filled (on 6.12 it was at times full
    # before the filler went in, at 4 and at 32 MiB; cause not found yet: the
    # size before the filler is printed, and full is full either way)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    try:
        b = Bench(tmp_path, rounds=200, pages=16)      # subscribed before the recorder: --ready-file covers it
        rec = _recorder(mnt / "rec", "--comm", "notifier_bench", side=tmp_path)   # log + ready file off the tmpfs
        b.go(timeout=600)
        deadline = time.monotonic() + 60     # a segment with these events is on disk (flushed every 2 s)
        while not list((mnt / "rec").glob("events-*.parquet")):
            assert rec.proc.poll() is None and time.monotonic() < deadline, "no segment was written"
            time.sleep(0.2)
        # then the file system fills up under the running recorder (seen on 6.12:
        # already full by the time the filler was opened; full either way)
        print("before the filler:", shutil.disk_usage(mnt), sorted((p.name, p.stat().st_size)
                                                                     for p in (mnt / "rec").iterdir()))
        try:
            with open(mnt / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        try:            # the file system now refuses what the recorder writes next
            with open(mnt / "probe", "wb") as f:
                f.write(b"\0" * 65536)
                f.flush()
            raise AssertionError(f"the file system still takes writes: {shutil.disk_usage(mnt)}")
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        Bench(tmp_path, rounds=50, pages=16).go(timeout=600)   # more events for the next segment
        rc = rec.proc.wait(timeout=120)     # it stops by itself at its next flush
        rec._log.close()
        log = rec.log.read_text()
        assert rc == 22, log[-2000:]
        msg = [ln for ln in log.splitlines() if ln.startswith("mmntrace:") and not ln.startswith("mmntrace: warning")]
        assert len(msg) == 1 and "is full" in msg[0] and "Traceback" not in log, log[-2000:]
        _assert_nothing_left()
        r = Recording(mnt / "rec")
        assert not r.complete and r.meta["events"] > 0
        assert len(r.events()) >= r.meta["events"]     # a segment may be in before its metadata
        out = subprocess.run([sys.executable, "-m", "mmntrace.cli", "report", str(mnt / "rec")],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "cut short" in out.stdout
        assert not [f for f in (mnt / "rec").iterdir() if f.name.startswith(".")]   # no partial files
        for f in ("filler", "probe"):
            if (mnt / f).exists():
                os.unlink(mnt / f)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


#: KVM's calls fill a stopped recorder's buffer (_stopped_with_a_full_buffer)
needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="no /dev/kvm in this guest")


@contextlib.contextmanager
def _stopped_with_a_full_buffer(rec):
    """The recorder stopped (SIGSTOP, as Ctrl-Z does) and its buffer surely full:
    KVM's calls (notifier_bench, about 10,000 records) fill the 64 pages (2,340
    records) it was given; the body runs then; SIGCONT however it ends."""
    rec.proc.send_signal(signal.SIGSTOP)
    try:
        p = subprocess.run([str(BENCH), "100", "16", "--no-module"], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr
        yield
    finally:
        rec.proc.send_signal(signal.SIGCONT)


def _invalidator():
    """A fresh anonymous mapping of this process, and a function that invalidates it
    ``times`` times, ``pause_s`` apart: a write fault, then MADV_DONTNEED (a range
    start and end, an interval notifier's invalidation)."""
    from mmnlab import workload as W
    addr, length = W.mmap_anon(16 * W.PAGE), 16 * W.PAGE

    def invalidate(times: int = 1, pause_s: float = 0.0) -> None:
        for _ in range(times):
            W.touch(addr, W.PAGE)
            W.libc.madvise(addr, length, W.MADV_DONTNEED)
            time.sleep(pause_s)
    return addr, length, invalidate


def _recording_that_lost_ops_records(rec, path) -> Recording:
    """Stop the recorder and read its recording, which lost ops-table records to
    the full buffer (metadata ops_records_lost, among the drops)."""
    assert rec.stop() == 0, rec.log.read_text()[-2000:]
    r = Recording(path)
    assert r.meta["ops_records_lost"] > 0 and r.meta["drops"]["ops"] >= r.meta["ops_records_lost"], r.meta["drops"]
    return r


@needs_kvm
def test_subscriber_registered_into_a_full_buffer_is_probed_all_the_same(tmp_path):
    """A subscriber whose ops-table records find the buffer full is reported
    again once there is room: its callbacks get probes, and a later process's
    calls are all timed, as the module counts them; the lost records are counted
    (metadata ops_records_lost). The buffer is surely full: the recorder is
    stopped (SIGSTOP, as Ctrl-Z does) while KVM's calls fill it, and the module
    is subscribed then. Before, its tables stayed marked as seen: the module's
    callbacks were never probed, nor their calls counted untimed, for the rest
    of the session, while the report said only "N dropped"."""
    # 64 pages: KVM's calls fill them, the paced rounds at the end do not
    rec = _recorder(tmp_path / "rec", "--buffer-pages", "64", "--comm", "notifier_bench")
    mod_cb = lambda att: [a for a in att if a["kind"] == "callback" and str(a["symbol"]).startswith("mmnt_")]  # noqa: E731
    assert mod_cb(rec.first_ready) == [], "the module is subscribed to some process already"
    with _stopped_with_a_full_buffer(rec):
        p = subprocess.run([str(BENCH), "5", "4", "--no-kvm"], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr      # the module subscribed, its records lost
    # another subscriber, held until the module's callbacks are probed (what --ready-file says)
    later = Bench(tmp_path, rounds=20, pages=4, round_us=50_000)
    rec.wait_for(lambda att: {a["symbol"] for a in mod_cb(att) if a["status"] == "attached"} >= set(MOD_CB),
                 timeout=120)
    res = later.go()
    r = _recording_that_lost_ops_records(rec, tmp_path / "rec")
    got = len(_in_window(_module_cbs(r.events(), later.p.pid), res))
    assert got == res["hook_calls"], (got, res, r.meta["drops"], r.meta.get("untimed"))      # the module's own counts
    print(f"full buffer at the module's registration: {r.meta['ops_records_lost']} ops-table records lost "
          f"and sent again; a later subscriber's {got} calls all timed")


@needs_kvm
def test_calls_made_while_a_lost_table_waits_are_counted_untimed(tmp_path):
    """The calls a subscriber gets between its ops-table record's loss and the
    table's report are counted untimed: every one the module counts is recorded
    or untimed, exactly. This process subscribes the module while the stopped
    recorder's buffer is full of KVM's calls and invalidates its own memory 20
    times then (each hook call tries the table again and finds no room), then
    every 0.2 s until --ready-file lists the module's callbacks, then 20 times
    more. Before, only the calls after the table was sent again were counted
    (untimed until the probes went in): the 20 of the stopped recorder were in
    no count (the hooks' own records counted as dropped, not the callbacks)."""
    from mmnlab import testmod
    rec = _recorder(tmp_path / "rec", "--buffer-pages", "64")
    mod_cb = lambda att: [a for a in att if a["kind"] == "callback" and str(a["symbol"]).startswith("mmnt_")  # noqa: E731
                          and a["status"] == "attached"]
    assert mod_cb(rec.first_ready) == [], "the module is subscribed to some process already"
    _addr, _length, invalidate = _invalidator()
    with testmod.TestModule() as m:
        with _stopped_with_a_full_buffer(rec):
            # counted from before the subscription: a call between the two (automatic NUMA
            # balancing scans this process's memory at its return from the ioctl) would be
            # counted untimed, and not by the module
            m.reset()
            m.register()                # its ops-table records meet a full buffer
            invalidate(20)
            stopped = m.counts()
        rec.wait_for(lambda att: invalidate() or {a["symbol"] for a in mod_cb(att)} >= set(MOD_CB), timeout=120)
        invalidate(20, pause_s=0.01)
        c = m.counts()
    r = _recording_that_lost_ops_records(rec, tmp_path / "rec")
    calls = lambda cnt: sum(n for h, n in cnt["calls"].items() if h != "release")  # noqa: E731
    assert calls(stopped) >= 40, stopped        # a start and an end at least, each time
    ev = r.events()
    name = ev["callback"].astype(str)
    timed = ev[(ev["kind"] == "callback") & name.str.startswith("mmnt_") & ~name.str.startswith("mmnt_release")
               & (ev["ts_ns"] >= c["reset_ns"]) & (ev["ts_ns"] <= c["read_ns"])]
    untimed = _untimed_in_hooks(r.meta)
    assert len(timed) + untimed == calls(c), (len(timed), untimed, calls(c), calls(stopped), r.meta["drops"])
    assert untimed >= calls(stopped), (untimed, calls(stopped))
    print(f"a subscriber's table lost to a full buffer: {calls(stopped)} calls while it waited, "
          f"{calls(c)} in all: {len(timed)} timed, {untimed} untimed ({r.meta['ops_records_lost']} ops records lost)")


@needs_kvm
def test_interval_notifiers_inserted_into_a_full_buffer_are_probed_all_the_same(tmp_path):
    """The same for interval notifiers, which no hook's walk of its mm's
    subscribers finds (they are in the mm's interval tree): two of them with
    different ops tables (two drivers' userptrs on one process), inserted once
    each while the stopped recorder's buffer is full of KVM's calls; both tables
    are kept for their mm and reported at the next hook call there; then every
    invalidation of either is timed, as the module counts them. Before, only
    another insertion of the same table could have reported one, and then only
    the last table lost per mm was kept."""
    from mmnlab import testmod
    rec = _recorder(tmp_path / "rec", "--buffer-pages", "64")
    names = ("mmnt_interval_invalidate", "mmnt_interval_invalidate_alt")
    iv = lambda att: [a for a in att if a["kind"] == "callback" and a["symbol"] in names]  # noqa: E731
    assert iv(rec.first_ready) == [], "an interval notifier of the module exists already"
    addr, length, invalidate = _invalidator()
    with testmod.TestModule() as m:
        with _stopped_with_a_full_buffer(rec):
            m.interval(addr, length)             # their ops-table records meet a full buffer
            m.interval(addr, length, alt=True)
        # the workload goes on (a hook call on this mm every 0.2 s) until --ready-file lists both callbacks
        rec.wait_for(lambda att: invalidate() or {a["symbol"] for a in iv(att) if a["status"] == "attached"} == set(names),
                     timeout=120)
        m.reset()
        invalidate(50, pause_s=0.01)
        c = m.counts()
    r = _recording_that_lost_ops_records(rec, tmp_path / "rec")
    ev = r.events()
    name = ev["callback"].astype(str).str.split(" ").str[0]     # ("name [module]")
    mine = ev[(ev["kind"] == "callback") & (ev["pid"] == os.getpid()) & name.isin(names)
              & (ev["ts_ns"] >= c["reset_ns"]) & (ev["ts_ns"] <= c["read_ns"])]
    each = [int((name[mine.index] == n).sum()) for n in names]
    # the module counts both tables' invalidations as one hook (MMNT_IOC_INTERVAL_ALT)
    assert len(mine) == c["calls"]["interval"] >= 100 and each[0] == each[1], (each, c["calls"]["interval"], r.meta["drops"])
    print(f"two interval notifiers inserted into a full buffer: {r.meta['ops_records_lost']} ops-table records lost; "
          f"then {each[0]} + {each[1]} invalidations timed, as the module counts them")


def test_fifty_short_lived_subscribers_each_counted_from_its_first_call(tmp_path):
    """Issue 13: 50 processes, one after another, each subscribe the module to
    their own new mm and invalidate at once (no go file), unsubscribe and
    exit, under a recorder started before any of them existed (its
    --ready-file, nothing else). Every call the hooks made is recorded or
    counted as untimed: recorded <= the module's count per process, recorded
    + untimed == the module's counts in total, exactly; nothing else is lost.
    (The release that MMNT_IOC_UNREGISTER makes comes through no hook: it
    is counted apart: recorded + untimed = one per process, and recorded in
    each of the last ten processes, seconds after the callbacks' probes went
    in.)"""
    rec = _recorder(tmp_path / "rec", "--comm", "notifier_bench")
    runs = []
    for _ in range(50):
        p = subprocess.Popen([str(BENCH), "2", "8", "--no-kvm"], stdout=subprocess.PIPE, text=True)
        out, _err = p.communicate(timeout=120)
        assert p.returncode == 0
        runs.append((p.pid, json.loads(out)))
        time.sleep(0.1)                         # 50 processes over 5 s or more
    assert rec.stop() == 0, rec.log.read_text()[-2000:]
    r = Recording(tmp_path / "rec")
    ev = r.events()
    expected = recorded = released = 0
    for i, (pid, res) in enumerate(runs):
        got = len(_module_cbs(ev, pid))
        released += len(_module_cbs(ev, pid, release=True)) - got
        assert got <= res["hook_calls"], (pid, got, res)
        if i >= 40:    # the probes stay in once the first subscriber is seen: later processes are whole
            assert got == res["hook_calls"], (i, pid, got, res, r.meta["drops"])
            assert len(_module_cbs(ev, pid, release=True)) == got + 1, (i, pid)
        expected += res["hook_calls"]
        recorded += got
    untimed = _untimed_in_hooks(r.meta)
    assert recorded + untimed == expected, (recorded, untimed, expected, r.meta["drops"])
    rel_untimed = sum(u["count"] for u in r.meta.get("untimed", []) if u["callback"].startswith("mmnt_release"))
    assert released + rel_untimed == len(runs), (released, rel_untimed)
    assert r.meta["drops"]["total"] == r.meta["drops"]["untimed"], r.meta["drops"]
    print(f"50 subscribers: {expected} module calls through hooks, {recorded} recorded, {untimed} untimed; "
          f"releases by unregister: {released} recorded, {rel_untimed} untimed")
