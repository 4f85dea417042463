"""The subscribers' callbacks, probed as they are found, and the modules
that come and go under them.

The BPF side reports every ops table it sees (a registration, the start-up
sweep, or an mm's subscription list at its first hook: bpf/discovery.h) as an
OPS record: one callback function and the hook that calls it.
:class:`DriverCallbacks` probes each new function (the generic callback
programs: ``cb_entry``/``cb_return``, or the fentry pair) unless the user's
choice (:class:`Selection`) leaves it out, and notices a module unloaded
(and maybe loaded again at the same address, where the kernel will not re-arm
the old probes) so that its callbacks are retired and found again.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import time
from typing import Callable

import numpy as np

from . import hooks as hookmod
from . import kernel
from .layout import header, record_dtype
from .quiet import debug

REC_OPS = header().defines["MMNT_REC_OPS"]


_debug = debug


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which driver callbacks to probe: those of ``modules`` (``vmlinux``:
    built-in subscribers) or named in ``callbacks``; both None: every one."""
    modules: frozenset | None = None
    callbacks: frozenset | None = None

    @classmethod
    def of(cls, modules=None, callbacks=None) -> "Selection":
        return cls(frozenset(modules) if modules else None, frozenset(callbacks) if callbacks else None)

    def selected(self, symbol: str, module: str | None) -> bool:
        """Is this driver callback to be probed?"""
        if self.modules is None and self.callbacks is None:
            return True
        return bool((self.modules and (module or "vmlinux") in self.modules)
                    or (self.callbacks and symbol in self.callbacks))

    def text(self) -> str:
        """The choice as the options say it ("" for all)."""
        out = []
        if self.modules:
            out.append("--module " + ",".join(sorted(self.modules)))
        if self.callbacks:
            out.append("--callback " + ",".join(sorted(self.callbacks)))
        return " ".join(out)


#: how often the module check runs (it reads /proc/modules and stats sysfs: 13
#: checks took 0.5 s of a profiled streaming recorder's main thread over an 8 s
#: run in a lab guest), where module loads are not traced, and where they are
MODULE_CHECK_S = 0.5
MODULE_CHECK_TRACED_S = 5.0


def module_loads(names, proc: str = "/proc/modules", sysfs: str = "/sys/module") -> dict[str, str]:
    """Each of these loaded modules -> what identifies this load of it: its
    load address and the inode of its sysfs directory, new at every load (a
    reload may reuse the address); not the state, which goes from Loading to
    Live in one load."""
    out = {}
    try:
        with open(proc) as f:
            for line in f:
                p = line.split()
                if len(p) >= 6 and p[0] in names:
                    try:
                        ino = os.stat(f"{sysfs}/{p[0]}").st_ino
                    except OSError:
                        ino = 0
                    out[p[0]] = f"{p[5]} {ino}"
    except OSError:
        pass
    return out


HOOK_RELEASE = header().enums["mmnt_hook"]["MMNT_HOOK_RELEASE"]


def chained_hooks(chain: bool, aggregate: bool) -> frozenset[int]:
    """The hooks whose callbacks are probed at their entry only (cb_info's
    ``chained``, which bpf/mmntrace.bpf.c follows: each ends where the next
    callback of its hook begins, or where the hook returns). None without
    ``chain`` (every hook probed). With --aggregate, which keeps no return
    value, every hook's but the release ops' (mmu_notifier_unregister() calls
    those outside any hook); a per-event recording keeps the return values, so
    only the hooks whose ops return nothing (range end, the secondary-TLB
    hook, change_pte: hooks.Hook.returns)."""
    if not chain:
        return frozenset()
    return frozenset(h.id for h in hookmod.HOOKS
                     if h.id != HOOK_RELEASE and (aggregate or not h.returns))


def chained(hooks: frozenset[int], hook: int) -> bool:
    """Is a callback of this hook probed at its entry only? (``hooks``: :func:`chained_hooks`)"""
    return hook in hooks


#: the order a new subscriber's callbacks are probed in: each probe takes tens of
#: milliseconds (hundreds while a workload keeps the CPUs busy), and the calls
#: before it are counted untimed. The ops every invalidation calls go first,
#: then change_pte (6.1's COW), the aging ops (reclaim), and release (once, at exit).
ATTACH_ORDER = (kernel.HOOK_START, kernel.HOOK_END, kernel.HOOK_SECONDARY_TLB, kernel.HOOK_INTERVAL,
                kernel.HOOK_CHANGE_PTE, kernel.HOOK_CLEAR_FLUSH_YOUNG, kernel.HOOK_CLEAR_YOUNG,
                kernel.HOOK_TEST_YOUNG, kernel.HOOK_RELEASE)


