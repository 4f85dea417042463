"""The line `mmntrace record` ends with (record.summary_line)."""
from mmntrace.record import summary_line


def test_streaming_line_says_records_and_drops():
    line = summary_line({"events": 236537, "violations": 0, "drops": 3, "untimed": 0, "aggregate": False,
                         "calls": {"hook": 0, "callback": 0}, "dir": "rec"})
    assert line == "mmntrace: 236,537 records, 0 sleep records, 3 dropped -> rec"


def test_untimed_calls_are_told_apart_from_lost_records():
    line = summary_line({"events": 10, "violations": 1, "drops": 3863, "untimed": 3000, "aggregate": False,
                         "calls": {}, "dir": "rec"})
    assert "3,863 dropped (of which 3,000 callback calls counted but not timed" in line
    assert line.endswith("-> rec")


def test_aggregate_line_counts_the_histograms_calls_not_records():
    # --aggregate keeps a handful of records (discovery); what it measured is the calls
    line = summary_line({"events": 14, "violations": 0, "drops": 28552, "untimed": 28552, "aggregate": True,
                         "calls": {"hook": 180933, "callback": 120614}, "dir": "/tmp/r"})
    assert line.startswith("mmntrace: 180,933 hook and 120,614 callback calls timed in kernel histograms, "
                           "0 sleep records, 28,552 dropped (of which 28,552 callback calls")
    assert "14 records" not in line


def test_lost_leaves_the_untimed_calls_out():
    from mmntrace.losses import lost
    assert lost({"total": 28552, "untimed": 28552}) == 0
    assert lost({"total": 30, "untimed": 10, "ringbuf_full": 20}) == 20
    assert lost({}) == 0
