"""A small reader of raw BTF (``/sys/kernel/btf/vmlinux`` and module BTF).

Pure Python, no root needed when the file is readable. It answers the few
questions mmntrace asks of the running kernel's types:

- the members of an enum (``ENUM`` and ``ENUM64``), or one enumerator by name;
- a struct's size and a member's byte offset;
- whether a ``FUNC`` of a given name exists.

Module BTF is *split* BTF: its type ids and string offsets continue those of
vmlinux, so open it with ``Btf.load(path, base=vmlinux_btf)``.

Format: Documentation/bpf/btf.rst (struct btf_header, struct btf_type and the
per-kind trailers).
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np

BTF_MAGIC = 0xEB9F

# BTF_KIND_*
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

# Bytes that follow struct btf_type, per kind: (fixed, per vlen item).
_TRAILER = {
    KIND_INT: (4, 0), KIND_PTR: (0, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12),
    KIND_UNION: (0, 12), KIND_ENUM: (0, 8), KIND_FWD: (0, 0), KIND_TYPEDEF: (0, 0),
    KIND_VOLATILE: (0, 0), KIND_CONST: (0, 0), KIND_RESTRICT: (0, 0), KIND_FUNC: (0, 0),
    KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12), KIND_FLOAT: (0, 0),
    KIND_DECL_TAG: (4, 0), KIND_TYPE_TAG: (0, 0), KIND_ENUM64: (0, 12),
}

#: the same in 32-bit words, indexed by kind (-1: not a kind we know)
_WORDS = ([_TRAILER[k][0] // 4 if k in _TRAILER else -1 for k in range(32)],
          [_TRAILER[k][1] // 4 if k in _TRAILER else 0 for k in range(32)])


class _Types:
    """``types[i]``: ``(kind, name_off, kind_flag, vlen, size_or_type, trailer_off)``,
    made from the parsed columns when asked for."""

    def __init__(self, btf: "Btf"):
        self._b = btf

    def __len__(self) -> int:
        return len(self._b._name_off)

    def __getitem__(self, i: int) -> tuple:
        b = self._b
        if i < 0:
            i += len(self)
        info = int(b._info[i])
        return ((info >> 24) & 0x1F, int(b._name_off[i]), info >> 31, info & 0xFFFF, int(b._size[i]),
                int(b._toff[i]))

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


class BtfError(ValueError):
    """The blob is not BTF, or is truncated or of an unknown kind."""


class Btf:
    """Parsed BTF. ``types[i]`` is ``(kind, name, kind_flag, vlen, size_or_type, trailer_off)``
    for type id ``first_id + i``."""

    def __init__(self, data: bytes, base: "Btf | None" = None):
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, = struct.unpack_from("<H", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError("not a BTF blob (bad magic)")
        _m, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            "<HBBIIIII", data, 0)
        self.base = base
        self._data = data
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        # the string section is read in place, in ``data`` (a copy of it would be
        # 2.3 MiB of a recorder's memory for a 6.18 vmlinux: fentry keeps its BTF)
        self._s0 = hdr_len + str_off
        self._s_end = self._s0 + str_len
        if self._s_end > len(data) or self._types_end > len(data):
            raise BtfError("BTF blob truncated")
        self._str_base = base.str_total if base else 0
        self.str_total = self._str_base + str_len
        self.first_id = (base.next_id if base else 1)
        self._parse()
        self.next_id = self.first_id + len(self.types)
        self._named: dict[str, list[int]] = {}

    # -- loading ---------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path = "/sys/kernel/btf/vmlinux", base: "Btf | None" = None) -> "Btf":
        return cls(Path(path).read_bytes(), base=base)

    # -- parsing -----------------------------------------------------------
    def _parse(self) -> None:
        """Find where each type record starts (one walk: records differ in
        length), then keep their header words as numpy columns; ``types[i]``
        tuples are made when asked for. The whole-table tuples and the index of
        every name took seconds per start in the lab's emulated guests."""
        data, start, end = self._data, self._types_start, self._types_end
        if (end - start) % 4:
            raise BtfError("BTF type section is not made of 32-bit words")
        n = (end - start) // 4
        w = memoryview(data)[start:end].cast("I")     # BTF is in the machine's byte order
        fixed, per = _WORDS
        starts: list[int] = []
        add = starts.append
        i = 0
        while i < n:
            if i + 3 > n:
                break
            info = w[i + 1]
            k = (info >> 24) & 0x1F
            f = fixed[k]
            if f < 0:
                raise BtfError(f"unknown BTF kind {k} at offset {start + 4 * i}")
            add(i)
            i += 3 + f + per[k] * (info & 0xFFFF)
        if i != n:
            raise BtfError("BTF type section ends mid-type")
        words = np.frombuffer(data, dtype="=u4", count=n, offset=start)
        s_ = np.asarray(starts, dtype=np.int64)
        # the columns in the narrowest types that hold them (u4 words, a kind in a
        # byte, trailer offsets inside a blob of a few MiB): 1.9 MiB less than as
        # int64 for a 6.18 vmlinux's 125,850 types
        self._name_off = words[s_]
        self._info = words[s_ + 1]
        self._kind = ((self._info >> 24) & 0x1F).astype(np.uint8)
        self._size = words[s_ + 2]
        self._toff = (start + (s_ + 3) * 4).astype(np.uint32)
        self.types = _Types(self)

    def string(self, off: int) -> str:
        if off < self._str_base:
            return self.base.string(off)
        o = self._s0 + off - self._str_base
        e = self._data.index(b"\0", o, self._s_end)
        return self._data[o:e].decode("utf-8", "replace")

    def type(self, type_id: int) -> tuple:
        """Raw entry of ``type_id`` (looks in the base for base ids)."""
        if type_id < self.first_id:
            if self.base is None:
                raise KeyError(type_id)
            return self.base.type(type_id)
        return self.types[type_id - self.first_id]

    # -- enumeration -------------------------------------------------------
    def iter_types(self):
        """Yield ``(type_id, kind, name)`` for every type of this blob (not the base)."""
        for i, t in enumerate(self.types):
            yield self.first_id + i, t[0], self.string(t[1])

    def _string_offsets(self, name: str) -> list[int]:
        """Every offset at which the string table (and the base's) holds exactly ``name``."""
        out = self.base._string_offsets(name) if self.base is not None else []
        pat = b"\0" + name.encode() + b"\0"
        p = self._data.find(pat, self._s0, self._s_end)
        while p >= 0:
            out.append(self._str_base + p - self._s0 + 1)
            p = self._data.find(pat, p + 1, self._s_end)
        return out

    def _ids_named(self, name: str) -> list[int]:
        """Type ids of this blob (not the base) called ``name``: its string
        offsets, then one vector compare over the name column."""
        if name not in self._named:
            offs = self._string_offsets(name) if name else []
            idx = np.flatnonzero(np.isin(self._name_off, offs)) if offs else ()
            self._named[name] = [self.first_id + int(i) for i in idx]
        return self._named[name]

    def find(self, name: str, kinds: tuple[int, ...]) -> int | None:
        """Type id of the first type called ``name`` of one of ``kinds`` (base included)."""
        for tid in self._ids_named(name):
            if self.type(tid)[0] in kinds:
                return tid
        if self.base is not None:
            return self.base.find(name, kinds)
        return None

    # -- enums -------------------------------------------------------------
    def _enum_members(self, t: tuple) -> dict[str, int]:
        kind, _n, kflag, vlen, _sz, toff = t
        out: dict[str, int] = {}
        data = self._data  # t is always one of self.types
        for k in range(vlen):
            if kind == KIND_ENUM:
                name_off, val = struct.unpack_from("<Ii" if kflag else "<II", data, toff + 8 * k)
            else:
                name_off, lo, hi = struct.unpack_from("<III", data, toff + 12 * k)
                val = (hi << 32) | lo
                if kflag and val >= 1 << 63:
                    val -= 1 << 64
            out[self.string(name_off)] = val
        return out

    def enum(self, name: str) -> dict[str, int] | None:
        """Members (name -> value) of ``enum name`` (ENUM or ENUM64), None if absent."""
        btf, tid = self._locate(name, (KIND_ENUM, KIND_ENUM64))
        return None if btf is None else btf._enum_members(btf.type(tid))

    def enumerator(self, name: str) -> int | None:
        """Value of the enumerator ``name`` in any enum, named or anonymous."""
        offs = set(self._string_offsets(name))
        if offs:
            for i in np.flatnonzero((self._kind == KIND_ENUM) | (self._kind == KIND_ENUM64)):
                t = self.types[int(i)]
                step = 8 if t[0] == KIND_ENUM else 12
                for k in range(t[3]):
                    if struct.unpack_from("<I", self._data, t[5] + step * k)[0] in offs:
                        return self._enum_members(t)[name]
        return self.base.enumerator(name) if self.base is not None else None

    def _locate(self, name: str, kinds: tuple[int, ...]):
        for tid in self._ids_named(name):
            if self.types[tid - self.first_id][0] in kinds:
                return self, tid
        if self.base is not None:
            return self.base._locate(name, kinds)
        return None, None

    # -- structs -----------------------------------------------------------
    def struct_size(self, name: str) -> int | None:
        btf, tid = self._locate(name, (KIND_STRUCT, KIND_UNION))
        return None if btf is None else btf.type(tid)[4]

    def struct_members(self, name: str) -> dict[str, int] | None:
        """Direct members (name -> byte offset) of ``struct name``; anonymous
        struct/union members are flattened in. Bitfields give the byte holding their first bit."""
        btf, tid = self._locate(name, (KIND_STRUCT, KIND_UNION))
        if btf is None:
            return None
        out: dict[str, int] = {}
        for mname, _mtype, bits, _bitfield in btf._flat_members(tid, 0, depth=0):
            out.setdefault(mname, bits // 8)
        return out

    def _resolve(self, tid: int) -> int:
        for _ in range(32):
            t = self.type(tid)
            if t[0] in (KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG):
                tid = t[4]
            else:
                return tid
        return tid

    def _owner(self, tid: int) -> "Btf":
        """The blob that holds type ``tid`` (this one, or the base's)."""
        return self if tid >= self.first_id else self.base

    def _flat_members(self, tid: int, base_bits: int, depth: int):
        """Yield ``(name, type id, bit offset, is a bitfield)`` of each named
        member of struct/union ``tid``, anonymous struct and union members
        flattened in (8 levels deep at most), in BTF's order."""
        owner = self._owner(tid)
        _kind, _n, kflag, vlen, _sz, toff = owner.type(tid)
        for k in range(vlen):
            name_off, mtype, moff = struct.unpack_from("<III", owner._data, toff + 12 * k)
            bits = base_bits + ((moff & 0xFFFFFF) if kflag else moff)
            mname = owner.string(name_off)
            if mname:
                yield mname, mtype, bits, bool(kflag and moff >> 24)
            elif depth < 8:
                rt = owner._resolve(mtype)
                if owner.type(rt)[0] in (KIND_STRUCT, KIND_UNION):
                    yield from owner._flat_members(rt, bits, depth + 1)

    def scalar_fields(self, struct_name: str) -> tuple[int, list[tuple[str, int, int, int]]] | None:
        """``struct struct_name``'s size and its scalar members (integers,
        enums, pointers) and arrays of them, anonymous struct and union members
        flattened in: ``(name, byte offset, element size, count)`` (count 0: not
        an array), in the order BTF lists them; members of a struct type and
        bitfields left out. None if the struct is absent. Enough to declare the
        struct's members at their offsets without its header (codegen.py)."""
        btf, tid = self._locate(struct_name, (KIND_STRUCT, KIND_UNION))
        if btf is None:
            return None
        out: list[tuple[str, int, int, int]] = []
        for mname, mtype, bits, bitfield in btf._flat_members(tid, 0, depth=0):
            if bitfield or bits % 8:
                continue
            rt = btf._resolve(mtype)
            size = btf._scalar_size(rt)
            if size is not None:
                out.append((mname, bits // 8, size, 0))
            elif btf.type(rt)[0] == KIND_ARRAY:
                elem, _idx, n = struct.unpack_from("<III", btf._owner(rt)._data, btf.type(rt)[5])
                esize = btf._scalar_size(elem)
                if esize is not None and n:
                    out.append((mname, bits // 8, esize, n))
        return btf.type(tid)[4], out

    def _scalar_size(self, tid: int) -> int | None:
        t = self.type(self._resolve(tid))
        if t[0] in (KIND_INT, KIND_ENUM, KIND_ENUM64):
            return t[4]
        return 8 if t[0] == KIND_PTR else None

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of ``member`` in ``struct struct_name`` (None if either is absent)."""
        m = self.struct_members(struct_name)
        return None if m is None else m.get(member)

    # -- functions ---------------------------------------------------------
    def has_func(self, name: str) -> bool:
        return self.find(name, (KIND_FUNC,)) is not None

    def func_signature(self, name: str) -> tuple[int, bool] | None:
        """(number of parameters, returns a value) of function ``name``, None if absent.
        A fexit program reads the return value at ctx[nargs], and only when there is one."""
        btf, tid = self._locate(name, (KIND_FUNC,))
        if btf is None:
            return None
        proto = btf.type(btf.type(tid)[4])
        if proto[0] != KIND_FUNC_PROTO:
            return None
        return proto[3], proto[4] != 0

    def typedef_proto_params(self, name: str) -> int | None:
        """Parameter count of the function type that typedef ``name`` points to
        (``btf_trace_sched_switch``: a raw tracepoint's arguments, after the
        ``void *`` its probes get first), None if absent or not such a typedef."""
        btf, tid = self._locate(name, (KIND_TYPEDEF,))
        if btf is None:
            return None
        t = btf.type(btf.type(tid)[4])
        if t[0] == KIND_PTR:
            t = btf.type(t[4])
        return t[3] if t[0] == KIND_FUNC_PROTO else None


@functools.lru_cache(maxsize=4)
def load_vmlinux(path: str = "/sys/kernel/btf/vmlinux") -> Btf | None:
    """The running kernel's BTF, or None if absent or unreadable: parsed once
    per process (kernel.probe, the fentry source, the start-up sweep and the
    modules' split BTF all read it; it does not change while the kernel runs)."""
    try:
        return Btf.load(path)
    except (OSError, BtfError):
        return None


def release_vmlinux() -> None:
    """Forget the parsed vmlinux BTF (:func:`load_vmlinux`'s cache): a tracer
    that needs nothing more from it lets it go before compiling; a later call
    parses it again."""
    load_vmlinux.cache_clear()
