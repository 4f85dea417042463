"""The write side of a recording (format in docs/recording-format.md): the
directory, its metadata and its Parquet tables. The read side is
:mod:`mmntrace.recording`.

pandas and pyarrow are imported when the first table is written, not with
this module: an --aggregate recorder writes tables only at its end (or for a
violation), so it never holds them beside the compiler's memory at start-up.
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
    """A dict of columns, numpy arrays of numbers or lists of ``str`` and
    None, as a pyarrow Table built from their buffers. pyarrow's own
    constructors (``pa.array``, ``pa.table``, ``Table.from_pydict``) import
    pandas, ~75 MiB, to ask whether their argument is pandas': an
    --aggregate recorder writes its table at its stop, where that import
    would be its peak memory."""
    import numpy as np
    import pyarrow as pa
    arrays = []
    for values in columns.values():
        if isinstance(values, np.ndarray):
            v = np.ascontiguousarray(values)
            if v.dtype.kind not in "iuf":
                raise TypeError(f"arrow_table: numbers only as numpy arrays, not {v.dtype}")
            arrays.append(pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [None, pa.py_buffer(v)]))
            continue
        valid = np.array([x is not None for x in values], dtype=bool)
        data = [x.encode() if x is not None else b"" for x in values]
        offsets = np.zeros(len(data) + 1, np.int32)
        offsets[1:] = np.cumsum([len(d) for d in data])
        arrays.append(pa.Array.from_buffers(
            pa.string(), len(data), [pa.py_buffer(np.packbits(valid, bitorder="little")), pa.py_buffer(offsets),
                                     pa.py_buffer(b"".join(data))], null_count=int(len(data) - valid.sum())))
    return pa.Table.from_arrays(arrays, names=list(columns))


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

    def _write_table(self, name: str, df: pd.DataFrame | dict) -> None:
        """``df``: a DataFrame, or a dict of columns (lists, numpy arrays),
        written without pandas (:func:`arrow_table`)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = typed(arrow_table(df) if isinstance(df, dict) else pa.Table.from_pandas(df, preserve_index=False))
        sink = pa.BufferOutputStream()
        # dictionary pages for the names (a few distinct values), not for the
        # numbers, nearly all distinct (timestamps, seq): a third less time
        # and a smaller file than dictionary-encoding every column
        names = [f.name for f in table.schema if not (pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
                                                     or pa.types.is_boolean(f.type))]
        pq.write_table(table, sink, compression="zstd", use_dictionary=names)
        self._out.write(name, sink.getvalue().to_pybytes())

    def write_segment(self, events: pd.DataFrame, sleeps: pd.DataFrame) -> None:
        if events.empty and sleeps.empty:
            return
        self._seg += 1
        if not events.empty:
            self._write_table(f"events-{self._seg:06d}.parquet", events)
        if not sleeps.empty:
            self._write_table(f"sleeps-{self._seg:06d}.parquet", sleeps)
        self.meta["segments"] = self._seg
        self.meta["events"] += len(events)
        self.meta["sleeps"] += len(sleeps)
        self.flush_meta()

    def write_hist(self, hist: pd.DataFrame | dict) -> None:
        self._write_table("hist.parquet", hist)

    def finish(self, **extra) -> None:
        self.meta.update(extra)
        self.meta["status"] = "complete"
        self.meta["end_time"] = time.time()
        self.meta["end_ns"] = time.monotonic_ns()
        self.flush_meta()
