"""mmntrace/codegen.py: what gets compiled, decided without a kernel."""

import dataclasses
import re

import pytest

from mmntrace import codegen, hooks, kernel

F = kernel.Features(
    release="6.12.0-test", is_root=True, kallsyms=True, kprobes=True, btf=True,
    headers=None, headers_release=None, headers_match=False,
    ringbuf=True, fentry_possible=True, mmu_notifiers=True,
    hooks=((0, "__mmu_notifier_invalidate_range_start", "invalidate_range_start"),),
    registration=(), events=((1, "unmap"),), ops=("invalidate_range_start", "arch_invalidate_secondary_tlbs"),
    preempt_count_sym="pcpu_hot", preempt_count_addr=0x1234, per_cpu_offset_addr=0xffffffff82000000,
    subs_list_off=8, sleepers=(), gfp_direct_reclaim=0x400, layout=(("MM_SUBS", 1000),),
    subs_itree_off=16, task_iter=True, raw_sched_switch=True)
BASE = dict(backend="kprobe", ringbuf=True, ringbuf_pages=256, layout="btf", self_tgid=42, machine="x86_64")


def defines(flags) -> dict:
    out = {}
    for fl in flags:
        m = re.fullmatch(r"-D(\w+)(?:=(.*))?", fl)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_defaults_say_what_this_kernel_has_and_nothing_optional():
    d = defines(codegen.cflags(F, **BASE))
    assert d["MMNT_RINGBUF"] == "1" and d["MMNT_RINGBUF_PAGES"] == "256" and d["MMNT_SELF_TGID"] == "42"
    assert d["MMNT_PC_ADDR"] == "0x1234ULL" and d["MMNT_PCPU_OFF_ADDR"] == "0xffffffff82000000ULL"
    assert d["MMNT_SUBS_LIST_OFF"] == "8" and d["MMNT_SUBS_ITREE_OFF"] == "16"
    assert d["MMNT_GFP_DIRECT_RECLAIM"] == "0x400ULL" and d["MMNT_L_MM_SUBS"] == "1000"
    # real sleeps by the switch count (the default): no sched_switch program compiled
    assert {"MMNT_ITER", "MMNT_RAW_SWITCH", "MMNT_BTF_LAYOUT", "MMNT_TASK_STORAGE", "MMNT_SLEEP_COUNT"} <= d.keys()
    assert set(hooks.op_defines(F.ops)) <= d.keys()
    for off in ("MMNT_FENTRY", "MMNT_MIGHT_SLEEP", "MMNT_AGGREGATE", "MMNT_CHAIN", "MMNT_SAMPLING",
                "MMNT_FILTER_PID", "MMNT_FILTER_TREE", "MMNT_FILTER_COMM", "MMNT_MIN_LAT_NS", "MMNT_RT",
                "MMNT_ARCH_ARM64"):
        assert off not in d, off


def test_each_option_compiles_its_part_in():
    d = defines(codegen.cflags(F, **{**BASE, "backend": "fentry", "ringbuf": False, "layout": "headers"},
                               pid=7, children=True, comm='a"b\\c', aggregate=True, chain=True, task_storage=False,
                               sampling=True, might_sleep=True, sleep_detect="switch"))
    assert d["MMNT_RINGBUF"] == "0" and d["MMNT_FILTER_PID"] == "7"
    assert d["MMNT_FILTER_COMM"] == '"a\\"b\\\\c"'          # a C string, quotes and backslashes escaped
    assert {"MMNT_FENTRY", "MMNT_FILTER_TREE", "MMNT_AGGREGATE", "MMNT_CHAIN", "MMNT_SAMPLING",
            "MMNT_MIGHT_SLEEP"} <= d.keys()     # --aggregate: callbacks chained (entry probes only)
    assert not {"MMNT_BTF_LAYOUT", "MMNT_TASK_STORAGE", "MMNT_SLEEP_COUNT"} & d.keys()    # switch: the sched_switch program
    slow = defines(codegen.cflags(F, **BASE, min_latency_ns=5000))
    assert slow["MMNT_MIN_LAT_NS"] == "5000ULL" and "MMNT_CHAIN" not in slow    # its records carry return values


