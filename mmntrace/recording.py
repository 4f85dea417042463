"""A recording: a self-contained directory (format in docs/recording-format.md).

    metadata.json        kernel, probes attached/skipped, backend, drops, start/end, status
    events-NNNNNN.parquet  hook and callback invocations, symbolized
    sleeps-NNNNNN.parquet  sleeps / might-sleep calls inside must-not-sleep callbacks
    hist.parquet         --aggregate: in-kernel log2 latency histograms and totals

Segments are written whole (temporary name, then rename), so a recorder killed
with SIGKILL loses at most the segment it was filling; ``metadata.json`` says
``"status": "recording"`` until the recorder finishes, which is how a reader
knows a recording was cut short. Files are 0600 in a 0700 directory:
recordings hold kernel addresses, which defeat KASLR. Under sudo they belong
to the user who ran it, from the moment each is made (:mod:`mmntrace.outpath`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import hooks
from .errors import RecordingError, RecordingVersionError

from .store import FORMAT_VERSION, HIST_COLUMNS, META, RecordingWriter  # noqa: F401  (the write side, re-exported)


# The columns of each table (docs/recording-format.md), so that a recording
# with no rows of a kind still gives a frame with its columns: a clean
# recording's sleeps() can be filtered like any other.
_IDENTITY = [("ts_ns", "uint64"), ("cpu", "uint32"), ("pid", "uint32"), ("tid", "uint32"), ("comm", object),
             ("mm", "uint64"), ("hook_id", "uint8"), ("event_id", "int32"), ("start", "uint64"),
             ("end", "uint64"), ("blockable", bool), ("atomic", bool), ("irqs_off", bool),
             ("must_not_sleep", bool), ("preempt_count", "uint32"), ("migration_disabled", bool),
             ("rcu_read_side", bool), ("dur_ns", "uint64"), ("ret", "int32"),
             ("seq", "uint64"), ("stack_id", "int32"), ("func", "uint64")]
EVENT_COLUMNS = [("kind", object), *_IDENTITY, ("hook", object), ("event", object), ("callback", object),
                 ("caller", object), ("caller_class", object), ("t_s", "float64"), ("mm_hex", object)]
SLEEP_COLUMNS = [*_IDENTITY, ("addr", "uint64"), ("hook", object), ("event", object), ("callback", object),
                 ("rule", object), ("sleeper", object), ("stack", object), ("t_s", "float64"), ("mm_hex", object)]
#: columns derived on read, not stored: seconds since the recording started
#: (metadata ``start_ns``; NaN for a recording made before it was kept) and
#: the mm as the kernel prints it (hex; categorical: a recording holds few mms)
DERIVED = {"t_s": ("ts_ns",), "mm_hex": ("mm",)}


def _stable_table(t: pa.Table) -> pa.Table:
    """A segment's table with every hook name stable (as :func:`mmntrace.hooks.stable_frame`)."""
    import pyarrow.compute as pc
    for c in hooks.HOOK_COLUMNS:
        i = t.schema.get_field_index(c)
        if i < 0:
            continue
        col = t.column(i)
        names = pc.unique(col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col).to_pylist()
        if all(hooks.stable(n) == n for n in names):
            continue
        chunks = []
        for ch in col.chunks:
            if pa.types.is_dictionary(ch.type):
                new = pa.array([hooks.stable(v) for v in ch.dictionary.to_pylist()], pa.string())
                chunks.append(new.take(ch.indices).dictionary_encode())
            else:
                chunks.append(pa.array([hooks.stable(v) for v in ch.to_pylist()], pa.string()))
        t = t.set_column(i, c, pa.chunked_array(chunks) if chunks else col)
    return t


def stable_meta(meta: dict) -> dict:
    """Metadata with every hook named by its stable name (``hooks``,
    ``hooks_missing``, ``attached``, ``totals``), and ``hook_symbols`` (each
    hook's kernel entry point) taken from the attached hook probes where a
    recording made before it lacks it."""
    def fix(rows):
        return [r | {"hook": hooks.stable(r["hook"])} if isinstance(r, dict) and "hook" in r else r
                for r in rows] if isinstance(rows, list) else rows
    m = dict(meta)
    if isinstance(m.get("hooks"), list):
        m["hooks"] = [hooks.stable(h) for h in m["hooks"]]
    for k in ("hooks_missing", "attached", "totals"):
        if k in m:
            m[k] = fix(m[k])
    if not isinstance(m.get("hook_symbols"), dict) and isinstance(m.get("attached"), list):
        m["hook_symbols"] = {a["hook"]: a["symbol"] for a in m["attached"]
                             if isinstance(a, dict) and a.get("kind") == "hook" and isinstance(a.get("hook"), str)
                             and isinstance(a.get("symbol"), str)}
    return m


