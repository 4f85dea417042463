"""Waking the recorder only when there is something to do.

A recorder that polls its record buffer ten times a second costs its machine
those wake-ups even when no MMU notifier runs: 1.4 % of a CPU, measured in
the lab's 6.12 guest for an idle ``record --aggregate``, which a lab guest's
workload pays in full (its vCPUs share one host thread). Everything the
recorder must react to can wake it instead:

- records: the ring buffer's epoll wakes on the first record after a drain
  (a discovered ops table, a registration, events);
- signals (Ctrl-C, SIGTERM, SIGHUP): ``signal.set_wakeup_fd`` writes a byte
  to a socket watched by the same epoll;
- ``record -- CMD`` exiting: its pidfd, watched too;

so the loop sleeps until the next of its own deadlines (a segment to flush,
the overhead guard, the status line, ``--duration``). Where the buffer cannot
be watched (the perf buffer goes through bcc's own epoll) or this is not the
main thread (no wakeup fd), the sleep is capped at :data:`POLL_CAP_MS` as
before::

    with Wakeups(tracer, child_pid=None) as w:
        raw = tracer.poll(w.timeout_ms(next_deadline - time.monotonic()))
"""

from __future__ import annotations

import os
import signal
import socket
import threading

#: the longest sleep where nothing wakes the recorder early (the old fixed poll)
POLL_CAP_MS = 100
#: the longest sleep where every event of interest wakes it: a bound, not a period
WAKE_CAP_MS = 2000


class Wakeups:
    """Signals and a child's exit as readable fds in ``tracer``'s epoll
    (``tracer.watch(fd)``: False where its buffer has no epoll of ours)."""

    def __init__(self, tracer, child_pid: int | None = None):
        self.tracer = tracer
        self.child_pid = child_pid
        self._sock: tuple[socket.socket, socket.socket] | None = None
        self._pidfd: int | None = None
        self._old_wakeup: int | None = None
        self._watched: list[int] = []
        self.armed = False          # every wake-up source is watched: long sleeps are safe

    def __enter__(self) -> "Wakeups":
        if threading.current_thread() is not threading.main_thread():
            return self             # set_wakeup_fd is the main thread's only
        r, w = socket.socketpair()
        r.setblocking(False)
        w.setblocking(False)
        if not self._watch(r.fileno()):
            r.close()
            w.close()
            return self
        self._sock = (r, w)
        self._watched.append(r.fileno())
        self._old_wakeup = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        ok = True
        if self.child_pid is not None:
            try:
                self._pidfd = os.pidfd_open(self.child_pid)
            except (AttributeError, OSError):   # Python < 3.9, kernel < 5.3, or already reaped
                ok = False
            else:
                ok = self._watch(self._pidfd)
                if ok:
                    self._watched.append(self._pidfd)
        self.armed = ok
        return self

    def _watch(self, fd: int) -> bool:
        watch = getattr(self.tracer, "watch", None)     # (a stand-in tracer may have none)
        return bool(watch and watch(fd))

    def timeout_ms(self, until_next_s: float | None) -> int:
        """How long the next poll may sleep: until the loop's next deadline
        (seconds from now; None: none), capped as the wake-ups allow."""
        cap = WAKE_CAP_MS if self.armed else POLL_CAP_MS
        if until_next_s is None:
            return cap
        return max(0, min(cap, int(until_next_s * 1000) + 1))

    def clear(self) -> None:
        """Empty the signal socket (the byte of a signal already handled): where
        the tracer says whether a watched fd woke its poll (``woken()``), only
        then. Reading it on every pass of a busy loop was a failing syscall a
        pass, 7 % of the streaming recorder's own time in a lab guest."""
        woken = getattr(self.tracer, "woken", None)
        if self._sock is not None and (woken is None or woken()):
            try:
                while self._sock[0].recv(512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass

    def __exit__(self, *_):
        for fd in self._watched:
            self.tracer.unwatch(fd)     # (only a tracer that watched has fds here)
        self._watched.clear()
        if self._sock is not None:
            signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            for s in self._sock:
                s.close()
            self._sock = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        self.armed = False
        return False


__all__ = ["Wakeups", "POLL_CAP_MS", "WAKE_CAP_MS"]
