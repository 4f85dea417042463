"""The write side of a recording (format in docs/recording-format.md): the
directory, its metadata and its Parquet tables. The read side is
:mod:`mmntrace.recording`.

pyarrow is imported when the first table is written, not with this module
(pandas only for a table given as a DataFrame): a recorder writes its
first table after its start-up (streaming: the first segment; --aggregate:
at its end, or for a violation), so it never holds it beside the compiler's
memory.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .outpath import OutputDir

if TYPE_CHECKING:
    import pandas as pd

FORMAT_VERSION = 1
META = "metadata.json"
#: hist.parquet's columns and their types, as the writer makes them and the reader gives them
HIST_COLUMNS = [("func", "uint64"), ("hook_id", "uint8"), ("event_id", "int32"), ("slot", "int64"),
                ("count", "int64"), ("hook", object), ("event", object), ("callback", object)]


def typed(table):
    """``table`` with the columns pyarrow could type only as null (every value
    None; every stack empty: sleeps seen by --sleep-detect count) typed as
    strings, or lists of strings, as in every other segment."""
    import pyarrow as pa
    for i, f in enumerate(table.schema):
        if pa.types.is_null(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.string()))
        elif pa.types.is_list(f.type) and pa.types.is_null(f.type.value_type):
            table = table.set_column(i, f.name, table.column(i).cast(pa.list_(pa.string())))
    return table


def arrow_table(columns: dict):
    """A dict of columns as a pyarrow Table built from their buffers: numpy
    arrays of numbers or booleans, lists of ``str`` and None, and
    :class:`~mmntrace.decode.Coded` columns (names, or lists of names: a
    stack). pyarrow's own constructors (``pa.array``, ``pa.table``,
    ``Table.from_pydict``) import pandas, ~75 MiB, to ask whether their
    argument is pandas': a recorder writes its tables without it (peak RSS)."""
    import pyarrow as pa
    return pa.Table.from_arrays([_arrow(values) for values in columns.values()], names=list(columns))


def concat_tables(tables: list):
    """The tables one after the other (an empty list: an empty table)."""
    import pyarrow as pa
    return pa.concat_tables(tables) if tables else pa.Table.from_arrays([], names=[])


def _arrow(values):
    import numpy as np
    import pyarrow as pa
    from .decode import Coded
    if isinstance(values, Coded):
        lists = any(isinstance(v, list) for v in values.names)
        if not values.dictionary:       # each record's name, from the distinct names' bytes
            codes = np.asarray(values.codes, np.intp)
            return _take_lists(values.names, codes) if lists else _take_strings(values.names, codes)
        # a dictionary column: the distinct names once, and each record's code
        names = _lists(values.names) if lists else _strings(values.names, pa.large_string())
        codes = _numbers(np.asarray(values.codes, np.int8 if len(values.names) < 128 else np.int64))
        return pa.DictionaryArray.from_arrays(codes, names)
    if isinstance(values, np.ndarray):
        return _numbers(values)
    return _strings(values, pa.string())


def _numbers(values):
    import numpy as np
    import pyarrow as pa
    v = np.ascontiguousarray(values)
    if v.dtype.kind == "b":
        return pa.Array.from_buffers(pa.bool_(), len(v), [None, pa.py_buffer(np.packbits(v, bitorder="little"))])
    if v.dtype.kind not in "iuf":
        raise TypeError(f"arrow_table: numbers only as numpy arrays, not {v.dtype}")
    return pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [None, pa.py_buffer(v)])


def _strings(values, typ):
    """str and None -> a pyarrow string array (``typ``: string or large_string)."""
    import numpy as np
    import pyarrow as pa
    valid = np.array([x is not None for x in values], dtype=bool)
    data = [x.encode() if x is not None else b"" for x in values]
    offsets = np.zeros(len(data) + 1, np.int64 if typ == pa.large_string() else np.int32)
    offsets[1:] = np.cumsum([len(d) for d in data])
    return pa.Array.from_buffers(typ, len(data), [pa.py_buffer(np.packbits(valid, bitorder="little")),
                                                  pa.py_buffer(offsets), pa.py_buffer(b"".join(data))],
                                 null_count=int(len(data) - valid.sum()))


