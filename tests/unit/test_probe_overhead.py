"""The probe-overhead calibration's arithmetic (the kernel side runs in the lab:
its figures are in the recordings' metadata and in make bench)."""

from mmntrace.calibrate import _HOOK_CALIB, overhead_median


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


class _Table(dict):
    """A bcc table as calibrate.py uses it: ctypes keys and values, .value on read."""
    class Leaf:
        def __init__(self, *a):
            self.a = a

    def __setitem__(self, k, v):
        self.__dict__.setdefault("written", []).append(v)
        super().__setitem__(getattr(k, "value", k), v)

    def __getitem__(self, k):
        v = super().get(getattr(k, "value", k), 0)
        return v if hasattr(v, "value") else type("V", (), {"value": v})()

    def __delitem__(self, k):
        super().__delitem__(getattr(k, "value", k))


def _calibrator(median, modes: frozenset = frozenset({False}), calls: list | None = None):
    """A Calibration against a stand-in for the kernel side: the callbacks'
    probes it attaches go to ``calls``; ``median()`` is each phase's measurement."""
    import mmntrace.calibrate as cmod
    calls = [] if calls is None else calls

    class Bpf:
        tables = {b"hook_ip": _Table(), b"cb_info": _Table(), b"calib": _Table(), b"calib_dur": _Table()}

        def __getitem__(self, name):
            return self.tables[name]

        def attach_kprobe(self, event, fn_name):
            calls.append(("kprobe", event.decode(), fn_name.decode()))

        def attach_kretprobe(self, event, fn_name, maxactive):
            calls.append(("kretprobe", event.decode(), fn_name.decode()))

        def detach_kprobe(self, event, fn_name):
            pass

        def detach_kretprobe(self, event, fn_name):
            pass

    class Tramp:
        def attach(self, symbol, module, entry, exit_, check_patched=True, cb=None):
            calls.append(("fentry", symbol, entry, exit_))
            assert cb is not None and cb[1] == _HOOK_CALIB     # the copy carries its cb_info entry

        def detach(self, addr=None):
            pass

    ksyms = type("K", (), {"by_name": {"__x64_sys_bpf": [1], "__x64_sys_getppid": [0x1000],
                                       cmod.CALIB_INNER: [0x2000]}})()
    c = cmod.Calibration(Bpf(), ksyms, Tramp(), backend="fentry", preempt_rt=False, fentry_sym=None, modes=modes)
    c._median = median
    c.tables = Bpf.tables
    return c


def _calibration(modes: frozenset):
    """The callbacks' probes a calibration attaches; every getppid() 'measured' 1 us."""
    import mmntrace.calibrate as cmod
    calls: list = []
    c = _calibrator(lambda: 1000.0, modes, calls)
    c._overhead()
    # struct cbinfo as the BPF side reads it: (func, hook, series, chained), chained as
    # probed: the function's address and address + 4, for each way in each round
    ways = sorted(modes)
    assert [v.a[3] for v in c.tables[b"cb_info"].written] == [w for w in ways for _ in (0, 1)] * cmod.CALIB_ROUNDS
    return [x for x in calls if x[1] == cmod.CALIB_INNER]


def test_callback_dispatch_calibrated_as_callbacks_are_probed():
    """--aggregate chains callbacks (entry probes only): the dispatch taken off
    their hooks is calibrated with the stand-in callback probed the same way."""
    from mmntrace.calibrate import CALIB_INNER
    from mmntrace.calibrate import CALIB_ROUNDS
    assert _calibration(frozenset({False})) == [("kretprobe", CALIB_INNER, "cb_return"), ("kprobe", CALIB_INNER, "cb_entry"),
                                         ("fentry", CALIB_INNER, "cbf_entry", "cbf_exit")] * CALIB_ROUNDS
    assert _calibration(frozenset({True})) == [("kprobe", CALIB_INNER, "cb_entry"),
                                        ("fentry", CALIB_INNER, "cbf_entry", None)] * CALIB_ROUNDS
    # a per-event recording chains the void hooks' callbacks only: both ways, each round
    assert _calibration(frozenset({False, True})) == [
        ("kretprobe", CALIB_INNER, "cb_return"), ("kprobe", CALIB_INNER, "cb_entry"),
        ("fentry", CALIB_INNER, "cbf_entry", "cbf_exit"),
        ("kprobe", CALIB_INNER, "cb_entry"), ("fentry", CALIB_INNER, "cbf_entry", None)] * CALIB_ROUNDS


def test_each_way_of_probing_gets_its_own_dispatch_cost():
    """Chained callbacks (an entry probe alone) and probe pairs cost their hook
    different dispatch: each has its calib[] slot (bpf/context.h), and a way not
    calibrated takes the other's figure (release ops under --aggregate)."""
    import mmntrace.calibrate as cmod
    # per round: alone, kprobe pair, fentry pair, kprobe entry, fentry entry
    medians = iter([1000.0, 1600.0, 1400.0, 1300.0, 1200.0] * cmod.CALIB_ROUNDS)
    c = _calibrator(lambda: next(medians), frozenset({False, True}))
    c._overhead()
    assert c.probe_overhead == {"kprobe": 600, "fentry": 400, "kprobe_entry": 300, "fentry_entry": 200}
    slots = {k: v.value for k, v in c.tables[b"calib"].items()}
    assert slots == {8: 600, 9: 400, 16: 300, 17: 200}
    medians = iter([1000.0, 1300.0, 1200.0] * cmod.CALIB_ROUNDS)
    c = _calibrator(lambda: next(medians), frozenset({True}))
    c._overhead()
    assert c.probe_overhead == {"kprobe_entry": 300, "fentry_entry": 200}
    assert {k: v.value for k, v in c.tables[b"calib"].items()} == {8: 300, 9: 200, 16: 300, 17: 200}


def test_a_phase_stalled_by_the_host_does_not_make_the_dispatch_cost():
    """Each phase is measured CALIB_ROUNDS times, alternating, and its least
    median kept: a stall lengthens one measurement, never shortens one. The
    medians below: alone, kprobe, fentry, then again; the first fentry phase
    stalled (a 6.1 lab run took 1,672 ns per fentry callback off each hook)."""
    import mmntrace.calibrate as cmod
    assert cmod.CALIB_ROUNDS == 2
    medians = iter([1000.0, 1500.0, 2672.0, 1010.0, 1520.0, 1350.0])
    c = _calibrator(lambda: next(medians))
    c._overhead()
    assert c.probe_overhead == {"kprobe": 500, "fentry": 350}
    assert cmod.least([None, 3.0, 2.0]) == 2.0 and cmod.least([None]) is None
