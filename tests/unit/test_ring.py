"""The ring buffer's records as transport.consume_ring takes them from a data
area mapped once: whole records, in order, those that wrap past its end put
together from their two pieces, up to the first one still being written."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mmntrace.errors import BpfLoadError
from mmntrace.transport import consume_ring

from ringsim import Ring


def body(rng, n):
    return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


@settings(max_examples=200, deadline=None)
@given(rec_size=st.integers(1, 200), pages=st.sampled_from([1, 2, 4]), start_slot=st.integers(0, 10_000),
       start_off=st.integers(0, 511), n=st.integers(0, 80), busy_at=st.one_of(st.none(), st.integers(0, 80)),
       seed=st.integers(0, 2 ** 32 - 1))
def test_records_come_whole_and_in_order_wherever_they_wrap(rec_size, pages, start_slot, start_off, n, busy_at, seed):
    rng = np.random.default_rng(seed)
    size = 4096 * pages
    stride = (rec_size + 8 + 7) & ~7
    n = min(n, size // stride)          # what the ring holds
    r = Ring(rec_size, size, start=start_slot * size + start_off * 8)
    for i in range(n):
        r.put(body(rng, rec_size), busy=(i == busy_at))
    got = b"".join(consume_ring(r.data, r.cons_pos, r.prod, r.stride, rec_size))
    k = busy_at if busy_at is not None and busy_at < n else n
    assert got == b"".join(r.written[:k])
    assert int(r.cons_pos[0]) == r.prod - (n - k) * r.stride      # released up to the busy one


def test_a_wrapping_record_is_put_together_from_both_ends():
    r = Ring(20, 4096, start=4096 - 16)     # header + 8 bytes before the end, 12 after
    r.put(bytes(range(20)))
    r.put(bytes(range(100, 120)))
    assert consume_ring(r.data, r.cons_pos, r.prod, r.stride, 20) == [bytes(range(20)), bytes(range(100, 120))]


def test_a_record_of_another_size_is_an_error():
    r = Ring(24, 4096, start=4096 - 16)
    r.put(bytes(24))
    with pytest.raises(BpfLoadError):
        consume_ring(r.data, r.cons_pos, r.prod, r.stride, 16)


def test_a_record_committed_while_the_batch_is_read_ends_it_and_comes_next(monkeypatch):
    """The producer commits while we read: a header BUSY when the batch was
    compared may be committed when it is looked at again. That is no error
    (15 recorders stopped on it in the lab): the batch ends before it, and
    the next call takes it."""
    from mmntrace import transport
    r = Ring(24, 4096)
    r.put(bytes(range(24)))
    r.put(bytes(range(50, 74)), busy=True)
    real = transport._header_at

    def commit_then_read(words, i):
        if i == r.stride // 4:      # the second record: the kernel commits it now
            r.data[r.stride:r.stride + 4] = np.frombuffer(np.uint32(24).tobytes(), np.uint8)
        return real(words, i)
    monkeypatch.setattr(transport, "_header_at", commit_then_read)
    assert consume_ring(r.data, r.cons_pos, r.prod, r.stride, 24) == [bytes(range(24))]
    assert int(r.cons_pos[0]) == r.stride
    assert consume_ring(r.data, r.cons_pos, r.prod, r.stride, 24) == [bytes(range(50, 74))]


def test_the_perf_buffer_path_keeps_each_record_without_perfs_padding():
    """transport.EventBuffer over bcc's perf buffer (no ring buffer): each sample
    arrives padded (112-byte records as 116 bytes), the record alone is kept;
    fill() gathers, take() hands over once; the lost count goes to on_lost; no fd
    can wake it, so woken() always says look."""
    import ctypes
    from mmntrace.transport import EventBuffer
    lost = []

    class Events:
        def open_perf_buffer(self, cb, page_cnt, lost_cb):
            self.cb, self.pages, self.lost_cb = cb, page_cnt, lost_cb

    class Bpf:
        def __init__(self):
            self.events = Events()
            self.samples = []

        def __getitem__(self, name):
            assert name == b"events"
            return self.events

        def perf_buffer_poll(self, timeout_ms):
            for s in self.samples:
                buf = ctypes.create_string_buffer(s, len(s))
                self.events.cb(0, ctypes.addressof(buf), len(s))
            self.samples = []
            self.events.lost_cb(3)

    bpf = Bpf()
    b = EventBuffer(bpf, 4, ringbuf=False, pages=8, on_lost=lost.append)
    assert bpf.events.pages == 8 and b.take() == b""
    bpf.samples = [b"abcdPAD", b"efghPAD", b"xy"]          # the last one too short: not a record
    b.fill(0)
    bpf.samples = [b"ijkl"]
    b.fill(0)
    assert b.take() == b"abcdefghijkl" and b.take() == b""
    assert lost == [3, 3]
    assert b.watch(5) is False and b.woken() is True
    b.close()


def test_a_programs_counters_come_from_one_call_or_its_fdinfo(monkeypatch):
    """transport.prog_counters: the counters asked for from BPF_OBJ_GET_INFO_BY_FD
    where the kernel's struct holds them all, else from the fdinfo (a kernel
    before recursion_misses), a counter neither has left out."""
    from mmntrace import bpfsys, transport
    calls = {"info": {"run_time_ns": 7, "run_cnt": 2, "recursion_misses": 1}, "fdinfo": {}}
    monkeypatch.setattr(bpfsys, "prog_counters", lambda fd: calls["info"])
    monkeypatch.setattr(transport, "fdinfo", lambda fd: calls["fdinfo"])
    assert transport.prog_counters(3) == {"run_time_ns": 7, "run_cnt": 2, "recursion_misses": 1}
    assert transport.prog_counter(3, "run_cnt") == 2
    calls["info"] = {"run_time_ns": 7, "run_cnt": 2}
    calls["fdinfo"] = {"run_time_ns": "8", "run_cnt": "3", "recursion_misses": "4"}
    assert transport.prog_counters(3, ("run_time_ns", "recursion_misses")) == {"run_time_ns": 8, "recursion_misses": 4}
    calls["info"], calls["fdinfo"] = None, {"run_time_ns": "9"}
    assert transport.prog_counters(3) == {"run_time_ns": 9}
    assert transport.prog_counter(3, "recursion_misses") is None


def test_closed_trampoline_programs_keep_their_counts(monkeypatch):
    """fentry.Trampolines.detach: a function's programs ([prog, link, ...]) give
    their run time, and their misses where the function is counted, before
    they are closed; one read of the counters a program."""
    from mmntrace import fentry
    reads, closed = [], []

    def counters(fd, keys):
        reads.append(fd)
        return {k: v for k, v in (("recursion_misses", fd), ("run_time_ns", 100 * fd)) if k in keys}
    monkeypatch.setattr(fentry, "prog_counters", counters)
    monkeypatch.setattr(fentry, "_close", closed.append)
    t = fentry.Trampolines(lambda name: b"", lambda: {})
    t.fds = {0x10: [3, 4, 5, 6], 0x20: [7, 8]}
    t.counted = {0x10}
    assert t.missed() == 8 and reads == [3, 5]
    reads.clear()
    t.detach()
    assert reads == [3, 5, 7] and closed == [6, 5, 4, 3, 8, 7]
    assert t.closed_missed == 8 and t.closed_run_ns == 1500 and t.missed() == 8
