"""``mmntrace record -- CMD``: the command to trace, started by the recorder.

As ``perf record -- CMD`` does: the command is forked at once and held before
its ``exec`` until every probe is attached, so that its process id can be
compiled into the probes' filter (``-p``) and its very first MMU-notifier
call is seen. If the recorder fails before that, the held child exits
without running anything (status 127).
"""

from __future__ import annotations

import os
import shutil

from .errors import UsageError

#: the held child's exit status when the recorder never let it run
NOT_STARTED = 127


def check_command(argv: list[str]) -> None:
    """One sentence (exit 2) for a command that cannot be run, before anything is compiled."""
    prog = argv[0]
    found = shutil.which(prog) if os.sep not in prog else (prog if os.access(prog, os.X_OK) else None)
    if found is None:
        raise UsageError(f"the command to trace, {prog!r}, is not an executable file (PATH: {os.environ.get('PATH', '')})")


class HeldCommand:
    """``argv`` forked now, held before its exec until :meth:`go`."""

    def __init__(self, argv: list[str]):
        self.argv = list(argv)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                            # the child: wait for the word, then become CMD
            try:
                os.close(w)
                if os.read(r, 1) != b"g":       # EOF: the recorder gave up (or died)
                    os._exit(NOT_STARTED)
                os.close(r)
                os.execvp(self.argv[0], self.argv)
            except OSError as e:
                try:
                    os.write(2, f"mmntrace: cannot run {self.argv[0]}: {e.strerror}\n".encode())
                finally:
                    os._exit(NOT_STARTED)
            os._exit(NOT_STARTED)               # not reached
        os.close(r)
        self.pid = pid
        self._w: int | None = w
        self.returncode: int | None = None

    def go(self) -> None:
        """Let the command run (the probes are attached)."""
        if self._w is not None:
            os.write(self._w, b"g")
            os.close(self._w)
            self._w = None

    def poll(self) -> int | None:
        """Its exit status once it has exited (a signal: -N), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def cancel(self) -> None:
        """The recorder stops before go(): the child exits without running CMD
        (reaped here). After go(), nothing: CMD is the user's, left running."""
        if self._w is None:
            return
        os.close(self._w)
        self._w = None
        try:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            pass



def describe(argv: list[str]) -> str:
    return " ".join(argv) if len(" ".join(argv)) < 60 else " ".join(argv)[:57] + "..."


__all__ = ["HeldCommand", "check_command", "describe", "NOT_STARTED"]