def test_kernel_differences_reach_the_program():
    rt = dataclasses.replace(F, preempt_rt=True, task_rt_offsets=(100, 200), preempt_count_addr=None)
    d = defines(codegen.cflags(rt, **{**BASE, "machine": "aarch64"}))
    assert d["MMNT_TASK_MD_OFF"] == "100" and d["MMNT_TASK_RCU_OFF"] == "200"
    assert "MMNT_RT" in d and "MMNT_ARCH_ARM64" in d and "MMNT_PC_ADDR" not in d


def test_bpf_text_pastes_the_parts_and_keeps_the_record_layout_an_include():
    text = codegen.bpf_text()
    parts = re.findall(r'#include "([\w.]+)"', codegen.BPF_SRC.read_text())
    assert "mmntrace.h" in parts and len(parts) > 2
    for p in parts:
        if p != "mmntrace.h":
            assert f"/* ---- {p} ---- */" in text and f'#include "{p}"' not in text
    assert '#include "mmntrace.h"' in text


def test_counters_read_while_running_are_mapped_only_where_arrays_can_be():
    """drops and walk_gen become mmap-able arrays (MMNT_MMAP_ARRAYS) only on a
    kernel whose kallsyms has array_map_mmap: elsewhere bpf() lookups."""
    assert "MMNT_MMAP_ARRAYS" not in defines(codegen.cflags(F, **BASE))
    mapped = dataclasses.replace(F, mmap_array=True)
    assert "MMNT_MMAP_ARRAYS" in defines(codegen.cflags(mapped, **BASE))


def test_entry_programs_read_a_link_cookie_only_where_the_kernel_has_them():
    """MMNT_KPROBE_COOKIE (bpf_get_attach_cookie in hk_entry and cb_entry) only
    where kernel.probe() found the helper in BTF and the kprobe PMU: the
    verifier of an older kernel refuses a program that calls it."""
    assert "MMNT_KPROBE_COOKIE" not in defines(codegen.cflags(F, **BASE))
    assert "MMNT_KPROBE_COOKIE" in defines(codegen.cflags(dataclasses.replace(F, kprobe_cookie=True), **BASE))


def test_the_interval_walk_steps_in_a_bpf_loop_callback_only_where_the_kernel_has_it():
    """MMNT_BPF_LOOP (bpf/discovery.h rb_next_of) only where BTF has BPF_FUNC_loop."""
    assert "MMNT_BPF_LOOP" not in defines(codegen.cflags(F, **BASE))
    assert "MMNT_BPF_LOOP" in defines(codegen.cflags(dataclasses.replace(F, bpf_loop=True), **BASE))


def test_each_hook_program_copy_gets_its_hook_id_where_the_placeholder_is():
    """fentry.with_hook: hook_const()'s 64-bit immediate (and only it) becomes
    the hook id, in every copy the compiler made; a program without it is refused."""
    import struct

    from mmntrace.errors import BpfLoadError
    from mmntrace.fentry import HOOK_IMM, with_hook

    def ins(op, regs=0, off=0, imm=0):
        return struct.pack("<BBhi", op, regs, off, imm)
    ld_imm = ins(0x18, 0x03, 0, HOOK_IMM) + ins(0, 0, 0, 0)           # r3 = MMNT_HOOK_IMM ll
    map_ref = ins(0x18, 0x11, 0, HOOK_IMM) + ins(0, 0, 0, 0)          # a map fd load (src_reg 1): not it
    wide = ins(0x18, 0x02, 0, HOOK_IMM) + ins(0, 0, 0, 1)             # another 64-bit constant: not it
    body = ins(0xb7, 0x01, 0, 7) + map_ref + wide + ld_imm + ins(0x95)
    out = with_hook(body, 3)
    assert out == ins(0xb7, 0x01, 0, 7) + map_ref + wide + ins(0x18, 0x03, 0, 3) + ins(0, 0, 0, 0) + ins(0x95)
    set3 = ins(0x18, 0x03, 0, 3) + ins(0, 0, 0, 0)
    assert with_hook(ld_imm + ins(0x05, 0, 2) + ld_imm + ins(0x95), 3) == set3 + ins(0x05, 0, 2) + set3 + ins(0x95)
    with pytest.raises(BpfLoadError):
        with_hook(ins(0xb7, 0x01, 0, 7) + map_ref + ins(0x95), 3)