def attach_order(hooks) -> list[int]:
    """Indices of ``hooks`` (the hook ids of a batch of OPS records, every
    subscriber found at once) in the order their callbacks are probed: the
    most called first (ATTACH_ORDER), the batch's order among equals."""
    rank = {h: i for i, h in enumerate(ATTACH_ORDER)}
    return sorted(range(len(hooks)), key=lambda i: rank.get(int(hooks[i]), len(rank)))


class DriverCallbacks:
    """The callbacks of one tracer: ``probes`` places them (mmntrace/attach.py,
    whose records they join), ``hist`` gives each its histogram series,
    ``counters`` the BPF side's generation, ``drain`` keeps the record buffer
    drained while attaching (each attach takes a while). ``chain``: the
    hooks whose callbacks get entry probes only (:func:`chained_hooks`; the
    program compiled with MMNT_CHAIN), a callback ending where the next one of
    its hook begins."""

    def __init__(self, bpf, probes, ksyms, hist, counters, *, hooks: set[int], selection: Selection,
                 drain: Callable[[], None], chain: frozenset[int] = frozenset()):
        self.bpf = bpf
        self.chain = chain
        self.probes = probes
        self.ksyms = ksyms
        self.hist = hist
        self.counters = counters
        self.hooks = hooks
        self.selection = selection
        self.drain = drain
        self.known: dict[int, dict] = {}        # callback address -> its record in probes.records
        self.names: dict[int, str] = {}         # callback address -> "name [module]", kept after an unload
        self.unselected: set[int] = set()       # callback addresses left unprobed by the selection
        self.ops_handled = 0                    # OPS records from the buffer whose callbacks were probed
        self._mod_state: dict[str, str | None] = {}   # module -> its load (module_loads) when probed
        self._mods_checked = 0.0
        # module loads move the BPF side's generation (the module_load tracepoint
        # attached: Tracer._attach_module_load): a reload is seen at once, and
        # the periodic check is left the unloads, which nothing calls any more
        self.load_events = False
        self._gen_seen = 0                      # walk_gen when the modules were last checked
        self._dtype = record_dtype()

    def name(self, addr: int) -> str | None:
        """A callback's name as it was when probed (records still in flight
        when its module unloads are named right, not after what is there now)."""
        return self.names.get(addr)

    def attached(self) -> list[tuple[int, int]]:
        """(address, hook) of every callback probed now."""
        return [(a["addr"], a["hook_id"]) for a in self.probes.records
                if a["kind"] == "callback" and a["status"] == "attached"]

    def process(self, raw: bytes, sent: bool = True) -> None:
        """Probe the callbacks of the ops tables among ``raw``. ``sent``: they came
        through the record buffer, whose OPS records the BPF side counts; once as
        many are handled here, hooks stop counting untimed calls (bpf/discovery.h)."""
        if not raw:
            return
        recs = np.frombuffer(raw, self._dtype)
        is_ops = recs["type"] == REC_OPS
        if not np.count_nonzero(is_ops):
            return      # (a streaming recorder's every poll: events only)
        ops = recs[is_ops]
        for r in ops[attach_order(ops["hook"])]:
            func, hook = int(r["func"]), int(r["hook"])
            _debug(f"ops table {int(r['addr']):#x}: hook {hook} -> {func:#x} (known: {func in self.known})")
            if func in self.known or hook not in self.hooks:
                continue
            self.attach(func, hook)
            self.drain()    # what comes in meanwhile is returned by the next poll
        if sent:
            self.ops_handled += len(ops)
            self.bpf[b"disc"][ctypes.c_int(1)] = ctypes.c_uint64(self.ops_handled)

    def attach(self, func: int, hook: int) -> None:
        """Probe the callback at ``func``, called by hook id ``hook``."""
        hit = self.ksyms.lookup(func, exact=True, force=True)
        info = dict(kind="callback", symbol=hex(func), hook=kernel.HOOK_NAMES.get(hook, str(hook)),
                    module=None, status="attached", addr=func, hook_id=hook)
        self.known[func] = info
        records = self.probes.records
        if hit is None:
            info["status"] = "skipped: no symbol at this address"
            records.append(info)
            return
        name, mod, _ = hit
        info["symbol"], info["module"] = name, mod
        # named for the records, the untimed counts and the tables whether probed or
        # not (a name from kallsyms later could mean reading all of it again: 2 s)
        self.names[func] = f"{name} [{mod}]" if mod else name
        if not self.selection.selected(name, mod):
            info["status"] = "not selected: " + self.selection.text()
            self.unselected.add(func)
            records.append(info)
            return
        self._retire_stale(name, func)
        if len(set(self.ksyms.by_name.get(name, []))) > 1 and self.ksyms.by_name[name][0] != func:
            info["status"] = "skipped: symbol name is ambiguous"
            records.append(info)
            return
        table = self.bpf[b"cb_info"]
        series = self.hist.series_for(func, hook)   # its own, kept across windows and re-probes
        entry_only = chained(self.chain, hook)
        for k in (func, func + 4):
            table[ctypes.c_uint64(k)] = table.Leaf(func, hook, series, entry_only)   # struct cbinfo
        at = len(records)
        if mod and mod not in self._mod_state:   # its load now: check_modules compares with it
            self._mod_state[mod] = module_loads({mod}).get(mod)
        ok = self.probes.probe("callback", name, info["hook"], mod, "cb_entry",
                               None if entry_only else "cb_return", hook, cb=(func, hook, series, entry_only))
        records[at]["addr"] = func
        self.known[func] = records[at]
        if not ok:
            self._forget_cb_info(func)

    def _forget_cb_info(self, func: int) -> None:
        table = self.bpf[b"cb_info"]
        for k in (func, func + 4):
            try:
                del table[ctypes.c_uint64(k)]
            except KeyError:
                pass

    def _retire(self, a: dict) -> None:
        """Detach a callback whose module went away (the kernel already disarmed its
        probe) so that the name can be probed again; its entry stays in the
        metadata as "detached: module unloaded"."""
        self.probes.unprobe(a)
        if a.get("addr") is not None:
            self._forget_cb_info(a["addr"])
            self.known.pop(a["addr"], None)
        a["status"] = "detached: module unloaded"

    def _retire_stale(self, name: str, func: int) -> None:
        """A driver module was unloaded and loaded again between two module checks:
        its callback has the same name at a new address."""
        for a in self.probes.records:
            if (a.get("kind") == "callback" and a.get("symbol") == name and a.get("addr") not in (None, func)
                    and a.get("status") == "attached"):
                self._retire(a)

    def check_modules(self) -> None:
        """At a poll at most every MODULE_CHECK_S (a poll ends at a record, a signal
        or the recorder's next deadline: mmntrace/wake.py), and at once after a
        module load (the BPF side's generation moved: bpf/discovery.h): did a
        module with probed callbacks go away or come back (maybe at the same
        address, where the kernel will not re-arm the old probes: its sysfs
        directory is new)? Then retire its callbacks and forget the ops tables
        and mms seen, so that the BPF side reports them again and they are
        re-probed."""
        gen = self.counters.walk_gen()
        moved, self._gen_seen = gen != self._gen_seen, gen   # (a check that bumps it sets it again)
        now = time.monotonic()
        if not moved and now - self._mods_checked < (MODULE_CHECK_TRACED_S if self.load_events else MODULE_CHECK_S):
            return
        self._mods_checked = now
        mods = {a["module"] for a in self.probes.records if a.get("kind") == "callback" and a.get("module")
                and a.get("status") == "attached"}
        if not mods:
            return
        cur = module_loads(mods)
        changed = {m for m in mods if m in self._mod_state and cur.get(m) != self._mod_state[m]}
        if not changed:
            return
        _debug(f"modules changed: {sorted(changed)}")
        for a in self.probes.records:
            if a.get("kind") == "callback" and a.get("module") in changed and a.get("status") == "attached":
                self._retire(a)
        self.bpf[b"seen_ops"].clear()
        self.bpf[b"seen_mm"].clear()
        self._gen_seen = self.counters.bump_walk_gen()     # tasks' cached walks are stale too
        for m in changed:
            del self._mod_state[m]     # taken again when its callbacks are re-probed
            self.probes.tramp.close_btf_obj(m)
        self.ksyms._load()
