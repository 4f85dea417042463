"""The recording loop (mmntrace/record.py Session.run) with a tracer that
has nothing to say: it must sleep until its next deadline, not spin. A
loop that polled with a zero timeout once no segment was due took a whole
CPU of the lab guest in the bench's ambient runs (tool's own CPU 95-110 %)."""

import time
from types import SimpleNamespace

from mmntrace import record


class IdleTracer:
    backend, ringbuf, layout, aggregate, pid, children, comm = "kprobe", True, "btf", True, None, False, None
    modules = callbacks = min_latency_ns = None
    kernel_hist = False
    calibration = None

    def __init__(self):
        self.timing = {}
        self.polls = 0

    def start(self):
        pass

    def attached(self):
        return []

    def probe_state(self):
        return []

    def poll(self, timeout_ms):
        self.polls += 1
        time.sleep(timeout_ms / 1000)
        return b""

    def drops(self, fresh=True, untimed=None):
        return {"total": 0}

    def untimed(self, fresh=True):
        return {}

    def lost(self, fresh=True):
        return 0

    def ops_unsent(self):
        return 0

    def histograms(self):
        return []

    totals = via = histograms

    def stop(self):
        pass


FEATURES = SimpleNamespace(release="6.12.0-test", hooks=(), events=(), context_source="preempt_count",
                           hook_symbol=lambda h: None)


def test_an_idle_recording_sleeps_between_polls(tmp_path):
    t = IdleTracer()
    s = record.Session(t, FEATURES, tmp_path / "rec", duration=1.5, segment_s=0.2, hand_over=False)
    t0 = time.monotonic()
    out = s.run()
    took = time.monotonic() - t0
    assert out["events"] == 0 and 1.4 < took < 5
    # the poll sleeps up to its deadline (100 ms at most where nothing can wake it):
    # a few dozen polls, not the thousands of a zero timeout
    assert t.polls <= 40, t.polls
    assert (tmp_path / "rec" / "metadata.json").exists()


class BurstTracer(IdleTracer):
    """Records at 20,000 a second for ``burst_s``, then none."""

    def __init__(self, burst_s):
        super().__init__()
        from mmntrace import decode
        self.size = decode.DTYPE.itemsize
        self.t0 = None
        self.burst_s = burst_s
        self.sent = 0

    def poll(self, timeout_ms):
        self.polls += 1
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        if now - self.t0 < self.burst_s:
            time.sleep(0.01)
            self.sent += 200
            return bytes(200 * self.size)
        time.sleep(min(timeout_ms, 20) / 1000)
        return b""


def test_a_burst_is_written_once_it_is_over(tmp_path, monkeypatch):
    """A burst's records wait, raw, and become segments once it is over: the
    conversion does not compete with the traced tasks (mmntrace/segwriter.py);
    none is lost."""
    jobs = []

    def write_segment(self, writer, sym, raw):
        jobs.append((time.monotonic(), len(raw)))

    monkeypatch.setattr(record.Session, "_write_segment", write_segment)
    t = BurstTracer(burst_s=1.5)
    s = record.Session(t, FEATURES, tmp_path / "rec", duration=4.5, segment_s=0.2, hand_over=False)
    out = s.run()
    assert out["events"] == t.sent > 20_000
    assert sum(n for _t, n in jobs) == t.sent * t.size          # every record in a segment
    burst_end = t.t0 + t.burst_s
    assert jobs and all(at >= burst_end for at, _n in jobs), [round(at - burst_end, 2) for at, _n in jobs]
    # written while the recorder was still running (quiet for a second), not at its stop
    assert jobs[0][0] < t.t0 + 4.0, round(jobs[0][0] - t.t0, 2)