def test_programs_read_preempt_count_through_the_per_cpu_variable():
    """subprog.with_percpu_var: the preempt_count placeholder's load becomes a
    reference to the variable's BTF id (src_reg BPF_PSEUDO_BTF_ID, vmlinux), the
    destination register kept; other loads untouched; a program without it (an
    exit program) unchanged. codegen compiles that read into every program (the
    kprobe programs too: mmntrace/subprog.py loads them), and only where BTF has
    the variable."""
    import struct

    from mmntrace.subprog import PC_VAR_IMM, with_percpu_var

    def ins(op, regs=0, off=0, imm=0):
        return struct.pack("<BBhi", op, regs, off, imm)
    ld = ins(0x18, 0x06, 0, PC_VAR_IMM) + ins(0, 0, 0, 0)               # r6 = MMNT_PC_VAR_IMM ll
    other = ins(0x18, 0x02, 0, PC_VAR_IMM + 1) + ins(0, 0, 0, 0)        # another placeholder
    out = with_percpu_var(other + ld + ins(0x95), 8435)
    assert out == other + ins(0x18, 0x36, 0, 8435) + ins(0, 0, 0, 0) + ins(0x95)
    assert with_percpu_var(other + ins(0x95), 8435) == other + ins(0x95)
    fv = dataclasses.replace(F, preempt_count_var=(77, 8))
    assert defines(codegen.cflags(fv, **dict(BASE, backend="fentry")))["MMNT_PC_VAR_OFF"] == "8"
    assert defines(codegen.cflags(fv, **BASE))["MMNT_PC_VAR_OFF"] == "8"                 # kprobe backend too
    assert "MMNT_PC_VAR_OFF" not in defines(codegen.cflags(F, **BASE))
    assert "MMNT_PC_VAR_OFF" not in defines(codegen.cflags(F, **dict(BASE, backend="fentry")))   # not in BTF


def test_both_loaders_patch_the_preempt_count_read_with_the_same_btf_id():
    """bcc's kprobe programs (build.py's class) and the fentry backend's copies
    (fentry.Trampolines) make read_pc()'s placeholder a reference to one
    variable, which one function derives from the features
    (subprog.percpu_var_id); a kernel without the variable gives neither one."""
    from types import SimpleNamespace
    from mmntrace import build, subprog, tracer
    fv = dataclasses.replace(F, preempt_count_var=(77, 8))
    assert subprog.percpu_var_id(fv) == 77
    assert subprog.percpu_var_id(F) is None
    assert subprog.percpu_var_id(SimpleNamespace()) is None          # features from before the field
    for features, want in ((fv, 77), (F, None)):
        t = tracer.Tracer(features)          # (its trampolines exist whatever the backend)
        assert t._tramp.pc_var == want
        assert build.Builder(type("BPF", (), {}), features, t._cflags).BPF.pc_var == want


