"""The probe-overhead calibration's arithmetic (the kernel side runs in the lab:
its figures are in the recordings' metadata and in make bench)."""

from mmntrace.calibrate import overhead_median


def test_median_leaves_out_the_cold_first_tenth():
    # the first tenth (a cold probe's first calls) is dropped before the median
    durs = [90_000] * 10 + [1_000] * 45 + [3_000] * 45
    assert overhead_median(durs) == 2_000.0
    assert overhead_median([5, 1, 3]) == 3.0


def test_median_of_nothing_is_unknown():
    assert overhead_median([]) is None


def test_syscall_function_named_as_bcc_names_it_without_reading_kallsyms_again():
    """calibrate.py names getppid's syscall function from the tracer's own symbols,
    with bcc's prefixes in bcc's order (the first under which sys_bpf exists);
    bcc's own lookup only where none is there."""
    from mmntrace.calibrate import Calibration

    class Bpf:
        asked = 0

        def get_syscall_fnname(self, name):
            Bpf.asked += 1
            return b"sys_" + name

    def cal(names):
        ksyms = type("K", (), {"by_name": {n: [0x1000] for n in names}})()
        return Calibration(Bpf(), ksyms, None, backend="kprobe", preempt_rt=False, fentry_sym=None)
    assert cal(["__x64_sys_bpf", "__ia32_sys_bpf", "__x64_sys_getppid"])._syscall_fn() == "__x64_sys_getppid"
    assert cal(["__arm64_sys_bpf"])._syscall_fn() == "__arm64_sys_getppid"
    assert cal(["sys_bpf", "__x64_sys_bpf"])._syscall_fn() == "sys_getppid"
    assert Bpf.asked == 0
    assert cal(["something_else"])._syscall_fn() == "sys_getppid" and Bpf.asked == 1