def _take_strings(names, codes, typ=None):
    """Each record's name (``names[codes]``: str or None) as a pyarrow string
    array (``typ``: large_string, the default, or string), made by numpy from
    the distinct names' bytes: no ``Array.take``, whose first call imports
    pyarrow.compute (4 MiB of a streaming recorder's heap; in the 6.1 guest
    the recorder's imports after the compile, timing ``imports_s``, took
    1.45-1.92 s with it, 0.49 s without). The names go through a fixed-width
    view, padded to the longest (a few dozen bytes), and the padding is left
    out in one step."""
    import numpy as np
    import pyarrow as pa
    enc = [x.encode() if x is not None else b"" for x in names]
    lens = np.array([len(b) for b in enc], np.int64)
    valid = np.array([x is not None for x in names], dtype=bool)
    n = len(codes)
    typ = pa.large_string() if typ is None else typ
    rec_lens = lens[codes]
    offsets = np.zeros(n + 1, np.int64 if typ == pa.large_string() else np.int32)
    np.cumsum(rec_lens, out=offsets[1:])
    width = int(lens.max()) if len(lens) else 0
    if width:           # (S0 is no numpy type)
        fixed = np.array(enc, dtype=f"S{width}").view(np.uint8).reshape(len(enc), width)
        data = fixed[codes][np.arange(width) < rec_lens[:, None]].tobytes()
    else:
        data = b""
    rec_valid = valid[codes]
    nulls = int(n - rec_valid.sum())
    bitmap = pa.py_buffer(np.packbits(rec_valid, bitorder="little")) if nulls else None
    return pa.Array.from_buffers(typ, n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=nulls)


def _take_lists(names, codes):
    """Each record's list of names (``names[codes]``: a sleep's stack) as a
    pyarrow list<string> array, as :func:`_take_strings` does for names: the
    distinct lists' items once, each record's run of them by index."""
    import numpy as np
    import pyarrow as pa
    lens = np.array([len(v) for v in names], np.int64)
    starts = np.zeros(len(names), np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    rec_lens = lens[codes]
    offsets = np.zeros(len(codes) + 1, np.int32)
    np.cumsum(rec_lens, out=offsets[1:])
    # record i's items: starts[codes[i]] + 0, 1, ... rec_lens[i] - 1
    idx = np.repeat(starts[codes] - offsets[:-1], rec_lens) + np.arange(offsets[-1])
    items = _take_strings([x for v in names for x in v], idx, pa.string())
    return pa.ListArray.from_arrays(_numbers(offsets), items)


def _lists(values):
    """Lists of str -> a pyarrow list<string> array (a sleep's stack)."""
    import numpy as np
    import pyarrow as pa
    offsets = np.zeros(len(values) + 1, np.int32)
    offsets[1:] = np.cumsum([len(v) for v in values])
    items = _strings([x for v in values for x in v], pa.string())
    return pa.ListArray.from_arrays(_numbers(offsets), items)


class RecordingWriter:
    """Writes a recording directory: made 0700 (never through a link, never a
    directory that holds anything), every file 0600 and written whole
    (:mod:`mmntrace.outpath`). Under sudo the directory and each file are
    handed to the invoking user as they are made, so a recording cut short
    by Ctrl-C is theirs too; ``hand_over=False`` keeps them root's."""

    def __init__(self, path: str | Path, meta: dict, *, hand_over: bool = True):
        self.dir = Path(path)
        self._out = OutputDir(self.dir, mode=0o700, hand_over=hand_over, must_be_empty=True)
        self.meta = dict(meta)
        # start_ns/end_ns: CLOCK_MONOTONIC, the records' clock (bpf_ktime_get_ns), so
        # that plots can put records on the recording's own time axis
        self.meta.update(format_version=FORMAT_VERSION, status="recording", segments=0,
                         events=0, sleeps=0, start_time=time.time(), start_ns=time.monotonic_ns(),
                         end_time=None, end_ns=None)
        self._seg = 0
        self.flush_meta()

    def flush_meta(self) -> None:
        self._out.write(META, json.dumps(self.meta, indent=1, default=str).encode())

    def close(self) -> None:
        """Let go of the directory (after the last write; finish() does not, metadata may follow)."""
        self._out.close()

    def _write_table(self, name: str, df) -> None:
        """``df``: a DataFrame, a pyarrow Table, or a dict of columns written
        without pandas (:func:`arrow_table`)."""
        f = ParquetFile()
        f.add(df)
        self._out.write(name, f.close())

    def write_segment(self, events, sleeps) -> None:
        """One segment's tables (DataFrames or pyarrow Tables; either may be empty)."""
        seg = Segment()
        seg.add(events, sleeps)
        self.add_segment(seg)

    def add_segment(self, seg: "Segment") -> None:
        """Write a segment built part by part (:class:`Segment`); nothing for an empty one."""
        if not seg.events and not seg.sleeps:
            return
        self._seg += 1
        for name, f in (("events", seg.files[0]), ("sleeps", seg.files[1])):
            if f.rows:
                self._out.write(f"{name}-{self._seg:06d}.parquet", f.close())
        self.meta["segments"] = self._seg
        self.meta["events"] += seg.events
        self.meta["sleeps"] += seg.sleeps
        self.flush_meta()

    def write_hist(self, hist: pd.DataFrame | dict) -> None:
        self._write_table("hist.parquet", hist)

    def finish(self, **extra) -> None:
        self.meta.update(extra)
        self.meta["status"] = "complete"
        self.meta["end_time"] = time.time()
        self.meta["end_ns"] = time.monotonic_ns()
        self.flush_meta()


def _as_table(df):
    """A DataFrame, a pyarrow Table or a dict of columns (:func:`arrow_table`) as a pyarrow Table."""
    import pyarrow as pa
    if isinstance(df, dict):
        df = arrow_table(df)
    return typed(df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False))