def test_each_callback_program_copy_carries_its_cbinfo_as_constants():
    """fentry.with_callback: cb_const()'s two immediates become the function's
    address (both halves of the 64-bit load) and its hook, series and chained
    flag packed as a kprobe link's cookie is (attach.callback_cookie), which
    bpf/mmntrace.bpf.c cbinfo_unpack() reads by mmntrace.h's MMNT_COOKIE_* shifts."""
    import struct

    from mmntrace.attach import callback_cookie
    from mmntrace.errors import BpfLoadError
    from mmntrace.fentry import CB_FUNC_IMM, CB_INFO_IMM, with_callback
    from mmntrace.layout import header
    d = header().defines

    def ins(op, regs=0, off=0, imm=0):
        return struct.pack("<BBhi", op, regs, off, imm)

    def ld(reg, lo, hi=0):
        return ins(0x18, reg, 0, lo) + ins(0, 0, 0, hi)

    def ld_u(reg, v):
        return struct.pack("<BBhI", 0x18, reg, 0, v & 0xffffffff) + struct.pack("<BBhI", 0, 0, 0, v >> 32)
    body = ld(1, CB_FUNC_IMM) + ins(0x05, 0, 1) + ld(2, CB_INFO_IMM) + ins(0x95)
    func = 0xffffffffc0a01230
    out = with_callback(body, func, 4, 130, True)
    info = callback_cookie(func, 4, 130, True)
    assert out == ld_u(1, func) + ins(0x05, 0, 1) + ld_u(2, info) + ins(0x95)
    unpacked = struct.unpack_from("<I", out, 36)[0] << 32 | struct.unpack_from("<I", out, 28)[0]
    assert ((unpacked >> d["MMNT_COOKIE_HOOK_SHIFT"]) & 0xff, (unpacked >> d["MMNT_COOKIE_SERIES_SHIFT"]) & 0xffff,
            (unpacked >> d["MMNT_COOKIE_CHAINED_SHIFT"]) & 1) == (4, 130, 1)
    assert with_callback(body, func, 4, 130, False)[24:40] == ld_u(2, callback_cookie(func, 4, 130, False))
    assert (callback_cookie(func, 4, 130, False) >> d["MMNT_COOKIE_CHAINED_SHIFT"]) & 1 == 0
    with pytest.raises(BpfLoadError):       # the info's placeholder missing
        with_callback(ld(1, CB_FUNC_IMM) + ins(0x95), func, 4, 130, True)
    with pytest.raises(BpfLoadError):       # a hook id that does not fit its byte
        with_callback(body, func, 256, 0, False)


def test_the_program_is_optimized_once_by_bcc_not_first_by_clang():
    fl = codegen.cflags(F, **BASE)
    i = fl.index(codegen.OPTIMIZE_ONCE[0])
    assert tuple(fl[i:i + 2]) == codegen.OPTIMIZE_ONCE == ("-Xclang", "-disable-llvm-passes")
    less = codegen.without_optimize_once(fl)
    assert len(less) == len(fl) - 2 and "-disable-llvm-passes" not in less
    assert [x for x in fl if x not in codegen.OPTIMIZE_ONCE] == less      # nothing else goes
    assert codegen.without_optimize_once(less) == less


def _builder_with(compiles, features=F):
    """A tracer's Builder (mmntrace/build.py) whose bcc BPF class records each
    compile's flags and raises what ``compiles`` says (None: compiled)."""
    from mmntrace import build, tracer
    from mmntrace.quiet import LibraryError
    seen = []

    class FakeBPF:
        def __init__(self, text, cflags):
            seen.append(list(cflags))
            out = compiles[len(seen) - 1]
            if out is not None:
                raise LibraryError("Failed to compile BPF module <text>", out)

    t = tracer.Tracer(features)
    return build.Builder(FakeBPF, features, t._cflags, t.choices), t, seen


def test_a_clang_that_refuses_the_flag_gets_the_program_without_it():
    b, _t, seen = _builder_with(["error: unknown argument: '-disable-llvm-passes'", None, None])
    b.compile("int x;")
    assert "-disable-llvm-passes" in seen[0] and "-disable-llvm-passes" not in seen[1]
    b.compile("int x;")        # and every later compile of this tracer (the task-storage fallback)
    assert len(seen) == 3 and "-disable-llvm-passes" not in seen[2]
    assert not b.choices.optimize_once


