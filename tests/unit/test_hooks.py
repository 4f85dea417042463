"""The one table of hooks (mmntrace/hooks.py): a row for every enum mmnt_hook
member and no other, one stable name per hook whatever a kernel or an older
recording called it, and the BPF side's per-hook code in step with it."""

import re

import pytest

from mmntrace import hooks, kernel
from mmntrace.layout import BPF_HEADER, header

BPF = BPF_HEADER.parent        # the BPF sources live beside the header, wherever that is


def test_every_enum_member_has_a_row_and_every_row_a_member():
    enum = header(BPF_HEADER).enums["mmnt_hook"]
    members = {k.removeprefix("MMNT_HOOK_").removeprefix("MMNT_"): v for k, v in enum.items()}
    want = {k: v for k, v in members.items() if k not in hooks.NOT_HOOKS}
    assert {h.enum: h.id for h in hooks.HOOKS} == want
    assert set(hooks.NOT_HOOKS) <= set(members)
    assert (hooks.NONE, hooks.CALIB, hooks.NR_HOOKS) == (enum["MMNT_HOOK_NONE"], enum["MMNT_HOOK_CALIB"],
                                                         enum["MMNT_NR_HOOKS"])
    assert sorted(h.id for h in hooks.HOOKS) == list(range(hooks.NR_HOOKS))
    assert len({h.name for h in hooks.HOOKS}) == len(hooks.HOOKS)


def test_stable_names_and_report_order():
    assert hooks.choices() == ["invalidate_range_start", "invalidate_range_end", "secondary_tlb",
                               "interval_invalidate", "release", "clear_flush_young", "clear_young", "test_young",
                               "change_pte"]
    for name in ("secondary_tlb", "invalidate_range", "arch_invalidate_secondary_tlbs",
                 "__mmu_notifier_invalidate_range", "__mmu_notifier_arch_invalidate_secondary_tlbs"):
        assert hooks.stable(name) == "secondary_tlb"
        assert hooks.by_name(name).id == kernel.HOOK_SECONDARY_TLB
    assert hooks.stable("__mmu_notifier_invalidate_range_end") == "invalidate_range_end"
    assert hooks.stable("mn_itree_invalidate") == "interval_invalidate"
    assert hooks.stable("no_such_hook") == "no_such_hook" and hooks.stable(None) is None
    assert hooks.by_id(kernel.HOOK_INTERVAL).name == "interval_invalidate" and hooks.by_id(hooks.NONE) is None
    assert hooks.name_of(hooks.NONE) == str(hooks.NONE)
    assert sorted(["release", "invalidate_range", "zzz", "invalidate_range_start"], key=hooks.order) == \
        ["invalidate_range_start", "invalidate_range", "release", "zzz"]
    sec = hooks.by_name("secondary_tlb")
    assert sec.symbols[0] == "__mmu_notifier_arch_invalidate_secondary_tlbs" and sec.secondary_tlb and sec.never_sleeps
    assert hooks.names_where("ranged") == {"invalidate_range_start", "invalidate_range_end", "interval_invalidate"}
    assert hooks.names_where("range_end") == {"invalidate_range_end"}
    assert hooks.names_where("secondary_tlb") == {"secondary_tlb"}


def test_kernel_names_come_from_the_table():
    assert kernel.HOOK_NAMES == {h.id: h.name for h in hooks.HOOKS}
    assert hooks.by_name("invalidate_range").id == hooks.by_name("arch_invalidate_secondary_tlbs").id \
        == kernel.HOOK_SECONDARY_TLB
    assert hooks.stable("invalidate_range") == "secondary_tlb"
    enum = header(BPF_HEADER).enums["mmnt_hook"]
    for h in hooks.HOOKS:
        assert getattr(kernel, f"HOOK_{h.enum}") == enum[f"MMNT_HOOK_{h.enum}"] == h.id


def _c_function(path, name: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
    m = re.search(rf"\b{name}\s*\([^)]*\)\s*\{{(.*?)\n\}}", text, re.S)
    assert m, name
    return m.group(1)


def test_bpf_ops_tables_match_the_table():
    """discovery.h maps ops members to hooks and back by hand (a switch per
    direction, the verifier's way): each pair is one the table has, and
    every ops member of the table is there."""
    want = {(op, h.enum) for h in hooks.HOOKS for op in h.ops}
    at = set(re.findall(r"off == MMNT_L_OPS_(\w+)\)\s*return MMNT_HOOK_(\w+);", _c_function(BPF / "discovery.h",
                                                                                           "op_hook_at")))
    of = {(op, hk) for hk, op in re.findall(r"hook == MMNT_HOOK_(\w+)\)\s*return MMNT_L_OPS_(\w+);",
                                            _c_function(BPF / "discovery.h", "op_off_of"))}
    assert at == want and of == want


def test_bpf_rules_match_the_table():
    """context.h's hooks that never may sleep, and the ranged hooks whose
    blockable flag decides, are the table's."""
    body = _c_function(BPF / "context.h", "hook_forbids_sleep")
    first, _, rest = body.partition("return true;")
    assert set(re.findall(r"MMNT_HOOK_(\w+)", first)) == {h.enum for h in hooks.HOOKS if h.never_sleeps}
    ranged = re.search(r"\(\((.*?)\)\s*&&\s*!\(flags & MMNT_FL_BLOCKABLE\)", rest, re.S)
    assert set(re.findall(r"MMNT_HOOK_(\w+)", ranged.group(1))) == {h.enum for h in hooks.HOOKS if h.ranged}


@pytest.mark.parametrize("ops, want", [
    (("release", "invalidate_range_start", "invalidate_range_end", "invalidate_range", "change_pte"),
     {"MMNT_HAVE_OP_INVALIDATE_RANGE", "MMNT_HAVE_OP_CHANGE_PTE"}),
    (("release", "invalidate_range_start", "invalidate_range_end", "arch_invalidate_secondary_tlbs"),
     {"MMNT_HAVE_OP_ARCH_INVALIDATE_SECONDARY_TLBS"}),
])
def test_op_defines_name_what_the_bpf_code_tests(ops, want):
    """The -D flags of the ops members a kernel has: each one the BPF code
    tests is generated from the table (6.1 has invalidate_range and
    change_pte, 6.12 arch_invalidate_secondary_tlbs)."""
    got = set(hooks.op_defines(ops))
    assert want <= got and all(d.removeprefix("MMNT_HAVE_OP_").lower() in ops for d in got)
    tested = set()
    for f in ("mmntrace.bpf.c", "discovery.h"):
        tested |= set(re.findall(r"#ifdef (MMNT_HAVE_OP_\w+)", (BPF / f).read_text()))
    assert tested == set(hooks.op_defines([op for h in hooks.HOOKS for op in h.ops])) & tested
    assert tested == {"MMNT_HAVE_OP_INVALIDATE_RANGE", "MMNT_HAVE_OP_ARCH_INVALIDATE_SECONDARY_TLBS",
                      "MMNT_HAVE_OP_CHANGE_PTE"}
