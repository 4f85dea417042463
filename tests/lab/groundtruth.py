"""Ground truth helpers for the lab tests (they live in mmntrace.harness)."""

from mmntrace.harness import Bpftrace, Recorder, WorkloadProcess, expect_dmesg, kernel_symbols  # noqa: F401