class ParquetFile:
    """A Parquet file made in memory a row group at a time (:meth:`add`), its
    bytes handed over whole (:meth:`close`): the recording's files are
    written whole (:mod:`mmntrace.outpath`). Its schema is its first table's;
    a later table is cast to it."""

    def __init__(self):
        self.rows = 0
        self._sink = self._writer = None

    def add(self, df) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = _as_table(df)
        if self._writer is None:
            # dictionary pages for the names (a few distinct values), not for the
            # numbers, nearly all distinct (timestamps, seq): a third less time
            # and a smaller file than dictionary-encoding every column
            names = [f.name for f in table.schema if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
                                                         or pa.types.is_boolean(f.type))]
            self._sink = pa.BufferOutputStream()
            self._writer = pq.ParquetWriter(self._sink, table.schema, compression="zstd", use_dictionary=names)
        elif not table.schema.equals(self._writer.schema):
            table = table.cast(self._writer.schema)
        self._writer.write_table(table)
        self.rows += len(table)

    def close(self) -> bytes:
        """The file's bytes (after at least one :meth:`add`)."""
        self._writer.close()
        return self._sink.getvalue().to_pybytes()


class Segment:
    """One segment's ``events`` and ``sleeps`` files, made from parts
    (:meth:`add`), each part a row group of each file as it comes. A streaming
    recorder converts a segment's records a slice at a time
    (mmntrace/record.py): only one slice's columns and tables are held at
    once, not the whole segment's (decoded, as pyarrow tables, and Parquet's
    encoders over them: about 0.9 KB a record at their peak). Parquet gives a
    reader the row groups one after the other, as one table.
    :meth:`RecordingWriter.add_segment` writes it."""

    def __init__(self):
        self.files = (ParquetFile(), ParquetFile())

    @property
    def events(self) -> int:
        return self.files[0].rows

    @property
    def sleeps(self) -> int:
        return self.files[1].rows

    def add(self, events, sleeps) -> None:
        """A part: its events and sleeps (DataFrames or pyarrow Tables; either may be empty)."""
        for f, table in zip(self.files, (events, sleeps)):
            if len(table):
                f.add(table)