def test_any_other_compile_error_is_not_retried():
    b, _t, seen = _builder_with(["main.c:3:1: error: unknown type name 'u65'"])
    with pytest.raises(Exception, match="Failed to compile"):
        b.compile("int x;")
    assert len(seen) == 1


class _LoadingBpf:
    """bcc's BPF object as the build's load tests see it: ``refuse`` names the
    programs whose load fails; hk_return and hkf_exit pass a bpf_loop() callback."""

    def __init__(self, refuse=()):
        import struct
        from mmntrace import subprog
        self.refuse, self.loaded, self.cleaned = set(refuse), [], False
        self._linked = struct.pack("<BBhi", 0x18, 2, 0, subprog.CALLBACKS["mmnt_rb_step"]) + bytes(8) \
            + struct.pack("<BBhi", 0x95, 0, 0, 0)
        self._plain = struct.pack("<BBhi", 0x95, 0, 0, 0)

    def dump_func(self, name):
        return self._linked if name in (b"hk_return", b"hkf_exit") else self._plain

    def load_func(self, name, typ):
        self.loaded.append(name)
        if name in self.refuse:
            raise Exception(f"Failed to load BPF program {name!r}: Invalid argument")

    def cleanup(self):
        self.cleaned = True


def test_a_kernel_that_refuses_the_callbacks_gets_bounded_loops(monkeypatch):
    """The build's fallback: where loading a program with its bpf_loop callbacks
    linked in fails, bpf_loop goes off and the next compile has no MMNT_BPF_LOOP
    (the task-storage test before it passed: cb_entry loaded)."""
    from mmntrace import build, preload
    assert "MMNT_BPF_LOOP" not in defines(codegen.cflags(dataclasses.replace(F, bpf_loop=True), **BASE,
                                                         bpf_loop=False))
    monkeypatch.setattr(preload, "functions", lambda b: [("cb_entry", 748), ("hkf_exit", 900), ("hk_return", 996)])
    assert build.Builder.loads_callbacks(_LoadingBpf()) is True
    made = [_LoadingBpf(refuse={b"hk_return"}), _LoadingBpf()]
    flags = []
    b, t, _seen = _builder_with([], features=dataclasses.replace(F, bpf_loop=True))
    assert t.bpf_loop and "MMNT_BPF_LOOP" in defines(t._cflags())

    def compile_(text):
        flags.append(b.flags_for(b.choices))
        return made[len(flags) - 1]
    monkeypatch.setattr(b, "compile", compile_)
    got = b.build("int x;")
    assert got is made[1] and made[0].cleaned and made[0].loaded == [b"cb_entry", b"hk_return"]  # not hkf_exit
    assert not t.bpf_loop and t.task_storage
    assert "MMNT_BPF_LOOP" in defines(flags[0]) and "MMNT_BPF_LOOP" not in defines(flags[1])
    assert "MMNT_BPF_LOOP" not in defines(t._cflags())


def test_a_kernel_that_refuses_task_storage_gets_a_hash(monkeypatch):
    """The build's first fallback: cb_entry (the per-task state's user) refused,
    the program again without MMNT_TASK_STORAGE; the tracer says so."""
    from mmntrace import preload
    monkeypatch.setattr(preload, "functions", lambda b: [])
    made = [_LoadingBpf(refuse={b"cb_entry"}), _LoadingBpf()]
    flags = []
    b, t, _seen = _builder_with([])

    def compile_(text):
        flags.append(b.flags_for(b.choices))
        return made[len(flags) - 1]
    monkeypatch.setattr(b, "compile", compile_)
    assert b.build("int x;") is made[1] and made[0].cleaned
    assert not t.task_storage
    assert "MMNT_TASK_STORAGE" in defines(flags[0]) and "MMNT_TASK_STORAGE" not in defines(flags[1])


