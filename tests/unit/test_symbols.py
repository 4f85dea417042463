"""/proc/kallsyms as the tracer holds it (kernel.SymbolTable, ksyms.KernelSymbols),
on a file written here: every field of a line, names that repeat, modules,
lookups by address, and reloads."""

import numpy as np

from mmntrace import kernel, ksyms

KALLSYMS = """\
ffffffff81000000 T _stext
ffffffff81001000 T __mmu_notifier_invalidate_range_start
ffffffff81001400 t helper
ffffffff81002000 D some_data
ffffffff81003000 t helper
ffffffff81004000 W weak_fn
ffffffffc0001000 t kvm_mmu_notifier_invalidate_range_start\t[kvm]
ffffffffc0002000 t helper\t[mmnt_test]
"""


def table(tmp_path, text=KALLSYMS, chunk=None, monkeypatch=None):
    p = tmp_path / "kallsyms"
    p.write_text(text)
    if chunk:
        monkeypatch.setattr(kernel, "_KSYM_CHUNK", chunk)
    return kernel.SymbolTable.read(str(p))


def test_rows_keep_file_order_names_modules_and_types(tmp_path):
    t = table(tmp_path)
    assert len(t) == 8 and t.addresses_real()
    assert t.address("__mmu_notifier_invalidate_range_start") == 0xffffffff81001000
    assert t.address("helper") == 0xffffffff81001400          # the first of its name
    assert t.rows_of("helper") == [2, 4, 7] and t.rows_of("nope") == []
    assert t.module(6) == "kvm" and t.module(7) == "mmnt_test" and t.module(1) is None
    assert t.types[3:4] == b"D"
    ks = kernel._Kallsyms(t)
    assert "weak_fn" in ks and "nope" not in ks and ks.get("nope", 7) == 7
    assert ks["kvm_mmu_notifier_invalidate_range_start"] == 0xffffffffc0001000


def test_lines_cut_across_chunks_parse_the_same(tmp_path, monkeypatch):
    whole = table(tmp_path)
    small = table(tmp_path, chunk=7, monkeypatch=monkeypatch)
    assert small.names == whole.names and (small.addrs == whole.addrs).all()
    assert small.types == whole.types and list(small.mods) == list(whole.mods)


def test_unreadable_or_hidden_addresses(tmp_path):
    assert len(kernel.SymbolTable.read(str(tmp_path / "missing"))) == 0
    import re
    hidden = table(tmp_path, re.sub(r"^[0-9a-f]{16}", "0" * 16, KALLSYMS, flags=re.M))
    assert len(hidden) == 8
    assert not hidden.addresses_real()


def test_text_symbols_by_address_and_by_name(tmp_path, monkeypatch):
    t = table(tmp_path)
    monkeypatch.setattr(kernel, "symbol_table", lambda: t)
    k = ksyms.KernelSymbols()
    # data symbols are not text: some_data is skipped, the address inside it
    # belongs to the text symbol before it
    assert k.lookup(0xffffffff81002010) == ("helper", None, 0xc10)
    assert k.lookup(0xffffffff81001000, exact=True) == ("__mmu_notifier_invalidate_range_start", None, 0)
    assert k.lookup(0xffffffffc0002008) == ("helper", "mmnt_test", 8)
    assert k.by_name["helper"] == [0xffffffff81001400, 0xffffffff81003000, 0xffffffffc0002000]
    assert "some_data" not in k.by_name and k.by_name.get("some_data", []) == []
    assert k.addrs.dtype == np.uint64 and (np.diff(k.addrs.astype(np.int64)) >= 0).all()


def test_an_unknown_address_reloads_the_table(tmp_path, monkeypatch):
    t = table(tmp_path)
    monkeypatch.setattr(kernel, "symbol_table", lambda: t)
    k = ksyms.KernelSymbols()
    assert k.lookup(0xffffffffc0009000, exact=True, force=True) is None
    loaded = table(tmp_path, KALLSYMS + "ffffffffc0009000 t new_cb\t[newmod]\n")
    monkeypatch.setattr(kernel.SymbolTable, "read", classmethod(lambda cls, path="": loaded))
    assert k.lookup(0xffffffffc0009000, exact=True, force=True) == ("new_cb", "newmod", 0)


