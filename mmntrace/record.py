"""Recording session: drain the tracer, symbolize, write segments.

The only module that joins the tracer (kernel side) and the recording (disk).
Symbolization (:mod:`mmntrace.symbolize`) happens at record time, so reports
work elsewhere without root.
"""

from __future__ import annotations

import errno
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import decode, heap, hooks, kernel
from .errors import DiskFullError
from .heap import give_back_memory
from .outpath import write_atomic
from .segwriter import (MAX_BACKLOG_BYTES, MAX_JOB_RECORDS, SLICE_EVENTS, Arrivals, Backlog, SegmentWorker,
                        convert_now, in_burst)
from .store import HIST_COLUMNS, RecordingWriter, Segment, arrow_table, concat_tables
from .transport import RingReader
from .symbolize import Symbolizer
from .wake import POLL_CAP_MS, Wakeups

# pandas is never imported here: segments and the histograms go to pyarrow
# as columns (mmntrace/store.py), and pyarrow only when a table is written,
# after the start-up: never beside the compiler's memory (BENCHMARKS.md, peak RSS)

def process_age_s() -> float | None:
    """Seconds since this process was started (its exec), from /proc: the
    interpreter's start and the imports included, which no timer inside sees."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


GUARD_CPU_SHARE = 0.5
GUARD_S = 2.0          # the overhead guard's period
GUARD_MIN_RATE = 10_000
#: how often the loop looks again whether the segment worker is free, when it holds records for it
WORKER_RECHECK_S = 0.05
#: after a drain that brought at least COALESCE_MIN records in a burst, the loop lets the
#: next ones gather before it looks again. A consumer that keeps up is woken for every
#: record (the ring buffer's commit raises an irq_work when the consumer has read all
#: before it: a self-IPI, then a wakeup and a context switch), and each look costs its
#: fixed share (the copy's numpy steps, the loop's checks): in a burst, one look per
#: batch instead of one per record or two. The gather lasts as long as the rate of the
#: drain before takes to fill COALESCE_FILL of the buffer (a rate four times higher still
#: fits), at most COALESCE_MAX_S (the loop's poll cap), none under COALESCE_MIN_S. In the
#: lab's 6.1 guest (streaming, notifier_bench 300 64, about 100,000 records a second) a
#: fixed 20 ms gather cost the recorder 1.08 CPU-seconds a run and the run 2.58 s, 100 ms
#: 0.70 s and 2.33 s (means of four, alternated in one boot). COALESCE_MIN was 256
#: records when each callback had its own (about 3.6 records a hook call of the bench,
#: 1.2 since hook records carry their callbacks): 64 is about the same number of hook
#: calls. With 256, one run in five of the 6.1 guest's `notifier_bench 800 64` had the
#: recorder at 2.7-3.4 s of CPU and the run 6-7.7 s (others 1.0-2.0 and 3.7-5); with 64,
#: five runs alternated with the previous recorder in one boot: 4.44-5.03 s, its CPU
#: 1.11-1.36 s, against 4.95-5.82 and 1.64-3.71.
COALESCE_MAX_S = 0.1
COALESCE_MIN_S = 0.002
COALESCE_FILL = 0.25
COALESCE_MIN = 64


def ring_capacity(buffer_pages: int | None, rec_size: int, page: int = 4096) -> int:
    """Records the buffer holds (per CPU for the perf buffer); 0: unknown."""
    return buffer_pages * page // RingReader.stride_of(rec_size) if buffer_pages else 0


def gather_s(capacity: int, n: int, window_s: float) -> float:
    """How long the loop lets a burst's records gather before its next drain, after a
    drain that brought ``n`` records produced over ``window_s`` seconds (since the drain
    before, which brought some too): until COALESCE_FILL of the ``capacity`` records at
    that rate, at most COALESCE_MAX_S; 0 for fewer than COALESCE_MIN records, an
    unknown capacity or rate, or a gather shorter than COALESCE_MIN_S."""
    if capacity <= 0 or n < COALESCE_MIN or window_s <= 0:
        return 0.0
    s = min(COALESCE_MAX_S, COALESCE_FILL * capacity * window_s / n)
    return s if s >= COALESCE_MIN_S else 0.0


JOB_BYTES = MAX_JOB_RECORDS * decode.DTYPE.itemsize      # a full segment is handed over at once


def overhead_warning(rate: float, cpu_share: float, new_drops: int, aggregate: bool) -> str | None:
    """The overhead guard's one warning, or None. Streaming every record costs the
    recorder CPU in proportion to the rate (decode, symbolize, Parquet), on top of
    the probes' cost in the kernel (bench/: BENCHMARKS.md); --aggregate keeps only
    histograms in the kernel and streams violations alone."""
    if aggregate or (new_drops == 0 and (cpu_share < GUARD_CPU_SHARE or rate < GUARD_MIN_RATE)):
        return None
    what = f"{rate:,.0f} events/s costs this recorder {cpu_share:.0%} of a CPU"
    if new_drops:
        what += f", and {new_drops} records were dropped"
    return (f"warning: {what} (the probes cost the traced tasks more, in the kernel); "
            f"for rates like this use --aggregate (in-kernel histograms, violations only), "
            f"or narrow with --pid/--comm/--hooks")


def probe_kinds(t) -> dict:
    """Which mechanism each kind of probe of tracer ``t`` uses (metadata ``probe_kinds``):
    hooks, driver callbacks, might-sleep functions (None: not probed)."""
    backend = getattr(t, "backend", None)
    kind = lambda fentry: "fentry" if fentry else "kprobe"      # noqa: E731
    return {"hooks": kind(getattr(t, "hook_fentry", backend == "fentry")),
            "callbacks": kind(getattr(t, "callback_fentry", backend == "fentry")),
            "might_sleep": kind(backend == "fentry") if getattr(t, "might_sleep", False) else None}


def segment_tables(sym: Symbolizer, raw: bytes, redact: bool = False) -> dict | None:
    """Raw records -> a segment's ``events`` (hooks, then callbacks) and
    ``sleeps`` as pyarrow Tables. Columns go to pyarrow as they are, without
    pandas: its import and its frames' copies were most of a streaming
    recorder's memory. ``redact``: addresses (mm, range, callback) zeroed.
    None where ``raw`` holds no such record (discovery and registration
    records only, all that --aggregate sends): pyarrow is not even imported
    then (1.3 s of the recorder's CPU in the lab, during a new subscriber's
    first calls, and its memory)."""
    parts = decode.split(decode.decode(raw))
    if not any(len(parts[k]) for k in ("hook", "callback", "sleep")):
        return None
    tables = {}
    for name, kinds in (("events", ("hook", "callback")), ("sleeps", ("sleep",))):
        cols = [sym.columns(parts[k], k) for k in kinds if len(parts[k])]
        if redact:
            for c in cols:
                c.update({k: np.zeros_like(c[k]) for k in ("mm", "start", "end", "func") if k in c})
        tables[name] = concat_tables([arrow_table(c) for c in cols])
    return tables


def slices(raw: bytes, most: int) -> list[tuple[int, int]]:
    """(start, end) byte offsets of whole records among ``raw``, in order, each
    run of them at most ``most`` events (a record, and the callbacks a hook
    record carries: the rows it decodes to), or a single record."""
    size = decode.DTYPE.itemsize
    recs = decode.decode(raw)
    if not len(recs):
        return []
    ends = np.cumsum(recs["ncb"], dtype=np.int64) + np.arange(1, len(recs) + 1)     # events up to each record
    out, lo = [], 0
    while lo < len(recs):
        base = int(ends[lo - 1]) if lo else 0
        hi = max(int(np.searchsorted(ends, base + most, side="right")), lo + 1)
        out.append((lo * size, hi * size))
        lo = hi
    return out


class Session:
    """One `mmntrace record` run. ``stop()`` may be called from a signal handler."""

    def __init__(self, tracer, features: kernel.Features, out: Path, *, duration: float | None = None,
                 ready_file: Path | None = None, status=None, segment_s: float = 2.0,
                 redact: bool = False, hand_over: bool = True, command=None):
        """``hand_over``: under sudo, give the recording and the ready file to
        the invoking user as they are made (:mod:`mmntrace.outpath`).
        ``command``: a :class:`mmntrace.command.HeldCommand`, let go once every
        probe is attached; the recording ends when it exits."""
        self.t = tracer
        self.f = features
        self.out = Path(out)
        self.duration = duration
        self.ready_file = Path(ready_file) if ready_file else None
        self.status = status
        self.segment_s = segment_s
        self.redact = redact
        self.hand_over = hand_over
        self._stop = False
        self._state_seen: list | None = None      # the probes as --ready-file last told them
        self.command = command
        self.counts = {"events": 0, "violations": 0}
        self._wlock = threading.Lock()       # the recording's writer: this loop and the segment worker
        self.disk_full: OSError | None = None

    def stop(self, *_):
        self._stop = True

    def _meta(self) -> dict:
        return {
            "kernel": {"release": self.f.release, "arch": platform.machine()},
            "backend": self.t.backend,
            # the mechanism of each kind of probe: `auto` streaming puts kprobes on the hooks
            # (their return address names the caller without a stack unwind), and driver
            # callbacks get trampolines only with --backend fentry; attached[] says it per probe
            "probe_kinds": probe_kinds(self.t),
            "transport": "ringbuf" if self.t.ringbuf else "perf",
            "buffer_pages": getattr(self.t, "ringbuf_pages", None),     # per CPU for the perf buffer
            "layout": self.t.layout,
            "aggregate": self.t.aggregate,
            # record --min-latency: only calls this long are events; hist.parquet has them all
            "min_latency_ns": self.t.min_latency_ns,
            "filters": {"pid": self.t.pid, "children": self.t.children, "comm": self.t.comm,
                        "modules": sorted(self.t.modules) if self.t.modules else None,
                        "callbacks": sorted(self.t.callbacks) if self.t.callbacks else None},
            "hooks": [name for _h, _s, name in self.f.hooks],
            # the kernel's entry point of each hook (the name is the same on every kernel, the symbol not)
            "hook_symbols": {name: sym for _h, sym, name in self.f.hooks},
            # hooks this kernel lacks (change_pte went in 6.9; mn_itree_invalidate is static and may be
            # inlined): skipped, and said so here rather than silently
            "hooks_missing": [
                {"hook": h.name, "symbols": list(h.symbols),
                 "reason": "none of these symbols is in this kernel (removed, renamed or inlined)"}
                for h in sorted(hooks.HOOKS, key=lambda h: h.id) if self.f.hook_symbol(h.id) is None],
            "events_enum": {str(v): n for v, n in self.f.events},
            "host": platform.node(),
            "redacted": self.redact,
        }

    def _write_ready(self) -> None:
        """--ready-file: the probes attached, as JSON. 0600 like the recording: an
        unresolved callback's symbol is its kernel address."""
        if self.ready_file:
            import json
            write_atomic(self.ready_file, json.dumps({"pid": os.getpid(), "attached": [
                {k: a.get(k) for k in ("kind", "symbol", "hook", "module", "status", "attach")}
                for a in self.t.attached()]}).encode(), hand_over=self.hand_over)

    def _probe_state(self) -> list:
        return self.t.probe_state()

    def _drain(self, pending: Backlog, timeout_ms: int = POLL_CAP_MS) -> tuple[int, int]:
        """Drain the buffer into ``pending``: the records taken (how full the
        buffer was), and the events among them (rows: with the callbacks that
        hook records carry, about three a record when streaming), counted."""
        raw = self.t.poll(timeout_ms)   # also attaches newly discovered driver callbacks
        if raw:
            try:
                pending.append(raw)
            except OSError as e:    # its file: the recording's file system is full
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self.disk_full = self.disk_full or e
        state = self._probe_state()     # probes change only inside poll()
        if state != self._state_seen:
            self._state_seen = state
            self._write_ready()     # tell whoever waits on --ready-file (attached, detached)
        if not raw:
            return 0, 0
        n = len(raw) // decode.DTYPE.itemsize
        ev = n + decode.carried_count(raw)
        self.counts["events"] += ev
        return n, ev

    def _write_segment(self, writer: RecordingWriter, sym: Symbolizer, raw: bytes) -> None:
        """Raw records -> one segment's tables (the segment worker's job,
        mmntrace/segwriter.py), SLICE_EVENTS at a time (:func:`slices`): each slice decoded,
        made into tables and encoded (a row group of the segment's files)
        before the next; the segment is written under the lock (the metadata
        it touches)."""
        seg = Segment()
        view = memoryview(raw)
        for lo, hi in slices(raw, SLICE_EVENTS):
            tables = segment_tables(sym, view[lo:hi], self.redact)
            if tables is not None:      # (None: discovery and registration records only)
                seg.add(tables["events"], tables["sleeps"])
                del tables
        self.counts["violations"] += seg.sleeps
        with self._wlock:
            writer.add_segment(seg)

    def _guard(self, g: dict, now: float, fresh: bool = False) -> None:
        """The overhead guard: warn once, with the measured rate, CPU share and drops."""
        # records lost: a new subscriber's calls before its probes went in are counted
        # untimed, not lost to the recorder's cost (the warning's subject)
        cpu, drops_now = sum(os.times()[:2]), self.t.lost(fresh)
        span = max(now - g["t"], 1e-3)
        msg = None if g["warned"] else overhead_warning(g["n"] / span, (cpu - g["cpu"]) / span,
                                                        drops_now - g["drops"], self.t.aggregate)
        if msg:
            print(("\n" if self.status else "") + f"mmntrace: {msg}", file=sys.stderr, flush=True)
            g["warned"] = True
        g.update(t=now, cpu=cpu, n=0, drops=drops_now)

    def _untimed(self, sym: Symbolizer, untimed: dict | None = None) -> list[dict]:
        """Calls counted but not timed, per callback, most first (metadata "untimed")."""
        untimed = self.t.untimed() if untimed is None else untimed
        return [{"callback": sym.cb_sym(f), "func": 0 if self.redact else f, "count": n}
                for f, n in sorted(untimed.items(), key=lambda x: -x[1])]

    def run(self) -> dict:
        self.t.start()      # the CLI loads first (compiling while pyarrow imports)
        age = process_age_s()
        if age is not None:     # the start-up as the user sees it: exec to ready
            self.t.timing["ready_after_s"] = round(age, 3)
        writer = RecordingWriter(self.out, self._meta(), hand_over=self.hand_over)
        sym = Symbolizer(self.t, self.f)
        writer.meta["attached"] = self.t.attached()
        writer.meta["timing"] = dict(self.t.timing)
        writer.meta["calibration"] = self.t.calibration
        writer.meta["calibration_fentry"] = getattr(self.t, "calibration_fentry", None)
        # how each call's lock context is read (kernel.CONTEXT_SOURCES); PREEMPT_RT:
        # the probe's own migration-disabled and RCU nesting, taken off
        writer.meta["context_source"] = self.f.context_source
        writer.meta["calibration_rt"] = getattr(self.t, "calibration_rt", None) or None
        writer.meta["probe_overhead_ns"] = getattr(self.t, "probe_overhead", None) or None
        # --aggregate: each callback timed from its entry to the next callback's or its hook's return
        writer.meta["callbacks_chained"] = bool(getattr(self.t, "chained_hooks", ()))
        # the hooks whose callbacks had an entry probe alone (callbacks.chained_hooks)
        writer.meta["chained_hooks"] = sorted(hooks.name_of(h) for h in getattr(self.t, "chained_hooks", ()))
        writer.meta["stale_kprobes_removed"] = getattr(self.t, "stale_kprobes_removed", 0)
        writer.meta["might_sleep"] = getattr(self.t, "might_sleep", True)
        # how real sleeps were seen: switch (sched_switch, with the sleep's stack) or count
        writer.meta["sleep_detect"] = getattr(self.t, "sleep_detect", "switch")
        # mms whose interval tree the start-up sweep could not walk to its end (more interval
        # notifiers than its runs visit): an ops table only there is found at registration only
        writer.meta["sweep_unfinished_mms"] = getattr(self.t, "sweep_unfinished", 0)
        writer.meta["task_storage"] = getattr(self.t, "task_storage", None)
        # the interval walks' steps as bpf_loop() callbacks (False: bounded loops)
        writer.meta["bpf_loop"] = getattr(self.t, "bpf_loop", None)
        # bcc's compile did without its read of all of kallsyms (mmntrace/nokallsyms.py)
        writer.meta["compile_skipped_kallsyms"] = getattr(self.t, "compile_skipped_kallsyms", None)
        # the compile left out the headers of struct pt_regs and PAGE_SIZE (codegen.lean_header_flags)
        writer.meta["lean_headers"] = getattr(self.t, "lean_headers", None)
        if self.command is not None:
            writer.meta["command"] = {"argv": self.command.argv, "pid": self.command.pid, "exit": None}
        writer.flush_meta()
        self._write_ready()
        self._state_seen = self._probe_state()
        if self.command is not None:
            self.command.go()       # every probe is attached: CMD runs now
        # raw records for the segment worker: in memory, then in an unnamed file beside the recording
        pending = Backlog(self.out)
        # segments are decoded, symbolized and written on a thread of their own
        # (mmntrace/segwriter.py): this loop keeps emptying the ring buffer meanwhile
        worker = SegmentWorker(lambda raw: self._write_segment(writer, sym, raw))
        worker.__enter__()
        t0 = time.monotonic()
        last_segment = last_meta = last_status = t0
        last_kept = None
        events_at_status = 0
        most = 0
        guard = {"t": t0, "cpu": sum(os.times()[:2]), "n": 0, "drops": 0, "warned": False}
        # a burst's records wait, raw, and become segments once it is over (mmntrace/segwriter.py)
        arrivals = Arrivals()
        capacity = ring_capacity(getattr(self.t, "ringbuf_pages", None), decode.DTYPE.itemsize)
        prev_drain = (0, t0)        # the last drain's records and end: the rate of a burst
        try:
            # records, signals and CMD's exit wake the loop (mmntrace/wake.py): it
            # sleeps until its next deadline, not ten times a second
            with Wakeups(self.t, self.command.pid if self.command is not None else None) as wake:
                while not self._stop and worker.error is None and self.disk_full is None:
                    now = time.monotonic()
                    if self.duration is not None and now - t0 >= self.duration:
                        break
                    if self.command is not None and self.command.poll() is not None:
                        self._drain(pending, 0)     # what it did last is in the buffer
                        break
                    due = [last_meta + self.segment_s, guard["t"] + GUARD_S]
                    backlog = pending.nbytes
                    if pending:     # (none: no segment is due; an idle loop sleeps)
                        if in_burst(backlog, arrivals.quiet(now)):
                            segment_due = arrivals.quiet_by()   # its segments once it is over
                        else:
                            segment_due = last_segment + self.segment_s
                            if now >= segment_due and not worker.idle:
                                segment_due = now + WORKER_RECHECK_S    # hand over once the worker is free
                        due.append(segment_due)
                    if self.status:
                        due.append(last_status + 1.0)
                    if self.duration is not None:
                        due.append(t0 + self.duration)
                    if not worker.idle and backlog + worker.queued_bytes > MAX_BACKLOG_BYTES:
                        # the worker is far behind: stop draining (the kernel counts what it cannot keep)
                        worker.done.wait(wake.timeout_ms(min(due) - now) / 1000)
                        n = ev = 0
                    else:
                        n, ev = self._drain(pending, wake.timeout_ms(min(due) - now))
                        most = max(most, n)     # how full the buffer came to be (metadata)
                    wake.clear()
                    now = time.monotonic()
                    arrivals.add(now, ev)       # (a burst is told by its events, whatever records carry them)
                    backlog = pending.nbytes
                    if worker.idle and convert_now(backlog, arrivals.quiet(now), now - last_segment,
                                                   self.segment_s, JOB_BYTES):
                        worker.submit(pending.take(decode.DTYPE.itemsize))      # a segment
                        last_segment = now
                    if now - last_meta >= self.segment_s:
                        try:
                            untimed = self.t.untimed(fresh=False)   # (two maps: read once for both, if they moved)
                            kept = (self.t.attached(), self.t.drops(fresh=False, untimed=untimed),
                                    self._untimed(sym, untimed))
                            if kept != last_kept:       # kept if we are killed; rewritten when they moved
                                with self._wlock:
                                    writer.meta["attached"], writer.meta["drops"], writer.meta["untimed"] = kept
                                    writer.flush_meta()
                                last_kept = kept
                        except OSError as e:
                            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                                raise
                            self.disk_full = e
                            break
                        last_meta = now
                    guard["n"] += ev
                    if now - guard["t"] >= GUARD_S:
                        self._guard(guard, now)
                    if self.status and now - last_status >= 1.0:
                        total = self.counts["events"]
                        self.status((total - events_at_status) / (now - last_status), total,
                                    self.t.lost(False), self.counts["violations"], now - t0)
                        events_at_status, last_status = total, now
                    # a burst (this drain and the one just before it, at most two gathers
                    # ago, not across an idle wait, brought a batch each): let its next
                    # records gather, as long as its rate leaves room in the buffer
                    window = now - prev_drain[1]
                    burst = prev_drain[0] >= COALESCE_MIN and window <= 2 * COALESCE_MAX_S
                    gather = gather_s(capacity, n, window) if burst else 0.0
                    prev_drain = (n, now)
                    if gather and not self._stop:
                        time.sleep(gather)
        finally:
            # drain what is still in the ring buffer, hand it over, then detach
            for _ in range(3 if self.disk_full is None and worker.error is None else 0):
                n, _ev = self._drain(pending)
                if not n:
                    break
            if self.disk_full is None and worker.error is None:
                left = pending.nbytes // decode.DTYPE.itemsize
                if self.status and left >= MAX_JOB_RECORDS:     # seconds of work: say so
                    print(f"\nmmntrace: writing the last {left:,} records...", file=sys.stderr, flush=True)
                while pending and worker.error is None:
                    while not worker.idle:      # a job at a time: what waits in the file stays there
                        worker.done.wait(0.5)
                    worker.submit(pending.take(decode.DTYPE.itemsize))
            pending.clear()
            self._guard(guard, time.monotonic(), fresh=True)    # a storm that ended between two checks
            untimed_now = self.t.untimed()      # (two maps: read once for both)
            drops = self.t.drops(untimed=untimed_now)
            ops_lost = self.t.ops_unsent()
            attached = self.t.attached()
            untimed = self._untimed(sym, untimed_now)
            hist_rows, total_rows, via_rows = list(self.t.histograms()), list(self.t.totals()), list(self.t.via())
            worker.close()      # the segments handed over are written (they name things through the tracer)
            err = worker.error
            if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
                self.disk_full = self.disk_full or err
            elif err is not None:
                raise err
            self.t.stop()       # the compiler's memory goes back before the tables are written
            give_back_memory()
            if self.t.kernel_hist and self.disk_full is None:
                # columns, not a DataFrame: pyarrow writes them without pandas,
                # whose import (~75 MiB) would be this recorder's peak memory;
                # the rows hold the numeric columns of HIST_COLUMNS, in its order
                hist = {name: np.array([r[i] for r in hist_rows], dtype=t)
                        for i, (name, t) in enumerate(c for c in HIST_COLUMNS if c[1] is not object)}
                hist["hook"] = [sym.hook_names.get(int(h), str(h)) for h in hist["hook_id"]]
                hist["event"] = [sym.events.get(int(e)) if e >= 0 else None for e in hist["event_id"]]
                hist["callback"] = [sym.cb_sym(int(f)) for f in hist["func"]]
                writer.write_hist(hist)
                writer.meta["totals"] = [
                    {"hook": sym.hook_names.get(int(hook_id)), "event": sym.events.get(int(event_id)),
                     "callback": sym.cb_sym(int(func)), "count": int(count), "sum_ns": int(sum_ns)}
                    for func, hook_id, event_id, count, sum_ns in total_rows]
                # which hook's invocation made each callback's calls (6.1's range_end: the secondary-TLB ops)
                writer.meta["via"] = [
                    {"hook": sym.hook_names.get(int(h)), "callback": sym.cb_sym(int(f)),
                     "via": sym.hook_names.get(int(v)) if v is not None else None, "count": int(n)}
                    for f, h, v, n in via_rows]
            if self.command is not None:    # None: still running (the recording was stopped first)
                writer.meta["command"]["exit"] = self.command.poll()
            # the most records one look at the buffer found: near its capacity, records were lost
            writer.meta["buffer_peak_records"] = most
            # records that waited for their segment in a file, not in memory (a long burst)
            writer.meta["spooled_records"] = pending.spilled // decode.DTYPE.itemsize
            # ops-table records a full buffer lost (among the drops): each table was
            # reported again once there was room (bpf/discovery.h ops_unsent)
            writer.meta["ops_records_lost"] = ops_lost
            # the libraries' clean pages this recorder gave back (mmntrace/heap.py)
            writer.meta["memory_given_back"] = dict(heap.given_back)
            if self.disk_full is None:
                writer.finish(drops=drops, attached=attached, untimed=untimed)
            else:
                try:        # the last metadata that fit stays (status "recording": cut short)
                    writer.meta.update(status="disk_full", drops=drops, attached=attached, untimed=untimed,
                                       end_time=time.time())
                    writer.flush_meta()
                except OSError:
                    pass
            writer.close()
        if self.disk_full is not None:
            raise DiskFullError(
                f"the file system holding {self.out} is full ({self.disk_full.strerror}): recording stopped "
                f"after {writer.meta.get('events', 0)} events were written; what was written is readable "
                f"(mmntrace report {self.out})")
        calls = {"hook": 0, "callback": 0}
        for func, *_rest, count, _sum in total_rows:
            calls["callback" if func else "hook"] += count
        return {"events": self.counts["events"], "violations": self.counts["violations"],
                "drops": drops.get("total", 0), "untimed": drops.get("untimed", 0),
                "aggregate": bool(self.t.aggregate), "calls": calls, "dir": str(self.out)}


def summary_line(res: dict) -> str:
    """The line `record` ends with: what was kept (records, or with
    --aggregate the calls the kernel's histograms counted), the sleep records,
    and the losses, the calls counted but not timed told apart as the report
    tells them (a subscriber's first calls, before its probes went in)."""
    n = lambda v: f"{v:,}"
    if res.get("aggregate"):
        c = res.get("calls") or {}
        what = f"{n(c.get('hook', 0))} hook and {n(c.get('callback', 0))} callback calls timed in kernel histograms"
    else:
        what = f"{n(res['events'])} records"
    gone = f"{n(res['drops'])} dropped"
    if res.get("untimed"):
        gone += (f" (of which {n(res['untimed'])} callback calls counted but not timed: made before their "
                 "probes were attached)")
    return f"mmntrace: {what}, {n(res['violations'])} sleep records, {gone} -> {res['dir']}"


def install_signal_handlers(session: Session) -> None:
    """Ctrl-C and SIGTERM finish cleanly. SIGINT is re-installed explicitly: a
    job started with `&` from a non-interactive shell inherits it ignored."""
    signal.signal(signal.SIGINT, session.stop)
    signal.signal(signal.SIGTERM, session.stop)
