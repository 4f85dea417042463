"""The probe-overhead calibration's arithmetic (the kernel side runs in the lab:
its figures are in the recordings' metadata and in make bench)."""

from mmntrace.tracer import overhead_median


def test_median_leaves_out_the_cold_first_tenth():
    # the first tenth (a cold probe's first calls) is dropped before the median
    durs = [90_000] * 10 + [1_000] * 45 + [3_000] * 45
    assert overhead_median(durs) == 2_000.0
    assert overhead_median([5, 1, 3]) == 3.0


def test_median_of_nothing_is_unknown():
    assert overhead_median([]) is None
