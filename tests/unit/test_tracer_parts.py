"""The tracer's parts that need no kernel: the choice of driver callbacks,
drops by name, the untimed calls, a module's load identity, and the probe
placement's fallback and records (with a stand-in for bcc's BPF object)."""

import pytest

from mmntrace.attach import Probes
from mmntrace.callbacks import HOOK_RELEASE, Selection, chained, chained_hooks, module_loads
from mmntrace.losses import DROP_NAMES, drops_by_name, untimed_by_callback


def test_selection_all_modules_names_and_text():
    every = Selection.of()
    assert every.selected("kvm_mmu_notifier_invalidate_range_start", "kvm") and every.text() == ""
    s = Selection.of(modules=["kvm", "vmlinux"], callbacks=["mmnt_secondary_tlb"])
    assert s.selected("x", "kvm") and s.selected("builtin_cb", None)        # vmlinux: built-in
    assert s.selected("mmnt_secondary_tlb", "mmnt_test")
    assert not s.selected("mmnt_invalidate_range_start", "mmnt_test")
    assert s.text() == "--module kvm,vmlinux --callback mmnt_secondary_tlb"
    assert Selection.of(callbacks=["a"]).text() == "--callback a" and not Selection.of(callbacks=["a"]).selected("b", None)


def test_drops_by_name_every_kind_and_total():
    counts = [0] * 16
    slot = {v: k for k, v in DROP_NAMES.items()}
    counts[slot["hook"]] = 3
    counts[slot["interval_uncounted"]] = 2
    d = drops_by_name(counts, perf_lost=5, untimed=7, kretprobe_missed=11, prog_missed=13)
    assert set(DROP_NAMES.values()) <= set(d)
    assert d["hook"] == 3 and d["interval_uncounted"] == 2 and d["callback"] == 0
    assert (d["perf_lost"], d["untimed"], d["kretprobe_missed"], d["prog_missed"]) == (5, 7, 11, 13)
    assert d["total"] == 3 + 2 + 5 + 7 + 11 + 13
    assert drops_by_name([], perf_lost=0, untimed=0, kretprobe_missed=0, prog_missed=0)["total"] == 0


def test_untimed_is_expected_beyond_seen_not_the_unselected():
    assert untimed_by_callback({1: 5, 2: 3, 3: 4, 4: 1}, {1: 5, 2: 1, 4: 2}, unselected={3}) == {2: 2}


def test_module_loads_names_this_load(tmp_path):
    """A module's load is its address and its sysfs directory's inode (new at
    every load, where a reload may reuse the address)."""
    proc = tmp_path / "modules"
    proc.write_text("kvm 1388544 1 kvm_amd, Live 0xffffffffc0a00000\n"
                    "mmnt_test 24576 0 - Loading 0xffffffffc0b00000 (OE)\n"
                    "short 1 2\n")
    (tmp_path / "sys" / "kvm").mkdir(parents=True)
    got = module_loads({"kvm", "mmnt_test", "gone"}, proc=str(proc), sysfs=str(tmp_path / "sys"))
    assert got == {"kvm": f"0xffffffffc0a00000 {(tmp_path / 'sys' / 'kvm').stat().st_ino}",
                   "mmnt_test": "0xffffffffc0b00000 0"}
    assert module_loads({"kvm"}, proc=str(tmp_path / "none")) == {}


class _BPF:
    """bcc's attach calls, recorded; ``refuse``: symbols whose kprobe fails."""
    def __init__(self, refuse=(), refuse_ret=()):
        self.calls, self.refuse, self.refuse_ret = [], set(refuse), set(refuse_ret)

    def attach_kretprobe(self, event, fn_name, maxactive):
        if event.decode() in self.refuse_ret:
            raise Exception("Failed to attach BPF program b'hk_return' to kretprobe, more")
        self.calls.append(("kretprobe", event.decode(), fn_name.decode()))

    def attach_kprobe(self, event, fn_name):
        if event.decode() in self.refuse:
            raise Exception("Failed to attach BPF program to kprobe, more")
        self.calls.append(("kprobe", event.decode(), fn_name.decode()))

    def detach_kretprobe(self, event, fn_name=None):
        self.calls.append(("-kretprobe", event.decode()))

    def detach_kprobe(self, event, fn_name=None):
        self.calls.append(("-kprobe", event.decode()))


