"""Ground truth helpers for the lab tests (they live in mmnlab.harness)."""

from mmnlab.harness import (Bpftrace, Recorder, WorkloadProcess, event_names, expect_dmesg,  # noqa: F401
                            kernel_symbols, numa_scanner_off, record_workload)