def test_streaming_compiles_the_chain_for_the_hooks_whose_ops_return_nothing():
    """A per-event recording with every hook probed chains range end's, the
    secondary-TLB hook's and change_pte's callbacks (MMNT_CHAIN, cb_info's
    `chained` per hook: callbacks.chained_hooks); --hook probes no chain."""
    from mmntrace import kernel, tracer
    t = tracer.Tracer(F)
    assert "MMNT_CHAIN" in defines(t._cflags()) and "MMNT_AGGREGATE" not in defines(t._cflags())
    assert t.chained_hooks == {kernel.HOOK_END, kernel.HOOK_SECONDARY_TLB, kernel.HOOK_CHANGE_PTE}
    assert t._calibrated_modes() == {False, True}       # range start's pairs and the chained ones
    agg = tracer.Tracer(F, aggregate=True)
    assert agg._calibrated_modes() == {True}            # release ops take the chained figure
    some = tracer.Tracer(F, hooks=["invalidate_range_start"])
    assert "MMNT_CHAIN" not in defines(some._cflags()) and not some.chained_hooks
    assert some._calibrated_modes() == {False}


def test_the_hooks_kprobe_pair_is_left_out_only_where_trampolines_serve_every_hook():
    assert "MMNT_KPROBE_HOOKS" in defines(codegen.cflags(F, **BASE))
    assert "MMNT_KPROBE_HOOKS" in defines(codegen.cflags(F, **{**BASE, "backend": "fentry"}))
    assert "MMNT_KPROBE_HOOKS" in defines(codegen.cflags(F, **BASE, kprobe_hooks=False))    # kprobe backend: needed
    d = defines(codegen.cflags(F, **{**BASE, "backend": "fentry"}, kprobe_hooks=False))
    assert "MMNT_KPROBE_HOOKS" not in d and "MMNT_FENTRY" in d


# -- the lean compile: struct pt_regs from BTF, its headers left out --------------
LEAN = (("_ASM_X86_PTRACE_H", "_ASM_X86_PAGE_H", "_LINUX_LOG2_H"),
        (168, (("bp", 32, 8, 0), ("di", 112, 8, 0), ("cs", 136, 2, 0), ("csx", 136, 8, 0), ("flags", 144, 8, 0))),
        4096)


def test_the_lean_compile_defines_the_guards_and_declares_pt_regs_at_btf_offsets():
    d = defines(codegen.cflags(dataclasses.replace(F, lean_headers=LEAN), **BASE))
    assert {"_ASM_X86_PTRACE_H", "_ASM_X86_PAGE_H", "_LINUX_LOG2_H", "MMNT_LEAN_HEADERS"} <= set(d)
    assert d["PAGE_SIZE"] == "4096"
    body = d["MMNT_PT_REGS_MEMBERS"]
    # every member in a padded struct of its own: cs and csx share their bytes (x86 FRED)
    assert "struct { char __mmnt_pad_di[112]; unsigned long di; };" in body
    assert "struct { char __mmnt_pad_cs[136]; unsigned short cs; };" in body
    assert "struct { char __mmnt_pad_csx[136]; unsigned long csx; };" in body
    assert body.startswith("union { ") and "char __mmnt_size[168];" in body
    # an array member (arm64's regs[31] at offset 0: no padding)
    assert codegen.pt_regs_members(336, (("regs", 0, 8, 31),)) == \
        "union { struct { unsigned long regs[31]; }; char __mmnt_size[336]; };"


def test_the_full_headers_where_the_kernel_or_the_fallback_says_so():
    lean = dataclasses.replace(F, lean_headers=LEAN)
    for features, kw in ((F, {}),                                   # no lean_headers detected
                         (lean, {"lean_headers": False}),            # the lean compile failed once
                         (lean, {**BASE, "layout": "headers"})):     # the headers give the layouts
        d = defines(codegen.cflags(features, **{**BASE, **kw}))
        assert "MMNT_LEAN_HEADERS" not in d and "_ASM_X86_PTRACE_H" not in d and "PAGE_SIZE" not in d
    odd = dataclasses.replace(F, lean_headers=(LEAN[0], (16, (("v", 0, 16, 0),)), 4096))   # no C type of that size
    assert "MMNT_LEAN_HEADERS" not in defines(codegen.cflags(odd, **BASE))


