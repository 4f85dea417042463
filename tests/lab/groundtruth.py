"""Ground truth helpers for the lab tests (they live in mmnlab.harness)."""

from mmnlab.harness import (Bpftrace, Recorder, WorkloadProcess, expect_dmesg, kernel_symbols,  # noqa: F401
                            record_workload)
