"""Segments written beside the drain loop, not inside it.

A streaming recorder does two things: it empties the BPF ring buffer, and it
turns what it took into a segment (decode, symbolize, Parquet). The second
takes far longer: in the lab's 6.12 guest a segment of ~100,000 records took
4-5 s, while the streaming ring buffer (16 MiB, ~140,000 records) filled in
a few seconds at the bench's rates; done in the loop, a run lost thousands of
records (18,198 to the ring buffer in one run of two bench workloads). Here the drain
loop hands each segment's raw bytes to :class:`SegmentWorker`, whose thread
does the rest, and goes back to draining: the GIL passes between them every
few milliseconds (and is released for the Parquet writes), so the buffer is
emptied throughout.

The loop hands a new segment over only when the worker is idle, at most
:data:`MAX_JOB_RECORDS` records at a time (the worker's memory stays bounded);
what arrives meanwhile waits as raw records (:class:`Backlog`), up to
:data:`MAX_BACKLOG_BYTES`; past that the loop stops draining and the kernel
counts what it cannot keep, as it does when no recorder keeps up.

A burst is not converted while it lasts. The conversion costs the machine
far more than the probes do (in the lab, where the guest's vCPUs share one
host thread, a streaming recorder took 5.9 CPU-seconds during a 6.5 s bench
workload that ran in 1.0 s untraced): done beside the burst, it slows the
very tasks being traced. So while records arrive faster than
:data:`QUIET_RATE` a second (:class:`Arrivals`), they wait raw, and the
segments are written once the burst is over, as ``perf record`` leaves the
decoding to ``perf report``; unless the waiting records reach
:data:`DEFER_BYTES` first (a sustained rate), when segments go out beside it
as before. :func:`convert_now` is that rule.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from typing import Callable

#: the most records one segment job holds: its decode, names and Parquet take
#: about 0.6 KB a record at their peak (1.5 KB through pandas: a 6.12 lab
#: recorder's VmHWM with jobs of 131,072 records was 450-480 MiB, 200 of them
#: the job's). Jobs of 16,384 took the 6.1 guest's peak from 186-195 to 178
#: MiB, but the bench's recorder had then written one run's records of two
#: when it looked, 4.5 s after each: each segment's fixed costs (its file,
#: the metadata) four times as often. 24,576 since hook records carry their
#: callbacks (about 2.7 events a record in the bench's streams): a job's rows,
#: whose encoded segment is held until it is written, as many as before (jobs of
#: 40,960 records, 110,000 rows, took the 6.1 guest's streaming peak from 144-153
#: to 152-158 MiB, five runs of each alternated in one boot; with 24,576 it was
#: 139-144 against the previous recorder's 144-156)
MAX_JOB_RECORDS = 24_576
#: events (records, and the callbacks hook records carry: rows) of a job decoded,
#: made into tables and encoded at a time: each slice a
#: row group of the segment's files (mmntrace/store.py Segment), so the memory a
#: job takes is a slice's, and a segment's fixed costs stay a job's. On this
#: project's build host, a job of 65,536 records (hooks and callbacks) raised the
#: process' peak by 43 MiB whole, 25 MiB in slices of 16,384, with the allocator a
#: recorder gives pyarrow (the system's: mmntrace/cli.py); with pyarrow's own
#: (mimalloc) 57 and 26 (slices of 8,192: 25; of 4,096: 20, and 45 % more CPU), in
#: the same time (0.047 s against 0.052 a job)
SLICE_EVENTS = 1 << 14
#: raw records waiting for the worker (~9.5 million of them: minutes of the
#: bench's rate), beyond which the loop stops draining; past MEMORY_BACKLOG_BYTES
#: they wait in the recording's file system (:class:`Backlog`), not in memory
MAX_BACKLOG_BYTES = 1 << 30
#: 8 MiB: a burst of about 80,000 records waits in memory; past it, in the file.
#: What waits in memory stays there until the worker takes it, so a worker that
#: starts converting at a burst's end holds its job's memory (about 25 MiB) on top
#: of all of this: the recorder's peak. At 24 MiB (2026-12-06, make bench's
#: streaming runs in the 6.1 guest, one boot each, with the ring buffer halved
#: too) the peak RSS was 174.8 MiB, at 8 MiB 154.4, with the same overhead
#: (2.51 / 2.50) and recorder CPU a run (1.15-1.98 / 1.15-1.77 s): the bench's
#: bursts (about 65 MB a run) go through the file either way. Each byte past it is
#: copied into the file and back (the page cache's pages allocated and freed each
#: time): a burst of 160,000 records (notifier_bench 300 64) took the 6.12 guest's
#: recorder 0.43-0.85 s of CPU at 8 MiB, 0.28-0.41 s at 24 MiB, when measured alone
MEMORY_BACKLOG_BYTES = 8 << 20
#: what the spool file keeps of its space once the worker has emptied it: the next
#: burst is written into pages the file already has, not into new ones, allocated
#: (and, on tmpfs, zeroed) while the traced tasks run, then freed again. The 6.1 lab
#: guest's streaming recorder (`notifier_bench 800 64`: about 30 MB through the file
#: a run; its recording in the guest's tmpfs), seven runs of each alternated in two
#: boots: its main thread's system time a run 1.05 -> 0.73 s, user 1.45 -> 1.06, the
#: run 11.99 -> 9.72 s (medians; untraced 3.5-4.9 s). Past it the file is cut back to
#: it, and to a quarter of the space its file system has free besides (the segments
#: come first): at most this much stays held by an idle recorder (RAM where the
#: recording's directory is tmpfs; page cache on a disk, which may write it back once)
SPOOL_KEEP_BYTES = 64 << 20
#: events a second (records, and the callbacks hook records carry), over the last
#: QUIET_S seconds, below which the recorder is quiet enough to convert; above it,
#: a burst: its records wait, raw
QUIET_RATE = 1_000
QUIET_S = 1.0
#: raw records (~2.4 million) beyond which a burst's segments are written beside
#: it all the same: a sustained rate must not hold the recording back for long
DEFER_BYTES = 256 << 20


class Arrivals:
    """Events drained in the last ``window`` seconds: is the recorder quiet?"""

    def __init__(self, window: float = QUIET_S, rate: float = QUIET_RATE):
        self.window, self.rate = window, rate
        self._q: deque = deque()
        self._n = 0
        self.last = float("-inf")       # when records last came

    def add(self, now: float, n: int) -> None:
        if n:
            self._q.append((now, n))
            self._n += n
            self.last = now
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self._q and self._q[0][0] <= now - self.window:
            self._n -= self._q.popleft()[1]

    def quiet(self, now: float) -> bool:
        self._prune(now)
        return self._n < self.rate * self.window

    def quiet_by(self) -> float:
        """When it is quiet at the latest if no more records come."""
        return self.last + self.window


def in_burst(backlog: int, quiet: bool, defer_bytes: int = DEFER_BYTES) -> bool:
    """Do the ``backlog`` bytes of raw records wait for a burst to end (not
    quiet, and fewer than ``defer_bytes`` of them)?"""
    return not quiet and backlog < defer_bytes


def convert_now(backlog: int, quiet: bool, since_segment: float, segment_s: float, job_bytes: int,
                defer_bytes: int = DEFER_BYTES) -> bool:
    """Is it time to hand the worker a segment of the ``backlog`` bytes of raw
    records waiting (the worker being idle)? Not :func:`in_burst`: every
    ``segment_s``, sooner with a whole job's worth, at once past ``defer_bytes``."""
    if backlog <= 0 or in_burst(backlog, quiet, defer_bytes):
        return False
    return backlog >= defer_bytes or since_segment >= segment_s or backlog >= job_bytes


