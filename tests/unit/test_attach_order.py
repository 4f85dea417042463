"""The order a new subscriber's callbacks are probed in (callbacks.attach_order),
and a ring buffer drain that ends (transport.RingReader.consume)."""
import numpy as np

from mmntrace import kernel
from mmntrace.callbacks import attach_order
from mmntrace.transport import RingReader

from ringsim import Ring


def test_the_ops_every_invalidation_calls_are_probed_first_release_last():
    # struct mmu_notifier_ops order, as the BPF side reports a table: release first
    hooks = [kernel.HOOK_RELEASE, kernel.HOOK_CLEAR_FLUSH_YOUNG, kernel.HOOK_CLEAR_YOUNG, kernel.HOOK_TEST_YOUNG,
             kernel.HOOK_CHANGE_PTE, kernel.HOOK_START, kernel.HOOK_END, kernel.HOOK_SECONDARY_TLB]
    order = [hooks[i] for i in attach_order(hooks)]
    assert order[:3] == [kernel.HOOK_START, kernel.HOOK_END, kernel.HOOK_SECONDARY_TLB]
    assert order[3] == kernel.HOOK_CHANGE_PTE
    assert order[-1] == kernel.HOOK_RELEASE
    assert sorted(attach_order(hooks)) == list(range(len(hooks)))


def test_two_subscribers_found_at_once_get_their_hot_callbacks_first_in_batch_order():
    a = [kernel.HOOK_RELEASE, kernel.HOOK_START, kernel.HOOK_END]
    b = [kernel.HOOK_RELEASE, kernel.HOOK_START, kernel.HOOK_END]
    assert attach_order(np.array(a + b, dtype=np.uint8)) == [1, 4, 2, 5, 0, 3]
    assert attach_order([]) == []


class _Producer:
    """prod_pos of a ring whose producer commits another record each time it is read."""
    def __init__(self, ring, start, last):
        self.ring, self.pos, self.last = ring, start, last

    def __getitem__(self, _i):
        self.pos = min(self.pos + self.ring.stride, self.last)
        return self.pos


def _ring(rec_size=16, slots=64):
    sim = Ring(rec_size, 1 << (slots * RingReader.stride_of(rec_size) - 1).bit_length())
    for i in range(sim.size // sim.stride):     # committed records, numbered
        sim.put(bytes([i % 251]) + bytes(rec_size - 1))
    r = RingReader.__new__(RingReader)
    r.rec_size, r.stride, r.data, r.cons_pos = rec_size, sim.stride, sim.data, sim.cons_pos
    return r


def test_a_drain_takes_what_was_committed_when_it_began_however_fast_the_producer():
    r = _ring()
    r.prod_pos = _Producer(r, 10 * r.stride, 40 * r.stride)     # 11 at the call, one more per look after
    raw = r.consume()
    assert len(raw) == 11 * r.rec_size
    assert int(r.cons_pos[0]) == 11 * r.stride
    assert r.consume()      # the rest is the next call's