def test_columns_read_at_once_equal_the_line_by_line_reading(tmp_path, monkeypatch):
    """kernel._parse_lines reads a chunk's columns with numpy; a chunk of any
    other shape (32-bit addresses, a stray line, no last newline) goes line
    by line through the regular expression, with the same result."""
    def slow(text):
        names, mods = [], {"": 0}
        a, t, m = kernel._parse_lines_slowly(text, names, mods)
        return a.tolist(), t, names, m.tolist(), mods

    def fast(text):
        names, mods = [], {"": 0}
        a, t, m = kernel._parse_lines(text, names, mods)
        return a.tolist(), t, names, m.tolist(), mods

    assert fast(KALLSYMS) == slow(KALLSYMS)
    assert slow(KALLSYMS)[0][6] == 0xffffffffc0001000 and slow(KALLSYMS)[4] == {"": 0, "kvm": 1, "mmnt_test": 2}
    short = "c1000000 T _stext\nc1001000 t helper\t[mod]\n"
    assert fast(short) == slow(short) and fast(short)[0] == [0xc1000000, 0xc1001000]
    odd = KALLSYMS + "garbage line\n"
    assert fast(odd) == slow(odd) and len(fast(odd)[2]) == 8
    # a file whose last line has no newline, read in chunks that cut lines
    t = table(tmp_path, KALLSYMS.rstrip("\n"), chunk=50, monkeypatch=monkeypatch)
    assert len(t) == 8 and t.module(7) == "mmnt_test" and t.rows_of("helper") == [2, 4, 7]


def test_a_table_marked_stale_is_read_again_at_the_next_lookup_only(tmp_path, monkeypatch):
    """--aggregate with fentry: the programs' symbols come in at the next lookup,
    not before --ready-file (Tracer.attach marks the table stale)."""
    t = table(tmp_path)
    monkeypatch.setattr(kernel, "symbol_table", lambda: t)
    k = ksyms.KernelSymbols()
    reads = []
    loaded = table(tmp_path, KALLSYMS + "ffffffffc0100000 t bpf_prog_1234_hkf_entry\t[bpf]\n")
    monkeypatch.setattr(kernel.SymbolTable, "read", classmethod(lambda cls, path="": reads.append(1) or loaded))
    assert k.lookup(0xffffffffc0100010) == ("helper", "mmnt_test", 0xfe010)    # the old table: a neighbour
    k.mark_stale()
    assert reads == []
    assert k.lookup(0xffffffffc0100010) == ("bpf_prog_1234_hkf_entry", "bpf", 0x10) and reads == [1]
    assert k.lookup(0xffffffffc0100010) == ("bpf_prog_1234_hkf_entry", "bpf", 0x10) and reads == [1]


def test_a_stale_table_names_a_function_at_its_own_address_without_a_read(tmp_path, monkeypatch):
    """A driver callback discovered after Tracer.attach marked the table stale:
    its own address is in the table already (what it lacks is BPF programs),
    so it is named at once; an address it does not hold reads the file again."""
    t = table(tmp_path)
    monkeypatch.setattr(kernel, "symbol_table", lambda: t)
    k = ksyms.KernelSymbols()
    reads = []
    loaded = table(tmp_path, KALLSYMS + "ffffffffc0100000 t bpf_prog_1234_hkf_entry\t[bpf]\n"
                   "ffffffffc0200000 t new_cb\t[newmod]\n")
    monkeypatch.setattr(kernel.SymbolTable, "read", classmethod(lambda cls, path="": reads.append(1) or loaded))
    k.mark_stale()
    assert k.lookup(0xffffffffc0001000, exact=True, force=True) == \
        ("kvm_mmu_notifier_invalidate_range_start", "kvm", 0) and reads == []
    assert k.lookup(0xffffffffc0200000, exact=True, force=True) == ("new_cb", "newmod", 0) and reads == [1]
    # the read made, the table is fresh: an inexact lookup does not read it again
    assert k.lookup(0xffffffffc0100010) == ("bpf_prog_1234_hkf_entry", "bpf", 0x10) and reads == [1]
    # an inexact lookup of a stale table reads it first (a stack's BPF frames)
    k.mark_stale()
    assert k.lookup(0xffffffffc0100010) == ("bpf_prog_1234_hkf_entry", "bpf", 0x10) and reads == [1, 1]


def test_names_found_by_hash_even_when_hashes_collide():
    """The table keeps no name -> row dict: a name is found by its hash, then
    compared; rows whose hashes collide are told apart by name, file order kept."""
    names = ["alpha", "beta", "alpha", "gamma", "beta"]
    blob, offs, h = kernel._pack_names(names)
    collide = kernel.SymbolTable(np.zeros(5), b"TtTtT", (blob, offs, np.full(5, hash("alpha"), np.int64)),
                                 np.zeros(5), [""])
    assert collide.rows_of("alpha") == [0, 2]       # every row has alpha's hash: the names decide
    t = kernel.SymbolTable(np.arange(5, dtype=np.uint64) + 0x1000, b"TtTtT", (blob, offs, h), np.zeros(5), [""])
    assert t.rows_of("alpha") == [0, 2] and t.rows_of("beta") == [1, 4] and t.rows_of("gamma") == [3]
    assert t.rows_of("delta") == [] and "delta" not in t and "gamma" in t
    assert t.address("beta") == 0x1001
    assert list(t.names) == names and t.names[-1] == "beta" and t.names[1:3] == ["beta", "alpha"]
    assert t.index == {"alpha": 0, "beta": 1, "gamma": 3}
    assert len(t) == 5 and len(kernel.SymbolTable(np.zeros(0), b"", [], np.zeros(0), [""])) == 0


