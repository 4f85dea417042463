"""mmntrace/btf.py against a reference reader: every type record of this
machine's own BTF (vmlinux and a module's split BTF where there is one) and
the lookups kernel.probe() makes. The reference is the plain per-record
struct walk the reader used before it kept numpy columns."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mmntrace import btf

VMLINUX = Path("/sys/kernel/btf/vmlinux")
pytestmark = pytest.mark.skipif(not VMLINUX.exists(), reason="no /sys/kernel/btf/vmlinux here")


def reference_types(b: btf.Btf) -> list[tuple]:
    data, off, end = b._data, b._types_start, b._types_end
    out = []
    while off < end:
        name_off, info, size_or_type = struct.unpack_from("<III", data, off)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        out.append((kind, name_off, info >> 31, vlen, size_or_type, off + 12))
        fixed, per = btf._TRAILER[kind]
        off += 12 + fixed + per * vlen
    return out


def test_every_record_matches_the_reference():
    b = btf.Btf.load(VMLINUX)
    ref = reference_types(b)
    assert len(b.types) == len(ref) > 1000
    assert list(b.types) == ref


def test_lookups_match_a_full_name_index():
    b = btf.Btf.load(VMLINUX)
    ref = reference_types(b)
    for name, kinds in (("mmu_notifier_ops", (btf.KIND_STRUCT,)), ("task_struct", (btf.KIND_STRUCT,)),
                        ("mmu_notifier_event", (btf.KIND_ENUM, btf.KIND_ENUM64)),
                        ("btf_trace_sched_switch", (btf.KIND_TYPEDEF,)), ("bpf_iter_task", (btf.KIND_FUNC,)),
                        ("list_head", (btf.KIND_STRUCT,))):
        want = next((b.first_id + i for i, t in enumerate(ref) if t[0] in kinds and b.string(t[1]) == name), None)
        assert b.find(name, kinds) == want, name
    assert b.find("no_such_type_anywhere", (btf.KIND_STRUCT,)) is None
    # an enumerator, found by scanning every enum as the reference does
    want = None
    for t in ref:
        if t[0] == btf.KIND_ENUM and want is None:
            for k in range(t[3]):
                n, v = struct.unpack_from("<Ii" if t[2] else "<II", b._data, t[5] + 8 * k)
                if b.string(n) == "___GFP_DIRECT_RECLAIM_BIT":
                    want = v
                    break
    assert b.enumerator("___GFP_DIRECT_RECLAIM_BIT") == want
    assert b.enumerator("NO_SUCH_ENUMERATOR_X") is None


def test_split_btf_of_a_module():
    mods = [p for p in Path("/sys/kernel/btf").iterdir() if p.name != "vmlinux"]
    if not mods:
        pytest.skip("no module BTF on this machine")
    base = btf.Btf.load(VMLINUX)
    m = btf.Btf.load(mods[0], base=base)
    ref = reference_types(m)
    assert list(m.types) == ref and m.first_id == base.next_id
    named = [(m.first_id + i, m.string(t[1]), t[0]) for i, t in enumerate(ref) if t[1] and t[0] == btf.KIND_FUNC]
    for tid, name, kind in named[:20]:
        assert m.find(name, (kind,)) in (tid, base.find(name, (kind,)))


def test_scalar_fields_flatten_anonymous_members_and_keep_arrays():
    """struct pt_regs's scalar members as kernel.lean_headers() declares them:
    the flattened members' offsets agree with struct_members(), and every
    named scalar member the reference walk sees (anonymous members flattened,
    bitfields and struct-typed members aside) is there."""
    b = btf.Btf.load(VMLINUX)
    size, fields = b.scalar_fields("pt_regs")
    assert size == b.struct_size("pt_regs")
    offs = b.struct_members("pt_regs")
    names = [f[0] for f in fields]
    assert len(names) == len(set(names)) > 0
    for name, off, esize, count in fields:
        assert offs[name] == off and esize in (1, 2, 4, 8) and off + esize * max(count, 1) <= size
    assert b.scalar_fields("no_such_struct_x") is None
    # a struct with an array of scalars and struct-typed members: task_struct's comm, not its se
    _size, tf = b.scalar_fields("task_struct")
    comm = next(f for f in tf if f[0] == "comm")
    assert comm[2] == 1 and comm[3] >= 16 and comm[1] == b.member_offset("task_struct", "comm")
    assert "se" not in [f[0] for f in tf]