def test_a_header_guard_is_read_past_comments_and_only_when_it_guards():
    text = "/* SPDX-License-Identifier: GPL-2.0 */\n// x\n#ifndef _ASM_X86_PTRACE_H\n#define _ASM_X86_PTRACE_H\n"
    assert kernel.header_guard(text) == "_ASM_X86_PTRACE_H"
    assert kernel.header_guard("#ifndef __ASM_PAGE_H\n#define __ASM_PAGE_H\n#include <x.h>\n") == "__ASM_PAGE_H"
    assert kernel.header_guard("#include <a.h>\n#ifndef X_H\n#define X_H\n") is None     # not first
    assert kernel.header_guard("#ifndef X_H\n#define Y_H\n") is None                     # not its guard
    assert kernel.header_guard("#ifdef CONFIG_X\n#define X_H\n") is None


def test_lean_headers_needs_btf_the_headers_and_a_known_architecture(tmp_path):
    class Regs:
        def scalar_fields(self, name):
            return (168, [("di", 112, 8, 0)]) if name == "pt_regs" else None
    build = tmp_path / "build"
    for rel, guard in (("arch/x86/include/asm/ptrace.h", "_ASM_X86_PTRACE_H"),
                       ("arch/x86/include/asm/page.h", "_ASM_X86_PAGE_H"), ("include/linux/log2.h", "_LINUX_LOG2_H")):
        (build / rel).parent.mkdir(parents=True, exist_ok=True)
        (build / rel).write_text(f"/* SPDX */\n#ifndef {guard}\n#define {guard}\n#endif\n")
    got = kernel.lean_headers(Regs(), build, "x86_64")
    assert got[0] == ("_ASM_X86_PTRACE_H", "_ASM_X86_PAGE_H", "_LINUX_LOG2_H")
    assert got[1] == (168, (("di", 112, 8, 0),)) and got[2] > 0
    assert kernel.lean_headers(None, build, "x86_64") is None             # no BTF
    assert kernel.lean_headers(Regs(), None, "x86_64") is None            # no headers
    assert kernel.lean_headers(Regs(), build, "riscv64") is None          # an architecture not seen
    assert kernel.lean_headers(Regs(), build, "aarch64") is None          # its headers absent here
    (build / "include/linux/log2.h").write_text("#include <x.h>\n")       # a header without its guard
    assert kernel.lean_headers(Regs(), build, "x86_64") is None


def test_a_lean_compile_that_fails_is_made_again_with_the_headers():
    lean = dataclasses.replace(F, lean_headers=LEAN)
    b, t, seen = _builder_with(["main.c:9:5: error: no member named 'orig_x0' in 'struct pt_regs'", None, None], lean)
    b.compile("int x;")
    assert "-DMMNT_LEAN_HEADERS" in seen[0] and "-DMMNT_LEAN_HEADERS" not in seen[1]
    assert not b.choices.lean_headers and not t.lean_headers
    b.compile("int x;")        # and every later compile of this tracer
    assert "-DMMNT_LEAN_HEADERS" not in seen[2]
    ok, t2, seen2 = _builder_with([None], lean)
    ok.compile("int x;")
    assert "-DMMNT_LEAN_HEADERS" in seen2[0] and t2.lean_headers


def test_the_full_compile_failing_is_not_retried():
    b, _t, seen = _builder_with(["main.c:3:1: error: unknown type name 'u65'"])     # F: no lean_headers
    with pytest.raises(Exception, match="Failed to compile"):
        b.compile("int x;")
    assert len(seen) == 1
