"""The lab's failures: each one sentence, with the exit status ``mmntrace lab`` returns."""

from mmntrace.errors import MmntraceError


class LabError(MmntraceError):
    exit_code = 30


class LabTimeout(LabError):
    exit_code = 124


class LabVmDied(LabError):
    exit_code = 125