class SegmentWorker:
    """One thread that runs ``write(raw)`` for each job, in order.

    ``error``: the first exception a job raised (later jobs are skipped and
    the loop stops on it: a full disk, a failed write). Use as a context
    manager: leaving joins the thread after the jobs already given."""

    def __init__(self, write: Callable[[bytes], None]):
        self._write = write
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._outstanding = 0       # jobs given and not finished
        self._queued = 0            # their bytes
        self.done = threading.Event()       # set each time a job ends
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mmntrace-segments", daemon=True)
        self._started = False

    def __enter__(self) -> "SegmentWorker":
        self._thread.start()
        self._started = True
        return self

    def __exit__(self, *_):
        self.close()
        return False

    @property
    def idle(self) -> bool:
        with self._lock:
            return self._outstanding == 0

    @property
    def queued_bytes(self) -> int:
        with self._lock:
            return self._queued

    def submit(self, raw: bytes) -> None:
        with self._lock:
            self._outstanding += 1
            self._queued += len(raw)
        self.done.clear()
        self._jobs.put(raw)

    def _run(self) -> None:
        while True:
            raw = self._jobs.get()
            if raw is None:
                return
            try:
                if self.error is None:
                    self._write(raw)
            except BaseException as e:      # handed to the loop, which stops on it
                self.error = e
            finally:
                with self._lock:
                    self._outstanding -= 1
                    self._queued -= len(raw)
                self.done.set()

    def close(self) -> None:
        """Wait for the jobs given so far, then end the thread."""
        if self._started:
            self._jobs.put(None)
            self._thread.join()
            self._started = False


