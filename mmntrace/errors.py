"""Errors that the CLI turns into one sentence and a distinct exit code.

Library code raises these; only :mod:`mmntrace.cli` turns them into exit codes
(the habit from retsnoop/libbpf-tools: a missing requirement fails early with
one clear sentence, never a traceback).
"""


class MmntraceError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(MmntraceError):
    exit_code = 2


class NotRootError(MmntraceError):
    exit_code = 10


class NoKprobesError(MmntraceError):
    exit_code = 11


class NoKernelInfoError(MmntraceError):
    """Neither BTF nor usable kernel headers."""

    exit_code = 12


class HeadersMismatchError(MmntraceError):
    exit_code = 13


class NoMmuNotifierError(MmntraceError):
    exit_code = 14


class BpfLoadError(MmntraceError):
    exit_code = 15


class RecordingError(MmntraceError):
    """A recording directory that cannot be read: empty, corrupt, newer, not a recording."""

    exit_code = 20


class RecordingVersionError(RecordingError):
    exit_code = 21


class DiskFullError(MmntraceError):
    exit_code = 22


class OverheadGuardError(MmntraceError):
    """The daemon stopped itself: its BPF programs used more CPU than --max-bpf-cpu allows."""

    exit_code = 23
