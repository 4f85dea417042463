"""Python views of C record layouts, derived from the C headers themselves.

Each struct is defined once, in C (``mmntrace/bpf/mmntrace.h`` for the tracer's
records; the lab's test module has its own header, read the same way). This module parses the
small subset of C those headers use (``#define NAME number``, enums, structs of
fixed-width fields, one per line, arrays sized by a number or a define) into
numpy dtypes with C alignment, so Python can never drift from the C side.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

BPF_HEADER = Path(__file__).resolve().parent / "bpf" / "mmntrace.h"   # package data

_CTYPES = {
    "__u8": "u1", "__s8": "i1", "char": "S1", "__u16": "<u2", "__s16": "<i2",
    "__u32": "<u4", "__s32": "<i4", "__u64": "<u8", "__s64": "<i8",
}


class Header:
    """Defines, enums and struct dtypes of one header."""

    def __init__(self, text: str):
        text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        self.defines: dict[str, int] = {}
        for m in re.finditer(r"^#define\s+(\w+)\s+\(?\s*(\d+)[uUlL]*\s*(?:<<\s*(\d+))?\s*\)?\s*$", text, re.M):
            v = int(m.group(2))
            self.defines[m.group(1)] = v << int(m.group(3)) if m.group(3) else v
        self.enums: dict[str, dict[str, int]] = {}
        for m in re.finditer(r"enum\s+(\w+)\s*\{(.*?)\}\s*;", text, re.S):
            members, nxt = {}, 0
            for item in m.group(2).split(","):
                item = item.strip()
                if not item:
                    continue
                name, _, val = item.partition("=")
                nxt = self._value(val.strip(), members) if val else nxt
                members[name.strip()] = nxt
                nxt += 1
            self.enums[m.group(1)] = members
            self.defines.update(members)
        self.structs: dict[str, np.dtype] = {}
        for m in re.finditer(r"struct\s+(\w+)\s*\{(.*?)\}\s*;", text, re.S):
            fields = []
            for line in m.group(2).split(";"):
                line = line.strip()
                if not line:
                    continue
                fm = re.fullmatch(r"(\w+)\s+(\w+)(?:\[(\w+)\])?", line)
                if not fm or fm.group(1) not in _CTYPES:
                    raise ValueError(f"struct {m.group(1)}: cannot parse field '{line}'")
                ctype, name, count = fm.groups()
                if ctype == "char":
                    fields.append((name, f"S{self._value(count, {})}"))
                elif count:
                    fields.append((name, _CTYPES[ctype], (self._value(count, {}),)))
                else:
                    fields.append((name, _CTYPES[ctype]))
            self.structs[m.group(1)] = np.dtype(fields, align=True)

    def _value(self, tok: str, local: dict) -> int:
        if tok in local:
            return local[tok]
        if tok in self.defines:
            return self.defines[tok]
        return int(tok, 0)


@functools.lru_cache(maxsize=None)
def header(path: Path = BPF_HEADER) -> Header:
    return Header(Path(path).read_text())


def record_dtype() -> np.dtype:
    """dtype of struct mmnt_record, the one record on the ring buffer."""
    return header(BPF_HEADER).structs["mmnt_record"]