class Backlog:
    """Raw records waiting for the segment worker, oldest first: in memory up to
    ``memory_bytes``, then in an unnamed file in ``spool_dir`` (the recording's
    directory: no name to leave behind, whatever ends the recorder; its space is
    the recording's) until the worker has taken what is in it. Emptied, the file
    keeps up to ``keep_bytes`` of its space for the next burst (:data:`SPOOL_KEEP_BYTES`).

    Raises OSError from the file (ENOSPC: the recording's file system is full).

    (Measured and left: writing a burst's records into the file straight from
    the ring buffer's mapping, each with its ring header, instead of copying
    them out first and then writing the copy. In the 6.1 guest, four recorders
    of each alternated in one boot, the recorder's CPU during a run of
    ``notifier_bench 800 64`` was 1.32 s that way against 1.07 (medians; each
    of the four above all of the other's), the runs 5.69 s against 5.46: the
    copy out is not where the spill's cost lies. The file's new pages, which
    either way are allocated, are a likelier place: on the build host,
    writing 64 MiB into pages a tmpfs file had took 20 ms, into new ones 47.
    So the file now keeps its pages between bursts: :data:`SPOOL_KEEP_BYTES`.)"""

    def __init__(self, spool_dir, memory_bytes: int = MEMORY_BACKLOG_BYTES, keep_bytes: int = SPOOL_KEEP_BYTES):
        self.spool_dir, self.memory_bytes, self.keep_bytes = spool_dir, memory_bytes, keep_bytes
        self._mem: list[bytes] = []
        self._mem_bytes = 0
        self._file = None
        self._rd = self._wr = 0         # the file's read and write offsets
        self.spilled = 0                # bytes that went through the file

    @property
    def nbytes(self) -> int:
        return self._mem_bytes + self._wr - self._rd

    def __bool__(self) -> bool:
        return self.nbytes > 0

    def append(self, raw: bytes) -> None:
        if not raw:
            return
        if self._wr == self._rd and self._mem_bytes + len(raw) <= self.memory_bytes:
            self._mem.append(raw)       # (once the file holds some, all goes there: in order)
            self._mem_bytes += len(raw)
            return
        if self._file is None:
            import tempfile
            self._file = tempfile.TemporaryFile(dir=self.spool_dir, prefix=".mmntrace-spool-")
        view = memoryview(raw)
        while view:
            n = os.pwrite(self._file.fileno(), view, self._wr)
            self._wr += n
            view = view[n:]
        self.spilled += len(raw)

    def take(self, rec_size: int, limit: int = MAX_JOB_RECORDS) -> bytes:
        """The oldest records, at most ``limit``, whole ones: memory first, then the file."""
        out = take_job(self._mem, rec_size, limit) if self._mem else b""
        self._mem_bytes -= len(out)
        room = (limit * rec_size - len(out)) // rec_size * rec_size
        if room and self._wr > self._rd:
            got = os.pread(self._file.fileno(), min(room, self._wr - self._rd), self._rd)
            self._rd += len(got)
            out += got
            if self._rd == self._wr:    # emptied: the next burst writes from its start again,
                # into the pages it has (up to keep_bytes of them; the rest go back)
                keep = min(self.keep_bytes, self._room_to_keep())
                if os.fstat(self._file.fileno()).st_size > keep:
                    os.ftruncate(self._file.fileno(), keep)
                self._rd = self._wr = 0
        return out

    def _room_to_keep(self) -> int:
        """The most of its space the emptied file may keep: a quarter of what its
        file system has free besides (the segments come first: a filling disk
        takes the spool's space back, a full one all of it)."""
        try:
            st = os.fstatvfs(self._file.fileno())
        except OSError:
            return 0
        return st.f_bavail * st.f_frsize // 4

    def clear(self) -> None:
        self._mem.clear()
        self._mem_bytes = 0
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._rd = self._wr = 0


def take_job(pending: list[bytes], rec_size: int, limit: int = MAX_JOB_RECORDS) -> bytes:
    """The oldest records of ``pending`` (raw chunks, whole records each), at
    most ``limit`` of them, removed from it; what is left stays in order."""
    out, n = [], 0
    cap = limit * rec_size
    while pending and n < cap:
        chunk = pending[0]
        room = cap - n
        if len(chunk) <= room:
            out.append(pending.pop(0))
            n += len(chunk)
        else:
            cut = room - room % rec_size
            out.append(chunk[:cut])
            pending[0] = chunk[cut:]
            n += cut
            break
    return b"".join(out)


__all__ = ["SegmentWorker", "Backlog", "take_job", "Arrivals", "convert_now", "in_burst", "MAX_JOB_RECORDS", "MAX_BACKLOG_BYTES",
           "MEMORY_BACKLOG_BYTES", "SPOOL_KEEP_BYTES", "DEFER_BYTES", "QUIET_RATE", "QUIET_S"]
