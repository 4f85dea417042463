"""The segment worker (mmntrace/segwriter.py): jobs in order, whole records,
the first error kept and the rest skipped, and a drain loop that is free
while a job runs."""

import errno
import threading

import pytest

from mmntrace.segwriter import SegmentWorker, take_job

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