class _Tramp:
    def __init__(self, err=None):
        self.err, self.counted, self.asked = err, set(), []

    def attach(self, symbol, module, entry, exit_, hook=None, cb=None):
        self.asked.append((symbol, module, entry, exit_, hook) + ((cb,) if cb is not None else ()))
        return self.err


class _Ksyms:
    by_name = {"mmu_notifier_x": [0x1000], "drv_cb": [0x2000], "slp": [0x3000]}


def test_probes_fentry_kprobe_fallback_and_records():
    bpf, tramp = _BPF(), _Tramp()
    p = Probes(bpf, tramp, _Ksyms(), fentry=True, callback_fentry=False)
    assert p.probe("hook", "mmu_notifier_x", "release", None, "hk_entry", "hk_return", 3)
    assert tramp.asked == [("mmu_notifier_x", None, "hkf_entry", "hkf_exit", 3)] and tramp.counted == {0x1000}
    assert p.records[-1]["attach"] == "fentry" and bpf.calls == []
    # a module's callback: kprobes unless fentry was asked for by name (a trampoline pins it)
    assert p.probe("callback", "drv_cb", "release", "drv", "cb_entry", "cb_return", 3)
    assert bpf.calls == [("kretprobe", "drv_cb", "cb_return"), ("kprobe", "drv_cb", "cb_entry")]
    assert p.records[-1]["attach"] == "kprobe" and len(tramp.asked) == 1
    # a refused trampoline falls back to the kprobe pair, saying why
    bpf2 = _BPF()
    p2 = Probes(bpf2, _Tramp(err="no BTF"), _Ksyms(), fentry=True, callback_fentry=True)
    assert p2.probe("hook", "mmu_notifier_x", "release", None, "hk_entry", "hk_return", 3)
    assert p2.records[-1]["fentry_error"] == "no BTF" and p2.records[-1]["attach"] == "kprobe"


class _Links:
    """attach.KprobeLinks' calls, recorded; ``ok``: whether a link is made."""
    def __init__(self, ok=True):
        self.ok, self.calls, self.detached = ok, [], []

    def attach(self, symbol, fn_name, cookie):
        self.calls.append((symbol, fn_name, cookie))
        return self.ok

    def detach(self, symbol):
        self.detached.append(symbol)

    def detach_all(self):
        self.detached.append("*")


def test_entry_kprobes_carry_their_hook_or_callback_in_a_link_cookie():
    """Hooks and callbacks probed by kprobe: the entry program through a BPF
    link whose cookie says what it serves (after the return probe, as
    always); elsewhere, or where no link is made, bcc's attach_kprobe."""
    from mmntrace.attach import COOKIE_VALID, callback_cookie, hook_cookie
    from mmntrace.layout import header
    d = header().defines
    bpf, links = _BPF(), _Links()
    p = Probes(bpf, _Tramp(), _Ksyms(), fentry=False, callback_fentry=False, links=links)
    assert p.probe("hook", "mmu_notifier_x", "release", None, "hk_entry", "hk_return", 3)
    assert p.probe("callback", "drv_cb", "release", "drv", "cb_entry", "cb_return", 3,
                   cb=(0xffffffffc0a01230, 3, 9, False))
    assert p.probe("register", "c", None, None, "reg_register", None)      # no cookie: bcc
    assert bpf.calls == [("kretprobe", "mmu_notifier_x", "hk_return"), ("kretprobe", "drv_cb", "cb_return"),
                         ("kprobe", "c", "reg_register")]
    assert links.calls == [("mmu_notifier_x", "hk_entry", hook_cookie(3)),
                           ("drv_cb", "cb_entry", callback_cookie(0xffffffffc0a01230, 3, 9, False))]
    assert [r.get("cookie") for r in p.records] == [True, True, None]
    # the layout bpf/mmntrace.bpf.c decodes (hk_entry, cb_entry)
    ck = callback_cookie(0xffffffffc0a01230, 4, 130, True)
    ip = 0xffffffffc0a01234         # the probed address: 4 bytes on (IBT)
    assert ck & COOKIE_VALID and hook_cookie(5) & COOKIE_VALID
    assert ((ip & 0xffffffff00000000) | (ck & 0xffffffff)) == 0xffffffffc0a01230
    assert (ck >> d["MMNT_COOKIE_SERIES_SHIFT"]) & 0xffff == 130
    assert (ck >> d["MMNT_COOKIE_HOOK_SHIFT"]) & 0xff == 4 and (hook_cookie(5) >> d["MMNT_COOKIE_HOOK_SHIFT"]) & 0xff == 5
    assert (ck >> d["MMNT_COOKIE_CHAINED_SHIFT"]) & 1 == 1
    with pytest.raises(ValueError):
        callback_cookie(0, 3, 1 << 16, False)
    # unprobe and detach_all close the links too
    p.unprobe(p.records[1])
    assert links.detached[0] == "drv_cb"
    # no link made (an older kernel): bcc's kprobe, and the program looks the address up
    bpf2, links2 = _BPF(), _Links(ok=False)
    p2 = Probes(bpf2, _Tramp(), _Ksyms(), fentry=False, callback_fentry=False, links=links2)
    assert p2.probe("hook", "mmu_notifier_x", "release", None, "hk_entry", "hk_return", 3)
    assert bpf2.calls[-1] == ("kprobe", "mmu_notifier_x", "hk_entry") and "cookie" not in p2.records[-1]