def test_a_read_that_fails_part_way_is_made_again(tmp_path, monkeypatch):
    """A table cut short by a failed read would say the kernel lacks what it
    has ("no MMU notifiers"): the read is made again; a file that cannot be
    opened is still an empty table."""
    import builtins
    p = tmp_path / "kallsyms"
    p.write_text(KALLSYMS)
    monkeypatch.setattr(kernel, "_KSYM_CHUNK", 40)
    real_open, fails = builtins.open, [1]

    class Flaky:
        def __init__(self, f):
            self.f, self.n = f, 0

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def read(self, n):
            self.n += 1
            if self.n == 3 and fails[0]:
                fails[0] -= 1
                raise OSError(12, "Cannot allocate memory")
            return self.f.read(n)

    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: Flaky(real_open(path, *a, **k))
                        if str(path) == str(p) else real_open(path, *a, **k))
    t = kernel.SymbolTable.read(str(p))
    assert len(t) == 8 and fails == [0] and t.rows_of("helper") == [2, 4, 7]
    fails[0] = 5        # failing every time: what was read, as before
    assert 0 < len(kernel.SymbolTable.read(str(p))) < 8


def test_a_stale_table_names_the_kernels_own_text_without_a_read(tmp_path, monkeypatch):
    """A streaming recorder names each hook's caller and each stack's frames:
    in the kernel's own text ([_stext, _etext)) nothing is placed while it
    runs, so a stale table answers there without reading the file again (2 s
    of the recorder's CPU in the lab's guest after every attach); an address
    outside it still reads it (BPF programs, trampolines, modules)."""
    text = KALLSYMS.replace("ffffffff81004000 W weak_fn\n", "ffffffff81004000 W weak_fn\nffffffff81200000 T _etext\n")
    plain = table(tmp_path)
    t = table(tmp_path, text)
    monkeypatch.setattr(kernel, "symbol_table", lambda: t)
    k = ksyms.KernelSymbols()
    assert k.core == (0xffffffff81000000, 0xffffffff81200000)
    reads = []
    loaded = table(tmp_path, text + "ffffffffc0100000 t bpf_prog_1234_hkf_entry\t[bpf]\n")
    monkeypatch.setattr(kernel.SymbolTable, "read", classmethod(lambda cls, path="": reads.append(1) or loaded))
    k.mark_stale()
    assert k.lookup(0xffffffff81001420) == ("helper", None, 0x20) and reads == []
    assert k.lookup(0xffffffffc0100010) == ("bpf_prog_1234_hkf_entry", "bpf", 0x10) and reads == [1]
    # a table without _etext: no bound known, every inexact lookup of a stale table reads it
    k2 = ksyms.KernelSymbols.__new__(ksyms.KernelSymbols)
    k2._stale, k2._lock = False, __import__("threading").RLock()
    k2._load(plain)
    assert k2.core == (0, 0)
    k2.mark_stale()
    k2.lookup(0xffffffff81001420)
    assert reads == [1, 1]


def test_a_callback_not_probed_yet_is_named_from_a_stale_table_without_a_read(tmp_path, monkeypatch):
    """The untimed counts written with the metadata can hold a callback whose
    ops record was not read yet (a subscriber's first calls): Tracer names it
    by its own address, found exactly in the stale table, where an inexact
    lookup of a module address read all of /proc/kallsyms again (2.3 s of the
    recorder's CPU in the 6.12 guest, the first workload run after the start)."""
    from mmntrace.tracer import Tracer
    t = table(tmp_path)
    monkeypatch.setattr(kernel, "symbol_table", lambda: t)
    reads = []
    monkeypatch.setattr(kernel.SymbolTable, "read", classmethod(lambda cls, path="": reads.append(1) or t))
    tr = Tracer.__new__(Tracer)
    tr._cbs, tr._ksyms = None, ksyms.KernelSymbols()
    tr._ksyms.mark_stale()
    assert tr.callback_symbol(0xffffffffc0001000) == "kvm_mmu_notifier_invalidate_range_start [kvm]"
    assert reads == []
    # an address inside a function is no callback's: named as any address is
    assert tr.callback_symbol(0xffffffffc0001010) == "kvm_mmu_notifier_invalidate_range_start+0x10 [kvm]"
