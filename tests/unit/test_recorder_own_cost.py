"""What the streaming recorder's loop does on each pass, beside draining: in a
lab guest, where its vCPUs share one host thread, each syscall it makes is
taken from the workload it traces. The signal socket is read only when a poll
says it woke it (wake.py); the untimed counts' two maps are read in one batch
each (losses.py) and not at all for the overhead guard and the status line
(Tracer.lost); the module check slows down where module loads are traced."""

import socket
import time
from types import SimpleNamespace

from mmntrace import callbacks, losses
from mmntrace.wake import Wakeups


class _Sock:
    """A socket stand-in counting recv calls."""
    def __init__(self):
        self.recvs = 0

    def recv(self, n):
        self.recvs += 1
        raise BlockingIOError


def test_the_signal_socket_is_read_only_when_a_poll_says_it_woke():
    said = []
    tracer = SimpleNamespace(woken=lambda: said.pop(0))
    w = Wakeups(tracer)
    s = _Sock()
    w._sock = (s, None)
    said[:] = [False, False, True]
    for _ in range(3):
        w.clear()
    assert s.recvs == 1
    # a tracer that cannot say (a stand-in, the perf buffer's): read every time, as before
    w2 = Wakeups(SimpleNamespace())
    w2._sock = (s, None)
    w2.clear()
    assert s.recvs == 2


def test_a_ring_poll_says_whether_a_watched_fd_woke_it():
    from mmntrace.transport import RingReader
    r = RingReader.__new__(RingReader)
    a, b = socket.socketpair()
    import select
    r._ep = select.epoll()
    r._map_fd = 1000            # (not registered: its records are not this test's)
    r.woke_other = False
    r.consume = lambda: b""
    r.watch(a.fileno())
    r.poll(0)
    assert r.woken() is False
    b.send(b"x")
    r.poll(1000)
    assert r.woken() is True and r.woken() is False     # said once
    a.close(), b.close()


class _Key:
    def __init__(self, v):
        self.value = v


class _Table:
    def __init__(self, d, batch_ok=True):
        self.d, self.batch_ok, self.batches, self.walks = d, batch_ok, 0, 0

    def items_lookup_batch(self):
        self.batches += 1
        if not self.batch_ok:
            raise Exception("BPF_MAP_LOOKUP_BATCH has failed: Invalid argument")
        # as bcc 0.26 hands them over: plain ints (elements of a ctypes array of
        # c_ulonglong), where items() gives c_ulonglong objects
        return iter(list(self.d.items()))

    def items(self):
        self.walks += 1
        return [(_Key(k), _Key(v)) for k, v in self.d.items()]


def _counters(seen, expected, disc=None):
    c = losses.Counters.__new__(losses.Counters)
    c.bpf = {b"cb_seen": seen, b"cb_expected": expected, b"disc": disc if disc is not None else {}}
    c._batch = None
    c._untimed = None
    return c


class _Disc(dict):
    """disc[]: [2] counts the BPF side's changes to cb_expected and cb_seen."""
    def __getitem__(self, k):
        return _Key(self.get(k.value, 0))


def test_a_periodic_look_reads_the_untimed_maps_only_once_they_changed():
    """The metadata's untimed counts, refreshed every two seconds while recording,
    read two whole maps each time: most of an --aggregate recorder's own CPU
    during the workload's runs in the lab (0.05-0.15 s a run). The BPF side
    counts its changes to them (disc[2], bumped after each); a periodic look
    (fresh=False) reads them again only once that moved; a final one always."""
    disc = _Disc({2: 1})
    seen, expected = _Table({0x10: 5}), _Table({0x10: 9})
    c = _counters(seen, expected, disc)
    assert c.untimed(fresh=False) == {0x10: 4} and seen.batches == 1
    assert c.untimed(fresh=False) == {0x10: 4} and c.untimed(unselected={0x10}, fresh=False) == {}
    assert seen.batches == expected.batches == 1
    expected.d[0x10] = 11
    disc[2] = 2
    assert c.untimed(fresh=False) == {0x10: 6} and seen.batches == 2
    expected.d[0x10] = 12               # (the bump not seen yet: a final read is fresh all the same)
    assert c.untimed() == {0x10: 7} and seen.batches == 3
    # no counter to read (a bcc error): the maps every time
    c2 = _counters(_Table({0x10: 5}), _Table({0x10: 9}), disc=None)
    c2.bpf[b"disc"] = None
    assert c2.untimed(fresh=False) == c2.untimed(fresh=False) == {0x10: 4} and c2.bpf[b"cb_seen"].batches == 2


def test_untimed_counts_come_from_one_batch_lookup_per_map():
    seen, expected = _Table({0x10: 5, 0x20: 7}), _Table({0x10: 9, 0x20: 7, 0x30: 2})
    c = _counters(seen, expected)
    assert c.untimed() == {0x10: 4, 0x30: 2}
    assert c.untimed(unselected={0x30}) == {0x10: 4}
    assert (seen.batches, expected.batches, seen.walks, expected.walks) == (2, 2, 0, 0)


