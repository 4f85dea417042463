"""record -- CMD: the command is held before its exec until the probes are
attached, runs only when let go, and never runs when the recorder fails first."""

from __future__ import annotations

import sys
import time

import pytest
from click.testing import CliRunner

from mmntrace import cli
from mmntrace.command import NOT_STARTED, HeldCommand, check_command
from mmntrace.errors import UsageError


def _wait(h, timeout=10):
    end = time.monotonic() + timeout
    while h.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    return h.poll()


def test_held_until_go_then_runs(tmp_path):
    mark = tmp_path / "ran"
    h = HeldCommand([sys.executable, "-c", f"open({str(mark)!r}, 'w').write('x')"])
    time.sleep(0.3)
    assert h.poll() is None and not mark.exists()     # held: nothing ran yet
    h.go()
    assert _wait(h) == 0 and mark.read_text() == "x"


def test_cancelled_before_go_never_runs(tmp_path):
    mark = tmp_path / "ran"
    h = HeldCommand([sys.executable, "-c", f"open({str(mark)!r}, 'w').write('x')"])
    h.cancel()
    assert h.returncode == NOT_STARTED and not mark.exists()


def test_exit_status_and_signal():
    h = HeldCommand([sys.executable, "-c", "import sys; sys.exit(3)"])
    h.go()
    assert _wait(h) == 3
    h = HeldCommand([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    h.go()
    assert _wait(h) == -15


def test_a_command_that_cannot_run_is_one_sentence_before_anything():
    with pytest.raises(UsageError, match="not an executable file"):
        check_command(["no-such-program-anywhere-42"])
    r = CliRunner().invoke(cli.main, ["record", "-o", "/tmp/x-never", "--", "no-such-program-anywhere-42"])
    assert r.exit_code == 2 and "not an executable file" in r.output


def test_pid_and_command_together_are_refused(tmp_path):
    r = CliRunner().invoke(cli.main, ["record", "-p", "1", "-o", str(tmp_path / "r"), "--", "true"])
    assert r.exit_code == 2 and "give one of them" in r.output


def test_the_held_command_does_not_run_when_recording_is_impossible(tmp_path):
    """This machine cannot trace: record fails after forking CMD; CMD must not run."""
    mark = tmp_path / "ran"
    r = CliRunner().invoke(cli.main, ["record", "-o", str(tmp_path / "r"), "--", sys.executable, "-c",
                                      f"open({str(mark)!r}, 'w').write('x')"])
    assert r.exit_code != 0
    time.sleep(0.2)
    assert not mark.exists()
