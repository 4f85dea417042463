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
what arrives meanwhile waits in the loop's list, as raw records, up to
:data:`MAX_BACKLOG_BYTES`; past that the loop stops draining and the kernel
counts what it cannot keep, as it does when no recorder keeps up.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

#: the most records one segment job holds: its decode, names and Parquet
#: take about 1.5 KB a record at their peak (a 6.12 lab recorder's VmHWM with
#: jobs of 131,072 records: 450-480 MiB, 200 of them the job's)
MAX_JOB_RECORDS = 1 << 16
#: raw records waiting for the worker (~600,000 of them, 20 s of the bench's
#: rate beyond what the worker keeps up with), beyond which the loop stops draining
MAX_BACKLOG_BYTES = 64 << 20


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


__all__ = ["SegmentWorker", "take_job", "MAX_JOB_RECORDS", "MAX_BACKLOG_BYTES"]
