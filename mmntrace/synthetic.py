"""Synthetic recordings in the real format, for tests, benchmarks and trying the
report, plots and notebooks without a traceable kernel.

    python -m mmntrace.synthetic OUTDIR [--events N] [--segments K] [--aggregate]
                                        [--idle-start S] [--idle-end S] [--release-once]

The mix imitates a KVM host with the project's test module loaded: range
start/end with KVM and test-module callbacks, the secondary-TLB hook with its
four caller classes, the young ops, a release, and an injected might-sleep and
sleep in the test module's secondary-TLB callback.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import hooks
from .recording import RecordingWriter

SEC = "secondary_tlb"
#: the secondary-TLB hook's ops member on 6.12 (its kernel symbol: __mmu_notifier_ + it); 6.1: invalidate_range
SEC_612 = "arch_invalidate_secondary_tlbs"
#: (kind, hook, callback, weight, median ns, sigma of log)
MIX = [
    ("hook", "invalidate_range_start", None, 0.17, 1500, 0.8),
    ("callback", "invalidate_range_start", "kvm_mmu_notifier_invalidate_range_start [kvm]", 0.15, 800, 0.9),
    ("callback", "invalidate_range_start", "mmnt_invalidate_range_start [mmnt_test]", 0.05, 300, 0.5),
    ("hook", "invalidate_range_end", None, 0.17, 900, 0.7),
    ("callback", "invalidate_range_end", "kvm_mmu_notifier_invalidate_range_end [kvm]", 0.15, 200, 0.6),
    ("callback", "invalidate_range_end", "mmnt_invalidate_range_end [mmnt_test]", 0.05, 150, 0.5),
    ("hook", SEC, None, 0.12, 400, 0.6),
    ("callback", SEC, "mmnt_secondary_tlb [mmnt_test]", 0.06, 150, 0.5),
    ("hook", "clear_flush_young", None, 0.04, 2000, 0.9),
    ("callback", "clear_flush_young", "kvm_mmu_notifier_clear_flush_young [kvm]", 0.0399, 1500, 0.9),
    ("hook", "release", None, 0.0001, 50000, 0.3),
]
HOOK_IDS = {n: hooks.by_name(n).id for n in ("invalidate_range_start", "invalidate_range_end", SEC, "release",
                                              "clear_flush_young")}
EVENTS = ["unmap", "clear", "protection_vma", "protection_page", "soft_dirty", "release", "migrate", "exclusive"]
EVENT_P = [0.3, 0.4, 0.1, 0.05, 0.02, 0.01, 0.1, 0.02]
RANGE_CALLERS = ["zap_pte_range", "change_protection", "migrate_vma_collect", "try_to_unmap_one",
                 "__split_huge_pmd", "wp_page_copy", "madvise_free_pte_range", "unmap_vmas"]
#: secondary-TLB hook: (caller, caller_class, weight)
SEC_CALLERS = [("ptep_clear_flush", "ptl_clear", 0.35), ("wp_page_copy", "ptl_clear", 0.15),
               ("flush_tlb_mm_range", "tlb_flush", 0.25), ("arch_tlbbatch_flush", "tlb_flush", 0.05),
               ("wp_page_reuse", "permission_upgrade", 0.08), ("ptep_set_access_flags", "permission_upgrade", 0.02),
               ("__mmu_notifier_invalidate_range_end", "range_end", 0.10)]
COMMS = ["qemu-system-x86", "qemu-system-x86", "kvm-nx-lpage-re", "khugepaged", "kcompactd0", "python3",
         "postgres", "java", "kswapd0", "numad"]
META = {"kernel": {"release": "6.12.0-synthetic", "arch": "x86_64"}, "backend": "kprobe", "aggregate": False,
        "hooks": list(HOOK_IDS), "filters": {"pid": None, "comm": None}, "synthetic": True}


def hook_symbol(hook: str, secondary: str = SEC_612) -> str:
    """The kernel's entry point of a hook, on the kernel whose secondary-TLB op is ``secondary``."""
    return f"__mmu_notifier_{secondary}" if hook == SEC else hooks.by_name(hook).symbols[0]