def test_probes_skips_say_why_and_leave_nothing_half_attached():
    bpf = _BPF(refuse={"a"}, refuse_ret={"b"})
    p = Probes(bpf, _Tramp(), _Ksyms(), fentry=False, callback_fentry=False)
    assert not p.probe("hook", "a", "release", None, "hk_entry", "hk_return", 1)
    assert p.records[-1]["status"] == "skipped: Failed to attach BPF program to kprobe"
    assert bpf.calls == [("kretprobe", "a", "hk_return"), ("-kretprobe", "a")]      # its return probe taken back
    assert not p.probe("hook", "b", "release", None, "hk_entry", "hk_return", 1)
    assert p.records[-1]["status"].startswith("skipped: kretprobe: ")
    assert p.probe("register", "c", None, None, "reg_register", None)
    assert [r["symbol"] for r in p.records] == ["a", "b", "c"]


def test_tracepoint_raw_else_perf_else_the_failure_kept(monkeypatch):
    monkeypatch.setenv("MMNTRACE_DEBUG", "1")        # the fallback's debug line is printed too

    class TP:
        def __init__(self, raw_ok, perf_ok):
            self.raw_ok, self.perf_ok = raw_ok, perf_ok

        def attach_raw_tracepoint(self, tp, fn_name):
            if not self.raw_ok:
                raise Exception("raw refused")

        def attach_tracepoint(self, tp, fn_name):
            if not self.perf_ok:
                raise Exception("perf refused")

    p = Probes(TP(True, True), _Tramp(), _Ksyms(), fentry=False, callback_fentry=False)
    assert p.tracepoint("sched", "sched_switch") is True
    assert p.tracepoint("sched", "sched_switch", raw=False) is True
    p = Probes(TP(False, True), _Tramp(), _Ksyms(), fentry=False, callback_fentry=False)
    assert p.tracepoint("module", "module_load") is True    # (the tracer: module loads are traced)
    assert p.records[-1]["attach"] == "tracepoint"
    p = Probes(TP(False, False), _Tramp(), _Ksyms(), fentry=False, callback_fentry=False)
    assert p.tracepoint("module", "module_load", on_failure="checked every 0.5 s") is False
    assert p.records[-1]["status"] == "failed: perf refused; checked every 0.5 s"
    with pytest.raises(Exception, match="perf refused"):
        p.tracepoint("sched", "sched_switch")


def test_chained_callbacks_get_their_entry_probe_alone_but_release_ops():
    """--aggregate (MMNT_CHAIN): a callback ends where the next one of its hook
    begins, so it gets an entry probe only, by trampoline or kprobe; a release
    op keeps its exit (mmu_notifier_unregister() calls it outside any hook)."""
    agg = chained_hooks(True, aggregate=True)
    assert chained(agg, 1) and not chained(agg, HOOK_RELEASE) and not chained(chained_hooks(False, True), 1)
    bpf, tramp = _BPF(), _Tramp()
    p = Probes(bpf, tramp, _Ksyms(), fentry=True, callback_fentry=True)
    assert p.probe("callback", "drv_cb", "invalidate_range_start", "drv", "cb_entry", None, 1)
    assert tramp.asked == [("drv_cb", "drv", "cbf_entry", None, None)]
    bpf2 = _BPF()
    p2 = Probes(bpf2, _Tramp(err="no BTF"), _Ksyms(), fentry=True, callback_fentry=True)
    assert p2.probe("callback", "drv_cb", "invalidate_range_start", "drv", "cb_entry", None, 1)
    assert bpf2.calls == [("kprobe", "drv_cb", "cb_entry")]      # the fallback: no kretprobe either