def test_a_kernel_without_batch_lookups_gets_the_walk_and_is_not_asked_again():
    seen, expected = _Table({0x10: 5}, batch_ok=False), _Table({0x10: 9}, batch_ok=False)
    c = _counters(seen, expected)
    assert c.untimed() == {0x10: 4} and c.untimed() == {0x10: 4}
    assert seen.batches == 1 and seen.walks == 2 and c._batch is False


def test_the_module_check_slows_down_where_module_loads_are_traced(monkeypatch):
    checks = []
    monkeypatch.setattr(callbacks, "module_loads", lambda mods: checks.append(mods) or {})
    cbs = callbacks.DriverCallbacks.__new__(callbacks.DriverCallbacks)
    cbs.counters = SimpleNamespace(walk_gen=lambda: gen[0])
    cbs.probes = SimpleNamespace(records=[{"kind": "callback", "module": "mmnt_test", "status": "attached"}])
    cbs._mod_state, cbs._mods_checked, cbs._gen_seen = {}, 0.0, 0
    gen = [0]
    now = [1000.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    for traced, period in ((False, callbacks.MODULE_CHECK_S), (True, callbacks.MODULE_CHECK_TRACED_S)):
        cbs.load_events = traced
        checks.clear()
        for _ in range(40):                     # a poll every 0.1 s for 4 s
            cbs.check_modules()
            now[0] += 0.1
        assert abs(len(checks) - 4.0 / period) <= 1, (traced, len(checks))
    gen[0] += 1                                 # a module load: checked at the next poll
    checks.clear()
    cbs.check_modules()
    assert len(checks) == 1


def test_a_burst_gathers_as_long_as_its_rate_leaves_room_in_the_buffer():
    from mmntrace.record import (COALESCE_FILL, COALESCE_MAX_S, COALESCE_MIN, COALESCE_MIN_S, gather_s,
                                 ring_capacity)
    cap = ring_capacity(4096, 112)          # a 16 MiB ring (the streaming default until 2026-12-06), 120-byte strides
    assert cap == 4096 * 4096 // 120
    # the bench's rate (about 100,000 records a second): the longest gather
    assert gather_s(cap, 10_000, 0.1) == COALESCE_MAX_S
    # five million a second: a quarter of the buffer's worth, not the 100 ms that would lose records
    g = gather_s(cap, 50_000, 0.01)
    assert g < COALESCE_MAX_S and g * 5_000_000 <= COALESCE_FILL * cap * 1.0001
    # what comes in at the rate seen, during the gather, never fills more than COALESCE_FILL
    for n, window in ((300, 0.001), (5_000, 0.002), (100_000, 0.05), (1_000_000, 0.1)):
        g = gather_s(cap, n, window)
        assert g == 0.0 or n / window * g <= COALESCE_FILL * cap * 1.0001
    # no gather: a trickle, an unknown buffer or rate, or too short a gather to be worth it
    assert gather_s(cap, COALESCE_MIN - 1, 0.001) == 0.0
    assert gather_s(0, 10_000, 0.1) == 0.0
    assert gather_s(cap, 10_000, 0.0) == 0.0
    assert gather_s(ring_capacity(64, 112), 100_000, 0.001) == 0.0     # 8 ms of it fills a small buffer
    assert gather_s(cap, 10_000, 0.1) >= COALESCE_MIN_S


def test_untimed_callbacks_are_named_as_probed_never_through_kallsyms():
    """Naming a callback through the kernel's symbol table after probes went in
    means reading all of /proc/kallsyms again (stale: BPF programs came since):
    2 s of the recorder's CPU in the 6.12 guest, taken from the first workload
    run after the start. The untimed counts (written with the metadata while
    recording) and the aggregate tables name callbacks as they were probed."""
    from mmntrace import record
    from mmntrace.symbolize import Symbolizer

    class T:
        def callback_symbol(self, addr):
            return {0x10: "kvm_mmu_notifier_invalidate_range_start [kvm]"}.get(addr)

        def ksym(self, addr):
            raise AssertionError("kallsyms read to name a callback")

        def untimed(self):
            return {0x10: 3}
    s = record.Session.__new__(record.Session)
    s.t, s.redact = T(), False
    sym = Symbolizer(s.t, SimpleNamespace(events=()))
    assert s._untimed(sym) == [{"callback": "kvm_mmu_notifier_invalidate_range_start [kvm]", "func": 0x10, "count": 3}]


def test_a_callback_left_unselected_is_named_when_found(monkeypatch):
    cbs = callbacks.DriverCallbacks.__new__(callbacks.DriverCallbacks)
    cbs.ksyms = SimpleNamespace(lookup=lambda a, exact, force: ("kvm_mmu_notifier_clear_young", "kvm", 0))
    cbs.known, cbs.names, cbs.unselected = {}, {}, set()
    cbs.probes = SimpleNamespace(records=[])
    cbs.selection = SimpleNamespace(selected=lambda n, m: False, text=lambda: "--module mmnt_test")
    cbs.attach(0x20, 1)
    assert cbs.name(0x20) == "kvm_mmu_notifier_clear_young [kvm]" and cbs.unselected == {0x20}
