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

    def poll(self, timeout_ms):
        self.polls += 1
        time.sleep(timeout_ms / 1000)
        return b""

    def drops(self, fresh=True):
        return {"total": 0}

    def untimed(self):
        return {}

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
