"""mmntrace/wake.py: signals and a child's exit end the recorder's poll early,
so that it can sleep until its next deadline instead of waking ten times a
second. A stand-in tracer polls a real epoll, as transport.RingReader does."""

import os
import select
import signal
import subprocess
import sys
import threading
import time

from mmntrace.wake import POLL_CAP_MS, WAKE_CAP_MS, Wakeups


class EpollTracer:
    """Tracer.watch/unwatch/poll over a real epoll with no ring buffer in it."""

    def __init__(self, can_watch=True):
        self.ep = select.epoll()
        self.can_watch = can_watch
        self.watched = set()

    def watch(self, fd):
        if not self.can_watch:
            return False
        self.ep.register(fd, select.EPOLLIN)
        self.watched.add(fd)
        return True

    def unwatch(self, fd):
        self.ep.unregister(fd)
        self.watched.discard(fd)

    def poll(self, timeout_ms):
        self.ep.poll(timeout_ms / 1000)
        return b""


def test_a_signal_ends_the_poll_and_the_old_wakeup_fd_comes_back():
    t = EpollTracer()
    hits = []
    old = signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
    before = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before)
    try:
        with Wakeups(t) as w:
            assert w.armed and w.timeout_ms(None) == WAKE_CAP_MS
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1)).start()
            t0 = time.monotonic()
            t.poll(20_000)
            assert hits and time.monotonic() - t0 < 10     # woken, not timed out
            w.clear()
            t0 = time.monotonic()
            t.poll(300)             # the byte was taken: the next poll sleeps again
            assert time.monotonic() - t0 >= 0.25
        assert not t.watched
        assert signal.set_wakeup_fd(before) == before
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_the_child_exiting_ends_the_poll():
    t = EpollTracer()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    try:
        with Wakeups(t, child_pid=child.pid) as w:
            assert w.armed
            t0 = time.monotonic()
            t.poll(20_000)
            assert time.monotonic() - t0 < 10 and child.poll() is not None
    finally:
        child.wait()


def test_deadlines_cap_the_sleep_and_nothing_watched_means_the_old_poll():
    with Wakeups(EpollTracer()) as w:
        assert w.timeout_ms(0.5) == 501 and w.timeout_ms(-3) == 0 and w.timeout_ms(60) == WAKE_CAP_MS
    with Wakeups(EpollTracer(can_watch=False)) as w:   # the perf buffer: bcc polls it
        assert not w.armed and w.timeout_ms(60) == POLL_CAP_MS


def test_off_the_main_thread_no_wakeup_fd_is_taken():
    out = {}

    def run():
        t = EpollTracer()
        with Wakeups(t) as w:
            out["armed"], out["watched"] = w.armed, set(t.watched)
    th = threading.Thread(target=run)
    th.start()
    th.join()
    assert out == {"armed": False, "watched": set()}