def empty_frame(schema, columns=None) -> pd.DataFrame:
    """A frame with no rows and the columns (and dtypes) of one table."""
    df = pd.DataFrame({n: pd.Series(dtype=t) for n, t in schema})
    return df if columns is None else df[[c for c in columns if c in df.columns]]


class Recording:
    """Read side. Raises RecordingError with one sentence for anything unreadable.

    >>> r = Recording("rec")
    >>> ev = r.events()                  # hooks and callbacks
    >>> ev[ev.kind == "callback"].groupby("callback").dur_ns.describe()
    >>> r.sleeps()[["callback", "rule", "sleeper"]]   # what slept where it must not
    """

    def __init__(self, path: str | Path):
        self.dir = Path(path)
        if not self.dir.is_dir():
            raise RecordingError(f"{self.dir} is not a directory")
        mp = self.dir / META
        # a private directory of another user (root's, recorded with sudo
        # --keep-root-owner or by an older mmntrace) reads as empty: say so
        if not os.access(self.dir, os.R_OK | os.X_OK) or (mp.exists() and not os.access(mp, os.R_OK)):
            raise RecordingError(f"{self.dir} is not readable by this user (it is private to its owner, "
                                 f"uid {self.dir.stat().st_uid}): sudo chown -R $USER {self.dir}")
        if not mp.exists():
            raise RecordingError(f"{self.dir} is not an mmntrace recording (no {META})")
        try:
            self.meta = json.loads(mp.read_text())
            if not isinstance(self.meta, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError) as e:
            raise RecordingError(f"{mp} is corrupt ({e})") from None
        v = self.meta.get("format_version")
        if not isinstance(v, int):
            raise RecordingError(f"{mp} has no format_version")
        if v > FORMAT_VERSION:
            raise RecordingVersionError(f"{self.dir} was written by a newer mmntrace (format {v}; "
                                        f"this one reads up to {FORMAT_VERSION}): upgrade mmntrace")
        self.meta = stable_meta(self.meta)

    @property
    def complete(self) -> bool:
        return self.meta.get("status") == "complete"

    def _read(self, prefix: str, columns=None, schema=None) -> pd.DataFrame:
        files = sorted(self.dir.glob(f"{prefix}-*.parquet"))
        want = None if columns is None else list(columns)
        stored = None if want is None else list(dict.fromkeys(
            c for w in want for c in (DERIVED.get(w, (w,)))))
        frames = []
        for f in files:
            try:
                frames.append(pq.read_table(f, columns=stored).to_pandas())
            except (pa.ArrowException, OSError) as e:
                raise RecordingError(f"segment {f.name} of {self.dir} is corrupt ({str(e).splitlines()[0]})") from None
        frames = [f for f in frames if len(f.columns)]
        if not frames:
            return empty_frame(schema, columns) if schema is not None else pd.DataFrame()
        df = self._derive(hooks.stable_frame(pd.concat(frames, ignore_index=True)), want)
        return df if want is None else df[[c for c in want if c in df.columns]]

    def _derive(self, df: pd.DataFrame, want) -> pd.DataFrame:
        """Add the :data:`DERIVED` columns asked for (all of them when ``want`` is None)."""
        if (want is None or "t_s" in want) and "ts_ns" in df:
            start = self.meta.get("start_ns")
            df["t_s"] = ((df["ts_ns"].astype("int64") - int(start)) / 1e9 if isinstance(start, int)
                         else np.full(len(df), np.nan))
        if (want is None or "mm_hex" in want) and "mm" in df:
            codes, uniq = pd.factorize(df["mm"], sort=True)
            df["mm_hex"] = pd.Categorical.from_codes(codes, [f"{int(v):#x}" for v in uniq])
        return df

    def segment_files(self, prefix: str) -> list[Path]:
        """The segments of one kind (``events`` or ``sleeps``), in recording order."""
        return sorted(self.dir.glob(f"{prefix}-*.parquet"))

    def _parquet(self, f: Path, read_dictionary=()) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(f, read_dictionary=list(read_dictionary) or None)
        except (pa.ArrowException, OSError) as e:
            raise RecordingError(f"segment {f.name} of {self.dir} is corrupt ({str(e).splitlines()[0]})") from None

    def rows(self, prefix: str) -> int:
        """Rows in all segments of one kind, from the Parquet footers (reads no data)."""
        return sum(self._parquet(f).metadata.num_rows for f in self.segment_files(prefix))

    def tables(self, prefix: str, columns=None, dictionary=()):
        """Segments one at a time as pyarrow Tables: only ``columns`` (those a
        segment lacks are absent from its table), string columns named in
        ``dictionary`` read dictionary-encoded (no Python strings made)."""
        for f in self.segment_files(prefix):
            names = self._parquet(f).schema_arrow.names
            cols = [c for c in columns if c in names] if columns is not None else None
            try:
                t = self._parquet(f, [c for c in dictionary if c in names and (cols is None or c in cols)]
                                  ).read(columns=cols)
            except (pa.ArrowException, OSError) as e:
                raise RecordingError(f"segment {f.name} of {self.dir} is corrupt ({str(e).splitlines()[0]})") from None
            yield _stable_table(t)

    def column_range(self, prefix: str, column: str) -> tuple[int, int] | None:
        """(min, max) of an integer column over all segments: from the Parquet
        statistics where every row group has them, else by reading that column."""
        lo = hi = None
        for f in self.segment_files(prefix):
            pf = self._parquet(f)
            idx = pf.schema_arrow.get_field_index(column)
            if idx < 0:
                continue
            md = pf.metadata
            stats = [md.row_group(i).column(idx).statistics for i in range(md.num_row_groups)]
            if all(s is not None and s.has_min_max for s in stats):
                mins = [int(s.min) for s in stats if s.num_values]
                maxs = [int(s.max) for s in stats if s.num_values]
            else:
                try:
                    col = pf.read(columns=[column]).column(column).to_numpy()
                except (pa.ArrowException, OSError) as e:
                    raise RecordingError(f"segment {f.name} of {self.dir} is corrupt ({str(e).splitlines()[0]})") from None
                mins, maxs = ([int(col.min())], [int(col.max())]) if len(col) else ([], [])
            if mins:
                lo = min(mins) if lo is None else min(lo, *mins)
                hi = max(maxs) if hi is None else max(hi, *maxs)
        return None if lo is None else (lo, hi)

    def events(self, columns=None) -> pd.DataFrame:
        """One row per hook or callback invocation, in recording order (columns:
        docs/recording-format.md; ``columns`` reads only those). ``t_s``
        (seconds since the recording started) and ``mm_hex`` (the mm as the
        kernel prints it) are derived as they are read. Empty recordings give
        the same columns with no rows."""
        return self._read("events", columns, EVENT_COLUMNS)

    def sleeps(self) -> pd.DataFrame:
        """One row per sleep (``rule`` "sleep") or might-sleep call ("might_sleep")
        inside an invocation that must not sleep; ``seq`` joins events.seq and
        ``stack`` is the symbolized kernel stack, innermost first. A clean
        recording gives the columns with no rows."""
        return self._read("sleeps", schema=SLEEP_COLUMNS)

    def hist(self) -> pd.DataFrame:
        """--aggregate recordings: the in-kernel log2 latency histograms, one row
        per (hook, callback, event, slot) with its ``count``; slot k holds
        durations in [2^(k-1), 2^k) ns. Others give the columns with no rows."""
        p = self.dir / "hist.parquet"
        if not p.exists():
            return empty_frame(HIST_COLUMNS)
        try:
            return hooks.stable_frame(pq.read_table(p).to_pandas())
        except (pa.ArrowException, OSError) as e:
            raise RecordingError(f"hist.parquet of {self.dir} is corrupt ({e})") from None


def load(path: str | Path) -> pd.DataFrame:
    """The events of a recording as one DataFrame (columns: docs/recording-format.md)."""
    return Recording(path).events()
