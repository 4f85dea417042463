"""The hooks mmntrace traces: one table, one stable name per hook on every kernel.

Each :class:`Hook` says what the BPF build, the CLI (``--hooks``), the
recorder, the report and the comparison need to know of one hook: its id
(``enum mmnt_hook`` in bpf/mmntrace.h, read from the header, never copied),
its stable name (what recordings and reports call it on every kernel), the
kernel entry points that may implement it, the ``struct mmu_notifier_ops``
members it dispatches, the names older recordings gave it, and the
properties the aggregation keys on. The kernel's own symbol for a hook is a
field of the recording's metadata (``hook_symbols``), not its name: the
secondary-TLB hook is ``secondary_tlb`` on 6.1 and on 6.12 alike.
"""

from __future__ import annotations

import dataclasses
import functools


@functools.lru_cache(maxsize=1)
def _ids() -> dict[str, int]:
    """enum mmnt_hook, from the header. Read on first use, not at import:
    the CLI builds ``--hooks``' help from this table and never needs numpy
    (:mod:`mmntrace.layout`) for it."""
    from .layout import BPF_HEADER, header
    return dict(header(BPF_HEADER).enums["mmnt_hook"])


@dataclasses.dataclass(frozen=True)
class Hook:
    enum: str                         # its enumerator in enum mmnt_hook: MMNT_HOOK_<enum>
    name: str                         # the stable name: recordings, reports, --hooks
    symbols: tuple[str, ...]          # kernel entry points, first present wins
    ops: tuple[str, ...] = ()         # struct mmu_notifier_ops members it dispatches
    aliases: tuple[str, ...] = ()     # names recordings gave it before the stable names (kernel-following)
    ranged: bool = False              # carries a struct mmu_notifier_range: a range and an event
    never_sleeps: bool = False        # its callbacks must not sleep, whatever the range says
    secondary_tlb: bool = False       # the secondary-TLB hook (callers table, caller classes)
    range_end: bool = False           # ends a range (6.1: calls the secondary-TLB ops itself)
    returns: bool = True              # its ops return a value (void ones: a per-event recording chains them)

    @property
    def id(self) -> int:
        """The enum mmnt_hook value (bpf/mmntrace.h, the one source of ids)."""
        return _ids()[f"MMNT_HOOK_{self.enum}"]

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that means this hook: stable, old, kernel symbols, ops members."""
        return (self.name, *self.aliases, *self.symbols, *self.ops)


def _hook(enum: str, name: str, symbols: tuple[str, ...], **kw) -> Hook:
    return Hook(enum=enum, name=name, symbols=symbols, **kw)


#: every hook, in report order
#: how real sleeps in a must-not-sleep callback are seen (record and daemon
#: --sleep-detect, Tracer(sleep_detect=)): the task's voluntary-switch count
#: read at each must-not-sleep section's entry and return, nothing else (the
#: default of both); or a sched_switch program on every context switch of the
#: machine, with the sleeper's stack
SLEEP_DETECT = ("count", "switch")

HOOKS: tuple[Hook, ...] = (
    _hook("START", "invalidate_range_start", ("__mmu_notifier_invalidate_range_start",),
          ops=("invalidate_range_start",), ranged=True),
    _hook("END", "invalidate_range_end", ("__mmu_notifier_invalidate_range_end",),
          ops=("invalidate_range_end",), ranged=True, range_end=True, returns=False),
    # renamed by upstream 1af5a8109904 ("mmu_notifiers: rename invalidate_range notifier", 6.6)
    _hook("SECONDARY_TLB", "secondary_tlb",
          ("__mmu_notifier_arch_invalidate_secondary_tlbs", "__mmu_notifier_invalidate_range"),
          ops=("arch_invalidate_secondary_tlbs", "invalidate_range"),
          aliases=("arch_invalidate_secondary_tlbs", "invalidate_range"), never_sleeps=True, secondary_tlb=True,
          returns=False),
    # static in mm/mmu_notifier.c: only when the compiler kept it out of line
    _hook("INTERVAL", "interval_invalidate", ("mn_itree_invalidate",), ranged=True),
    _hook("RELEASE", "release", ("__mmu_notifier_release",), ops=("release",), returns=False),
    _hook("CLEAR_FLUSH_YOUNG", "clear_flush_young", ("__mmu_notifier_clear_flush_young",),
          ops=("clear_flush_young",), never_sleeps=True),
    _hook("CLEAR_YOUNG", "clear_young", ("__mmu_notifier_clear_young",), ops=("clear_young",), never_sleeps=True),
    _hook("TEST_YOUNG", "test_young", ("__mmu_notifier_test_young",), ops=("test_young",), never_sleeps=True),
    # removed by upstream 3c6a1af6a24b ("mm/mmu_notifier: remove change_pte", 6.9)
    _hook("CHANGE_PTE", "change_pte", ("__mmu_notifier_change_pte",), ops=("change_pte",), never_sleeps=True,
          returns=False),
)

#: enumerators of enum mmnt_hook that name no hook, values as module
#: attributes (read from the header on first use): ``NR_HOOKS`` (hook ids are
#: below it, histogram series from it), ``CALIB`` (in-kernel only: the
#: probe-overhead calibration), ``NONE`` (a callback that ran under no hook we traced)
NOT_HOOKS = ("NR_HOOKS", "CALIB", "NONE")


def __getattr__(name: str) -> int:
    if name in NOT_HOOKS:
        return _ids()["MMNT_NR_HOOKS" if name == "NR_HOOKS" else f"MMNT_HOOK_{name}"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _by_id() -> dict[int, Hook]:
    return {h.id: h for h in HOOKS}


@functools.lru_cache(maxsize=None)
def _by_any_name() -> dict[str, Hook]:
    out: dict[str, Hook] = {}
    for h in HOOKS:
        for n in h.names:
            if out.setdefault(n, h) is not h:
                raise ValueError(f"hook name {n!r} means both {out[n].name} and {h.name}")
    return out


def by_id(hid: int) -> Hook | None:
    return _by_id().get(int(hid))


def by_name(name: str) -> Hook | None:
    """The hook any of its names means (stable, old, kernel symbol, ops member); None: no hook."""
    return _by_any_name().get(name)


def stable(name):
    """The stable name for any name of a hook (what older recordings wrote,
    the kernel's symbol, an ops member); anything else (None, an id as text)
    is returned as it is."""
    h = _by_any_name().get(name) if isinstance(name, str) else None
    return h.name if h is not None else name


def name_of(hid: int) -> str:
    """The stable name of a hook id; an id no hook has as its number."""
    h = by_id(hid)
    return h.name if h is not None else str(hid)


def choices() -> list[str]:
    """What ``--hooks`` takes, in report order."""
    return [h.name for h in HOOKS]


def order(name: str) -> tuple:
    """Sort key of a hook name: report order, unknown names last by name."""
    h = by_name(name) if isinstance(name, str) else None
    return (HOOKS.index(h) if h is not None else len(HOOKS), str(name))


def names_where(flag: str) -> frozenset[str]:
    """Stable names of the hooks whose property ``flag`` is true."""
    return frozenset(h.name for h in HOOKS if getattr(h, flag))


def op_defines(ops) -> list[str]:
    """``MMNT_HAVE_OP_<MEMBER>`` for each ops member of the table that this
    kernel's struct mmu_notifier_ops has (``ops``): the BPF program reads
    only those members' offsets."""
    have = set(ops)
    return [f"MMNT_HAVE_OP_{op.upper()}" for h in HOOKS for op in h.ops if op in have]


def stable_series(s):
    """A pandas Series of hook names with every name stable (recordings made
    before the stable names): ``s`` itself where they all are already; a
    categorical stays one. Checked per distinct value, so it costs nothing on
    a recording that needs none."""
    if hasattr(s, "cat"):
        cats = list(s.cat.categories)
        new = [stable(c) for c in cats]
        if new == cats:
            return s
        if len(set(new)) == len(new):
            return s.cat.rename_categories(new)
        return s.astype(object).map(stable).astype("category")     # two old names, one hook
    if all(stable(v) == v for v in s.dropna().unique()):
        return s
    return s.map(stable)


#: the columns of a recording's tables that hold a hook's name
HOOK_COLUMNS = ("hook", "via")


def stable_frame(df):
    """A DataFrame with every hook name (:data:`HOOK_COLUMNS`) stable:
    ``df`` itself where they are already, else a new frame (the caller's is
    left as it is). Recordings made before the stable names hold the
    kernel-following ones (``invalidate_range``, ``arch_invalidate_secondary_tlbs``)."""
    new = {}
    for c in HOOK_COLUMNS:
        if c in df:
            col = stable_series(df[c])
            if col is not df[c]:
                new[c] = col
    return df.assign(**new) if new else df