def test_streaming_auto_probes_hooks_by_kprobe_and_the_rest_as_asked():
    """hook_fentry False (streaming under `auto`): the hooks get their kprobe
    pair, whose registers give range start's and end's caller without an
    unwind; might-sleep functions keep their trampoline."""
    bpf, tramp = _BPF(), _Tramp()
    p = Probes(bpf, tramp, _Ksyms(), fentry=True, callback_fentry=False, hook_fentry=False)
    assert p.probe("hook", "hk", "invalidate_range_start", None, "hk_entry", "hk_return", 0)
    assert p.probe("sleeper", "slp", None, None, "ms_entry", None)
    assert bpf.calls == [("kretprobe", "hk", "hk_return"), ("kprobe", "hk", "hk_entry")]
    assert [a[0] for a in tramp.asked] == ["slp"]
    assert [r["attach"] for r in p.records] == ["kprobe", "fentry"]


def test_streaming_chains_the_callbacks_of_the_hooks_whose_ops_return_nothing():
    """A per-event recording keeps each callback's return value: only range
    end's, the secondary-TLB hook's and change_pte's callbacks (void ops) get
    their entry probe alone; --aggregate chains every hook's but release's;
    nothing is chained unless every hook is probed (--hook)."""
    from mmntrace import kernel
    assert chained_hooks(True, aggregate=False) == {kernel.HOOK_END, kernel.HOOK_SECONDARY_TLB, kernel.HOOK_CHANGE_PTE}
    assert chained_hooks(True, aggregate=True) == set(range(kernel.NR_HOOKS)) - {HOOK_RELEASE}
    assert chained_hooks(False, aggregate=False) == chained_hooks(False, aggregate=True) == frozenset()


def test_release_chain_end_is_a_kprobe_on_synchronize_srcu_when_chained():
    """--aggregate's release hook: the last chained interval call ends where the
    core waits in synchronize_srcu() (rel_sync compares stack pointers: a kprobe,
    whatever the backend); nothing of it without chaining, without the release
    hook, or without the function."""
    from mmntrace.tracer import Tracer

    class Ksyms:
        by_name = {"synchronize_srcu": [0x4000]}

    def attach(chain, hooks, ksyms=Ksyms(), aggregate=True):
        t = object.__new__(Tracer)
        t.chain, t.hooks, t._ksyms = chain, hooks, ksyms
        t.chained_hooks = chained_hooks(chain, aggregate)
        t._probes = Probes(_BPF(), _Tramp(), ksyms, fentry=True, callback_fentry=True)
        t._attach_chain_ends()
        return t._probes
    p = attach(True, {0, 1, HOOK_RELEASE})
    assert p.bpf.calls == [("kprobe", "synchronize_srcu", "rel_sync")] and p.tramp.asked == []
    assert p.records[-1]["kind"] == "chain_end" and p.records[-1]["attach"] == "kprobe"
    assert attach(False, {0, 1, HOOK_RELEASE}).records == []
    # streaming chains void hooks only: the interval calls keep their exit probe
    assert attach(True, {0, 1, HOOK_RELEASE}, aggregate=False).records == []
    assert attach(True, {0, 1}).records == []
    assert attach(True, {0, 1, HOOK_RELEASE}, ksyms=_Ksyms()).records == []


def test_a_refused_hook_trampoline_without_the_kprobe_pair_says_so():
    """Compiled without the hooks' kprobe pair (every hook function had BTF),
    a hook whose trampoline is refused all the same cannot fall back within
    this program: Probes says so, and Tracer.attach compiles the pair in."""
    from mmntrace.attach import KprobeHooksMissing
    bpf = _BPF()
    p = Probes(bpf, _Tramp(err="ENOTSUPP"), _Ksyms(), fentry=True, callback_fentry=True, kprobe_hooks=False)
    with pytest.raises(KprobeHooksMissing) as e:
        p.probe("hook", "mmu_notifier_x", "release", None, "hk_entry", "hk_return", 3)
    assert e.value.symbol == "mmu_notifier_x" and bpf.calls == []
    # a callback's refused trampoline still has its kprobe programs
    assert p.probe("callback", "drv_cb", "release", "drv", "cb_entry", "cb_return", 3)
    assert p.records[-1]["fentry_error"] == "ENOTSUPP" and p.records[-1]["attach"] == "kprobe"
