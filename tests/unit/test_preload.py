"""mmntrace/preload.py: programs verified side by side, the longest first."""

import threading

import pytest

from mmntrace import preload


def test_prog_type_follows_bccs_prefixes():
    assert preload.prog_type("raw_tracepoint__module_load") == preload.RAW_TRACEPOINT
    assert preload.prog_type("tracepoint__module__module_load") == preload.TRACEPOINT
    assert preload.prog_type("hk_entry") == preload.KPROBE


def test_one_thread_runs_the_largest_first_and_keeps_each_outcome():
    order = []

    def job(name, fail=False):
        def call():
            order.append(name)
            if fail:
                raise OSError(f"{name} refused")
            return name.upper()
        return call

    out = preload.run([("small", 10, job("small")), ("big", 900, job("big", fail=True)), ("mid", 300, job("mid"))], n=1)
    assert order == ["big", "mid", "small"]
    assert out["small"] == "SMALL" and out["mid"] == "MID"
    assert isinstance(out["big"], OSError)


def test_two_threads_run_two_loads_at_once():
    # each job waits for the other: this only finishes if they run side by side
    both = threading.Barrier(2, timeout=10)
    out = preload.run([("a", 1, lambda: (both.wait(), "a")[1]), ("b", 2, lambda: (both.wait(), "b")[1])], n=2)
    assert out == {"a": "a", "b": "b"}


class FakeBpf:
    def __init__(self, loaded=()):
        self.funcs = {n.encode(): object() for n in loaded}
        self.calls = []

    def load_func(self, name, typ):
        self.calls.append((name.decode(), typ))
        if name == b"bad":
            raise Exception("Failed to load BPF program b'bad': Permission denied")
        return f"fn:{name.decode()}"


def test_preload_loads_bccs_programs_but_the_skipped_and_the_loaded(monkeypatch):
    monkeypatch.setattr(preload, "functions", lambda bpf: [
        ("hk_entry", 863), ("hkf_entry", 900), ("cb_entry", 748), ("raw_tracepoint__module_load", 12),
        ("bad", 5), ("iter_subs", 310)])
    b = FakeBpf(loaded=["cb_entry"])
    out = preload.preload(b, skip={"hkf_entry", "iter_subs"},
                          extra=[("iter_subs", 310, lambda: 42)], n=2)
    assert sorted(b.calls) == [("bad", preload.KPROBE), ("hk_entry", preload.KPROBE),
                               ("raw_tracepoint__module_load", preload.RAW_TRACEPOINT)]
    assert out["hk_entry"] == "fn:hk_entry" and out["iter_subs"] == 42
    assert isinstance(out["bad"], Exception)        # left for the attach to report
    assert "cb_entry" not in out and "hkf_entry" not in out


@pytest.mark.parametrize("n", [1, 3])
def test_no_jobs_no_threads(n):
    assert preload.run([], n=n) == {}