def attached(secondary: str = SEC_612) -> list[dict]:
    out = [{"kind": "hook", "symbol": hook_symbol(h, secondary), "module": None, "hook": h, "status": "attached"}
           for h in HOOK_IDS]
    out += [{"kind": "callback", "symbol": cb, "module": cb.split("[")[-1].rstrip("]"), "hook": h,
             "status": "attached"} for k, h, cb, *_ in MIX if cb]
    out += [{"kind": "sleeper", "symbol": s, "module": None, "hook": None, "status": "attached"}
            for s in ("mutex_lock", "msleep", "down_read", "__cond_resched")]
    out.append({"kind": "tracepoint", "symbol": "sched:sched_switch", "module": None, "hook": None,
                "status": "attached"})
    out.append({"kind": "callback", "symbol": "amdgpu_mn_invalidate_gfx [amdgpu]", "module": "amdgpu",
                "hook": "invalidate_range_start", "status": "skipped: module not loaded"})
    return out


def events(n: int, rng: np.random.Generator, ts0: int, span_ns: int, seq0: int = 0, slow=None) -> pd.DataFrame:
    """n event records, timestamps spread evenly over [ts0, ts0 + span_ns);
    latency x3 while ``slow[0] <= ts < slow[1]`` (shows on the heatmap)."""
    w = np.array([m[3] for m in MIX])
    mi = rng.choice(len(MIX), n, p=w / w.sum())
    kind = np.array([m[0] for m in MIX], dtype=object)[mi]
    hook = np.array([m[1] for m in MIX], dtype=object)[mi]
    cb = np.array([m[2] for m in MIX], dtype=object)[mi]
    med = np.array([m[4] for m in MIX], float)[mi]
    sig = np.array([m[5] for m in MIX], float)[mi]
    ts = np.uint64(ts0) + np.sort(rng.integers(0, span_ns, n)).astype(np.uint64)
    phase = (ts >= slow[0]) & (ts < slow[1]) if slow else np.zeros(n, bool)
    dur = np.maximum(1, med * np.exp(rng.normal(0, 1, n) * sig) * np.where(phase, 3.0, 1.0)).astype(np.uint64)
    is_range = np.isin(hook, ["invalidate_range_start", "invalidate_range_end"])
    ev = np.where(is_range, np.array(EVENTS, dtype=object)[rng.choice(len(EVENTS), n, p=EVENT_P)], None)
    pidx = np.minimum(rng.zipf(1.6, n) - 1, len(COMMS) - 1)
    pid = (1000 + pidx * 7).astype(np.uint32)
    comm = np.array(COMMS, dtype=object)[pidx]
    mm = np.uint64(0xffff888100000000) + (pidx // 2).astype(np.uint64) * np.uint64(0x1000)
    is_sec = (hook == SEC) & (kind == "hook")
    sw = np.array([c[2] for c in SEC_CALLERS])
    si = rng.choice(len(SEC_CALLERS), n, p=sw / sw.sum())
    caller = np.where(kind == "hook", np.array(RANGE_CALLERS, dtype=object)[rng.integers(0, len(RANGE_CALLERS), n)],
                      None)
    caller = np.where(is_sec, np.array([c[0] for c in SEC_CALLERS], dtype=object)[si], caller)
    caller_class = np.where(is_sec, np.array([c[1] for c in SEC_CALLERS], dtype=object)[si], None)
    must = (hook == SEC) | (hook == "clear_flush_young")
    return pd.DataFrame({
        "kind": kind, "ts_ns": ts, "cpu": rng.integers(0, 16, n).astype(np.uint32), "pid": pid, "tid": pid,
        "comm": comm, "mm": mm, "hook_id": np.array([HOOK_IDS[h] for h in MIX_HOOKS], np.uint8)[mi],
        "event_id": np.where(is_range, 1, -1).astype(np.int32), "start": np.zeros(n, np.uint64),
        "end": np.full(n, 4096, np.uint64), "blockable": ~must, "preempt_count": must.astype(np.uint32),
        "atomic": must, "irqs_off": np.zeros(n, bool), "must_not_sleep": must, "dur_ns": dur,
        "ret": np.zeros(n, np.int32), "seq": np.arange(seq0, seq0 + n, dtype=np.uint64),
        "stack_id": np.where(kind == "hook", 7, -1).astype(np.int32), "func": np.zeros(n, np.uint64),
        "hook": pd.Categorical(hook), "event": ev, "callback": cb, "caller": caller, "caller_class": caller_class,
    })


MIX_HOOKS = [m[1] for m in MIX]

SLEEP_STACK = ["__schedule", "schedule", "msleep", "mmnt_secondary_tlb+0x40 [mmnt_test]",
               "__mmu_notifier_arch_invalidate_secondary_tlbs", "ptep_clear_flush", "wp_page_copy",
               "handle_mm_fault", "do_user_addr_fault", "exc_page_fault", "asm_exc_page_fault"]
MUTEX_STACK = ["mutex_lock", "mmnt_secondary_tlb+0x20 [mmnt_test]", "__mmu_notifier_arch_invalidate_secondary_tlbs",
               "flush_tlb_mm_range", "zap_pte_range", "unmap_vmas", "exit_mmap", "mmput", "do_exit"]


def sleeps(n_inv: int, rng: np.random.Generator, ts0: int, span_ns: int, seq0: int = 10 ** 12) -> pd.DataFrame:
    """n_inv violating invocations of the test module's secondary-TLB callback:
    most take a mutex (might_sleep), one in ten msleeps (might_sleep then sleep)."""
    rows = []
    for i, t in enumerate(np.sort(rng.integers(0, span_ns, n_inv))):
        base = dict(ts_ns=np.uint64(ts0 + int(t)), cpu=1, pid=1000, tid=1000, comm="qemu-system-x86",
                    mm=0xffff888100000000, hook_id=2, event_id=-1, start=0, end=4096, blockable=False,
                    atomic=bool(i % 3), irqs_off=False, must_not_sleep=True, preempt_count=1, dur_ns=0, ret=0,
                    seq=seq0 + i, stack_id=3, func=0, hook=SEC, event=None, callback="mmnt_secondary_tlb [mmnt_test]")
        if i % 10 == 0:
            rows.append(base | dict(rule="might_sleep", sleeper="msleep", stack=SLEEP_STACK[2:]))
            rows.append(base | dict(ts_ns=base["ts_ns"] + np.uint64(1000), rule="sleep", sleeper=None, stack_id=4,
                                    stack=SLEEP_STACK))
        else:
            rows.append(base | dict(rule="might_sleep", sleeper="mutex_lock", stack=MUTEX_STACK))
    return pd.DataFrame(rows)


def hist_frame(ev: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """What --aggregate would have kept of these events: log2 histograms (bcc's
    bpf_log2l slots) and exact totals."""
    from .aggregate import log2_bucket
    d = ev.assign(slot=log2_bucket(ev["dur_ns"].to_numpy()), callback=ev["callback"].astype(object),
                  hook=ev["hook"].astype(str))
    d.loc[d["slot"] == 0, "slot"] = 1
    keys = ["hook", "callback", "event"]
    h = d.groupby(keys + ["slot"], dropna=False).size().rename("count").reset_index()
    h["func"] = 0
    h["hook_id"] = [hooks.by_name(x).id for x in h["hook"]]     # an old name too (legacy_names)
    h["event_id"] = -1
    tot = d.groupby(keys, dropna=False)["dur_ns"].agg(["size", "sum"]).reset_index()
    totals = [{"hook": r.hook, "event": None if pd.isna(r.event) else r.event,
               "callback": None if pd.isna(r.callback) else r.callback, "count": int(r.size), "sum_ns": int(r.sum)}
              for r in tot.itertuples()]
    h["callback"] = h["callback"].map(lambda v: None if pd.isna(v) else v)
    h["event"] = h["event"].map(lambda v: None if pd.isna(v) else v)
    return h[["func", "hook_id", "event_id", "slot", "count", "hook", "event", "callback"]], totals


#: what release_once adds: the hook and each subscriber's release op, once (a process exiting)
RELEASE_ONCE = [("hook", None, 60_000), ("callback", "kvm_mmu_notifier_release [kvm]", 40_000),
                ("callback", "mmnt_release [mmnt_test]", 2_000)]


def _release_once(ev: pd.DataFrame) -> pd.DataFrame:
    """ev with its release records replaced by one release as a process exit
    makes it, after the last record: one hook call and one call of each
    callback in RELEASE_ONCE (series of one call, as in a real recording)."""
    hook = ev["hook"].astype(object)
    ev = ev[hook != "release"].assign(hook=hook[hook != "release"])
    last = ev.iloc[-1]
    rows = []
    for i, (kind, cb, dur) in enumerate(RELEASE_ONCE):
        rows.append(last.to_dict() | {"kind": kind, "hook": "release", "callback": cb, "dur_ns": np.uint64(dur),
                                      "ts_ns": np.uint64(int(last["ts_ns"]) + 1000 * (i + 1)),
                                      "seq": np.uint64(int(last["seq"]) + i + 1), "hook_id": HOOK_IDS["release"],
                                      "event": None, "event_id": -1, "caller": "exit_mmap" if cb is None else None,
                                      "caller_class": None})
    out = pd.concat([ev, pd.DataFrame(rows).astype(ev.dtypes.to_dict())], ignore_index=True)
    out["hook"] = pd.Categorical(out["hook"])      # as the recorder writes it
    return out


def _as_kernel(df: pd.DataFrame, secondary: str, scale: dict[str, float] | None) -> pd.DataFrame:
    """Records with the secondary-TLB hook named ``secondary`` (as mmntrace
    named it before the stable names: ``invalidate_range`` before 6.6),
    durations of the callbacks (or hooks, by name) in ``scale`` multiplied by
    its factor."""
    if df.empty:
        return df
    if secondary != SEC:
        hook = df["hook"].astype(object)
        df = df.assign(hook=hook.where(hook != SEC, secondary))
        if "kind" in df:          # event segments keep the hook as a categorical, as the recorder writes it
            df["hook"] = pd.Categorical(df["hook"])
    for name, f in (scale or {}).items():
        hit = (df["callback"] == name) | ((df["hook"].astype(object) == name) & df["callback"].isna())
        if "dur_ns" in df and hit.any():
            df.loc[hit, "dur_ns"] = (df.loc[hit, "dur_ns"].to_numpy() * f).astype(np.uint64)
    return df


def write(path, n_events: int = 20_000, segments: int = 4, violations: int = 30, *, aggregate: bool = False,
          span_s: float = 30.0, seed: int = 1, ts0: int = 5_000_000_000_000,
          release: str = META["kernel"]["release"], secondary: str = SEC_612, backend: str = META["backend"],
          scale: dict[str, float] | None = None, idle_start_s: float = 0.0, idle_end_s: float = 0.0,
          end: bool = True, release_once: bool = False, legacy_names: bool = False,
          min_latency_ns: int | None = None) -> Path:
    """Write a synthetic recording to ``path`` (a new directory) and return it.

    ``release`` and ``secondary`` (the secondary-TLB hook's ops member) make
    it look like another kernel's (for 6.1: ``secondary="invalidate_range"``:
    the hook is still ``secondary_tlb``, its symbol in ``hook_symbols``
    ``__mmu_notifier_invalidate_range``). ``legacy_names``: as mmntrace wrote
    recordings before the stable names, the hook named after the kernel's
    symbol (``invalidate_range``, ``arch_invalidate_secondary_tlbs``) and no
    ``hook_symbols``. ``scale`` multiplies the latency
    of the callbacks (or hooks) it names, to make a before and an after.
    The records span ``span_s`` seconds from ``ts0``; the recording lasts
    ``idle_start_s`` more before them and ``idle_end_s`` more after (an idle
    start or end). ``end=False`` leaves it as a recorder killed before it
    finished leaves one: no end time, status "recording". ``release_once``:
    the release hook called once at the end, with one call of each of its
    callbacks (RELEASE_ONCE), as when the traced process exits.
    ``min_latency_ns``: as `record --min-latency` writes one, the calls at
    least that long as events and every call in the histograms."""
    rng = np.random.default_rng(seed)
    span = int(span_s * 1e9)
    named = secondary if legacy_names else SEC         # the secondary-TLB hook's name in the tables
    ren = lambda h: named if h == SEC else h  # noqa: E731
    att = [a | {"hook": ren(a["hook"])} for a in attached(secondary)]
    if release_once:
        att += [{"kind": "callback", "symbol": cb, "module": cb.split("[")[-1].rstrip("]"), "hook": "release",
                 "status": "attached"} for _k, cb, _d in RELEASE_ONCE if cb]
    keep_hist = aggregate or min_latency_ns is not None
    w = RecordingWriter(path, META | {"aggregate": aggregate, "min_latency_ns": min_latency_ns,
                                      "attached": att, "backend": backend,
                                      "kernel": {"release": release, "arch": META["kernel"]["arch"]},
                                      "hooks": [ren(h) for h in META["hooks"]],
                                      "events_enum": {str(i): e for i, e in enumerate(EVENTS)}}
                        | ({} if legacy_names else {"hook_symbols": {h: hook_symbol(h, secondary)
                                                                     for h in META["hooks"]}}))
    start = time.time()
    per = -(-n_events // segments) if segments else 0
    seg_span = span // max(segments, 1)
    hist_parts = []
    sl_all = sleeps(violations, rng, ts0, span) if violations else pd.DataFrame()
    for k in range(segments):
        n = min(per, n_events - k * per)
        if n <= 0:
            break
        ev = events(n, rng, ts0 + k * seg_span, seg_span, seq0=k * per,
                    slow=(ts0 + span // 2, ts0 + span // 2 + span // 6))
        if release_once:
            ev = _release_once(ev) if k == segments - 1 or (k + 1) * per >= n_events else \
                ev[ev["hook"].astype(object) != "release"]
        ev = _as_kernel(ev, named, scale)
        lo, hi = ts0 + k * seg_span, ts0 + (k + 1) * seg_span
        sl = sl_all[(sl_all["ts_ns"] >= lo) & (sl_all["ts_ns"] < hi)] if len(sl_all) else sl_all
        sl = _as_kernel(sl, named, None)
        if keep_hist:
            hist_parts.append(ev)
        if aggregate:
            w.write_segment(pd.DataFrame(), sl.reset_index(drop=True))
        elif min_latency_ns is not None:
            w.write_segment(ev[ev["dur_ns"] >= min_latency_ns].reset_index(drop=True), sl.reset_index(drop=True))
        else:
            w.write_segment(ev, sl.reset_index(drop=True))
    extra = {}
    if keep_hist and hist_parts:
        h, totals = hist_frame(pd.concat(hist_parts, ignore_index=True))
        w.write_hist(h)
        extra["totals"] = totals
    # the recording's start and end on the records' clock (CLOCK_MONOTONIC)
    w.meta["might_sleep"] = True        # its violations include might-sleep calls
    w.meta["start_time"] = start
    w.meta["start_ns"] = ts0 - int(idle_start_s * 1e9)
    if not end:
        w.meta.update(extra)
        w.flush_meta()
        return Path(path)
    w.finish(drops={"hook": 0, "callback": 0, "sleep": 0, "kretprobe_missed": 3, "perf_lost": 0, "total": 3},
             **extra)
    # a recording of idle_start_s + span_s + idle_end_s seconds, whatever the time it took to write
    length_s = idle_start_s + span_s + idle_end_s
    w.meta["end_time"] = start + length_s
    w.meta["end_ns"] = w.meta["start_ns"] + int(length_s * 1e9)
    w.flush_meta()
    return Path(path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic mmntrace recording.")
    ap.add_argument("out")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--segments", type=int, default=10)
    ap.add_argument("--violations", type=int, default=40)
    ap.add_argument("--aggregate", action="store_true")
    ap.add_argument("--min-latency-ns", type=int, metavar="NS",
                    help="as record --min-latency: events only for calls at least NS long, histograms of all")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--release-once", action="store_true",
                    help="one release (hook and each callback called once), as when the traced process exits")
    ap.add_argument("--idle-start", type=float, default=0.0, metavar="S",
                    help="seconds the recording runs before its first record")
    ap.add_argument("--idle-end", type=float, default=0.0, metavar="S",
                    help="seconds the recording runs after its last record")
    a = ap.parse_args(argv)
    if a.idle_start < 0 or a.idle_end < 0:
        ap.error("--idle-start and --idle-end must not be negative")
    print(write(a.out, a.events, a.segments, a.violations, aggregate=a.aggregate, seed=a.seed,
                min_latency_ns=a.min_latency_ns,
                idle_start_s=a.idle_start, idle_end_s=a.idle_end, release_once=a.release_once))


if __name__ == "__main__":
    main()
