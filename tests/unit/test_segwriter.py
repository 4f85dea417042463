"""The segment worker (mmntrace/segwriter.py): jobs in order, whole records,
the first error kept and the rest skipped, and a drain loop that is free
while a job runs."""

import errno
import os
import threading

import pytest

from mmntrace.segwriter import Arrivals, Backlog, SegmentWorker, convert_now, take_job

REC = 4


def _recs(first: int, n: int) -> bytes:
    return b"".join(i.to_bytes(REC, "little") for i in range(first, first + n))


def _ids(raw: bytes) -> list[int]:
    return [int.from_bytes(raw[i:i + REC], "little") for i in range(0, len(raw), REC)]


def test_take_job_takes_the_oldest_whole_records_and_leaves_the_rest_in_order():
    pending = [_recs(0, 3), _recs(3, 5), _recs(8, 2)]
    job = take_job(pending, REC, limit=4)
    assert _ids(job) == [0, 1, 2, 3]
    assert _ids(b"".join(pending)) == list(range(4, 10))
    assert _ids(take_job(pending, REC, limit=100)) == list(range(4, 10)) and pending == []
    assert take_job([], REC) == b""


def test_worker_runs_jobs_in_order_and_close_waits_for_them():
    seen = []
    with SegmentWorker(lambda raw: seen.extend(_ids(raw))) as w:
        for k in range(5):
            w.submit(_recs(10 * k, 3))
    assert seen == [i for k in range(5) for i in range(10 * k, 10 * k + 3)]
    assert w.idle and w.queued_bytes == 0 and w.error is None


def test_worker_keeps_the_first_error_and_skips_later_jobs():
    calls = []

    def write(raw):
        calls.append(_ids(raw)[0])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    with SegmentWorker(write) as w:
        for k in range(4):
            w.submit(_recs(k, 1))
    assert calls == [0, 1]
    assert isinstance(w.error, OSError) and w.error.errno == errno.ENOSPC
    assert w.idle


def test_the_loop_is_free_while_a_job_runs():
    """What the recorder relies on: submit() returns at once, and the worker
    says it is busy until the job ends (the loop drains meanwhile)."""
    release = threading.Event()
    started = threading.Event()

    def write(raw):
        started.set()
        assert release.wait(10)

    w = SegmentWorker(write).__enter__()
    try:
        w.submit(_recs(0, 8))
        assert started.wait(10)
        assert not w.idle and w.queued_bytes == 8 * REC
        release.set()
        assert w.done.wait(10)
    finally:
        release.set()
        w.close()
    assert w.idle and w.queued_bytes == 0


@pytest.mark.parametrize("n", [0, 1, 7])
def test_take_job_never_splits_a_record(n):
    pending = [_recs(0, n), _recs(n, 3)]
    job = take_job(pending, REC, limit=n + 1)
    assert len(job) % REC == 0 and _ids(job) == list(range(n + 1))


def test_arrivals_say_quiet_once_a_burst_is_a_window_old():
    a = Arrivals(window=1.0, rate=1000)
    assert a.quiet(0.0)
    a.add(0.0, 600)
    assert a.quiet(0.1)                 # 600 in the last second: under 1,000
    a.add(0.5, 600)
    assert not a.quiet(0.6)             # 1,200: a burst
    assert a.quiet_by() == 1.5
    assert not a.quiet(0.99)
    assert a.quiet(1.01)                # the first 600 left the window
    a.add(1.2, 0)                       # an empty drain changes nothing
    assert a.quiet(1.2) and a.quiet_by() == 1.5
    assert a.quiet(1.6)


@pytest.mark.parametrize("backlog,quiet,since,expect", [
    (0, True, 10.0, False),             # nothing waits
    (100, True, 0.5, False),            # quiet, segment not due, less than a job
    (100, True, 2.0, True),             # quiet and due
    (5000, True, 0.1, True),            # quiet, a whole job waits
    (5000, False, 10.0, False),         # a burst: it waits, however long
    (1 << 20, False, 0.0, True),        # ... until DEFER_BYTES wait
])
def test_convert_now_defers_a_burst_up_to_defer_bytes(backlog, quiet, since, expect):
    assert convert_now(backlog, quiet, since, 2.0, job_bytes=4096, defer_bytes=1 << 20) is expect


def test_backlog_keeps_order_through_memory_and_file_and_leaves_no_name(tmp_path):
    b = Backlog(tmp_path, memory_bytes=10 * REC)
    b.append(_recs(0, 6))               # memory
    b.append(_recs(6, 6))               # over 10 records: the file, and all after it
    b.append(_recs(12, 2))
    assert b.nbytes == 14 * REC and b.spilled == 8 * REC
    assert list(tmp_path.iterdir()) == []           # an unnamed file
    got = []
    while b:
        job = b.take(REC, limit=4)
        assert 0 < len(job) <= 4 * REC and len(job) % REC == 0
        got += _ids(job)
    assert got == list(range(14)) and b.nbytes == 0
    b.append(_recs(14, 3))              # emptied: memory again
    assert b.spilled == 8 * REC and _ids(b.take(REC)) == [14, 15, 16]
    b.clear()
    assert not b and list(tmp_path.iterdir()) == []


def _drain(b):
    got = []
    while b:
        got += _ids(b.take(REC, limit=3))
    return got


def test_backlog_file_keeps_its_pages_for_the_next_burst_up_to_keep_bytes(tmp_path):
    b = Backlog(tmp_path, memory_bytes=2 * REC, keep_bytes=6 * REC)
    b.append(_recs(0, 2))               # memory
    b.append(_recs(2, 5))               # the file: 5 records
    assert _drain(b) == list(range(7))
    size = os.fstat(b._file.fileno()).st_size
    assert size == 5 * REC              # emptied, its space kept (under keep_bytes)
    b.append(_recs(7, 2))               # memory again, then the file from its start
    b.append(_recs(9, 3))
    assert os.fstat(b._file.fileno()).st_size == size   # written into the pages it had
    assert _drain(b) == list(range(7, 12))               # nothing of the first burst
    b.append(_recs(12, 2))
    b.append(_recs(14, 9))              # 9 records: past keep_bytes
    assert _drain(b) == list(range(12, 23))
    assert os.fstat(b._file.fileno()).st_size == 6 * REC   # cut back to keep_bytes
    b.clear()
    assert list(tmp_path.iterdir()) == []


def test_backlog_file_keeps_no_more_than_a_quarter_of_the_free_space(tmp_path, monkeypatch):
    class Vfs:
        f_frsize = 1
        f_bavail = 12 * REC             # free besides the file: a quarter is 3 records
    monkeypatch.setattr(os, "fstatvfs", lambda fd: Vfs)
    b = Backlog(tmp_path, memory_bytes=0, keep_bytes=6 * REC)
    b.append(_recs(0, 5))
    assert _drain(b) == list(range(5))
    assert os.fstat(b._file.fileno()).st_size == 3 * REC
    Vfs.f_bavail = 0                    # the file system full: the file gives it all back
    b.append(_recs(5, 2))
    assert _drain(b) == [5, 6] and os.fstat(b._file.fileno()).st_size == 0
    b.clear()
