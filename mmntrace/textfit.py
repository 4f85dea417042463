"""Fitting a table to a terminal width without ever cutting a number.

rich squeezes a table that is too wide by cutting cells to ``…``, numbers
included. Here a table is described first (:class:`Grid`: headings and plain
string cells), then laid out for a width: every column gets an explicit width
that its content fits in, so rich never has to squeeze. The steps, each tried
only when the one before does not fit:

1. every column at its natural width, full headings; then short headings;
2. name columns wrapped (at ``_`` and spaces, a module tag such as ``[kvm]``
   kept whole) down to their minimum width, widest first, as long as only
   one column has to wrap;
3. else columns marked ``stack`` moved into the first column as labelled
   lines (else step 2 however many columns wrap);
4. the other columns split over several tables, each led by the first.

Number and fixed columns (sparklines, addresses) are never wrapped or cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import NamedTuple, Union

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

#: columns are separated by a pad, the blank divider of SIMPLE_HEAD, and a pad
GAP = 3


class Line(NamedTuple):
    """One logical line of a name cell: wrapped lines after the first start
    at ``indent + hang``."""

    text: str
    indent: int = 0
    hang: int = 0


Cell = Union[str, tuple]     # a plain string, or a tuple of Line for a structured name cell


@dataclass(frozen=True)
class Col:
    """A column: ``kind`` is "num" (right-aligned, never wrapped), "fixed"
    (left-aligned, never wrapped: sparklines, addresses) or "name" (wrapped
    when the table must shrink, never below ``min_width``). ``short`` is a
    narrower heading; ``stack`` lets the column move into the first as a
    labelled line; columns of one ``group`` stay in the same table when the
    table is split."""

    header: str
    kind: str = "num"
    short: str = ""
    min_width: int = 12
    stack: bool = False
    group: str = ""

    @property
    def justify(self) -> str:
        return "right" if self.kind == "num" else "left"


@dataclass
class Grid:
    """A table before layout. ``valign`` "bottom" puts the numbers of a
    multi-line key (a hook / callback / event tree) on its last line."""

    title: str | None
    cols: list[Col]
    rows: list[list[Cell]] = field(default_factory=list)
    valign: str = "top"

    def add(self, *cells: Cell) -> None:
        self.rows.append(list(cells))


@dataclass
class Layout:
    """A grid with the width and heading of each column decided."""

    grid: Grid
    widths: list[int]
    headers: list[str]


# ---- wrapping ----------------------------------------------------------------------------

#: wrap points: after underscores and at spaces; a module tag such as [kvm] stays whole
_CHUNK = re.compile(r"\[[^\]\s]*\]|[^\s_\[]*_+|[^\s_\[]+|\[|\s+")


def _lines(cell: Cell) -> list[Line]:
    if isinstance(cell, tuple):
        return list(cell)
    return [Line(s) for s in ("" if cell is None else str(cell)).split("\n")]


def wrap(text: str, width: int, indent: int = 0, hang: int = 0) -> list[str]:
    """Greedy wrap of ``text`` into lines of at most ``width`` cells, breaking
    after underscores and at spaces (kernel symbols have no spaces); a chunk
    longer than a line is split where it must. Lines carry their indent."""
    out: list[str] = []
    cur, pad = "", indent
    for chunk in _CHUNK.findall(text):
        room = max(1, width - pad)
        if chunk.isspace():
            if cur and cell_len(cur) + len(chunk) < room:
                cur += chunk
            elif cur:
                out.append(" " * pad + cur.rstrip())
                cur, pad = "", indent + hang
            continue
        if cur and cell_len(cur) + cell_len(chunk) > room:
            out.append(" " * pad + cur.rstrip())
            cur, pad = "", indent + hang
            room = max(1, width - pad)
        cur += chunk
        while cell_len(cur) > room:          # one chunk wider than the column: split it
            out.append(" " * pad + cur[:room])
            cur, pad = cur[room:], indent + hang
            room = max(1, width - pad)
    if cur or not out:
        out.append(" " * pad + cur.rstrip())
    return out


def balanced(text: str, width: int, indent: int = 0, hang: int = 0) -> list[str]:
    """:func:`wrap` into as few lines, preferring breaks at spaces to breaks
    inside a symbol, then lines as even as may be (so a name wraps as
    ``arch_invalidate_`` / ``secondary_tlbs``, not leaving ``tlbs`` alone,
    and ``invalidate_range_start [kvm]`` breaks before ``[kvm]``)."""
    best = wrap(text, width, indent, hang)
    if len(best) < 2:
        return best

    def cost(lines: list[str]) -> tuple[int, int]:
        return sum(ln.endswith("_") for ln in lines[:-1]), max(cell_len(ln) for ln in lines)
    # never so narrow that a piece wrapping cannot break would have to be cut
    lo = indent + max(0, hang) + max((cell_len(ch) for ch in _CHUNK.findall(text) if not ch.isspace()), default=1)
    for w in range(width - 1, lo - 1, -1):
        trial = wrap(text, w, indent, hang)
        if len(trial) > len(best):
            break
        if cost(trial) < cost(best):
            best = trial
    return best


def cell_text(cell: Cell, width: int) -> str:
    """A name cell wrapped to ``width``."""
    return "\n".join(s for ln in _lines(cell) for s in balanced(ln.text, width, ln.indent, ln.hang))


def _cell_width(cell: Cell) -> int:
    return max((ln.indent + cell_len(ln.text) for ln in _lines(cell)), default=0)


# ---- widths ------------------------------------------------------------------------------

def _natural(grid: Grid, i: int, header: str) -> int:
    return max([cell_len(header)] + [_cell_width(r[i]) for r in grid.rows])


def _longest_chunk(grid: Grid, i: int) -> int:
    """The widest piece of column ``i`` that wrapping cannot break (with its
    indent): narrower, a word such as qemu-system-x86 would be cut."""
    return max((ln.indent + ln.hang + cell_len(ch) for r in grid.rows for ln in _lines(r[i])
                for ch in _CHUNK.findall(ln.text) if not ch.isspace()), default=0)


def _widths(grid: Grid, width: int, headers: list[str], shrink: bool) -> list[int] | None:
    """Column widths that fit ``width``, shrinking name columns widest first
    when allowed; None when they cannot."""
    nat = [_natural(grid, i, h) for i, h in enumerate(headers)]
    excess = sum(nat) + GAP * (len(nat) - 1) - width
    if excess <= 0:
        return nat
    if not shrink:
        return None
    floor = [min(n, max(c.min_width, cell_len(h), _longest_chunk(grid, i))) if c.kind == "name" else n
             for i, (c, n, h) in enumerate(zip(grid.cols, nat, headers))]
    w = list(nat)
    while excess > 0:
        room = [(w[i] - floor[i], w[i], i) for i in range(len(w)) if w[i] > floor[i]]
        if not room:
            return None
        i = max(room, key=lambda t: (t[1], -t[2]))[2]
        w[i] -= 1
        excess -= 1
    return w


def fits(grid: Grid, width: int) -> Layout | None:
    """The grid at its natural widths and full headings, if that fits."""
    headers = [c.header for c in grid.cols]
    w = _widths(grid, width, headers, shrink=False)
    return Layout(grid, w, headers) if w else None


def shrunk(grid: Grid, width: int, wrap_names: bool = True) -> Layout | None:
    """Steps 1 and 2: natural widths, else short headings and (unless
    ``wrap_names`` is false) wrapped names."""
    lay = fits(grid, width)
    if lay:
        return lay
    headers = [c.short or c.header for c in grid.cols]
    w = _widths(grid, width, headers, shrink=wrap_names)
    return Layout(grid, w, headers) if w else None


def stacked(grid: Grid) -> Grid | None:
    """The stack columns moved into the first column, one labelled line each."""
    moved = [i for i, c in enumerate(grid.cols) if c.stack and i]
    if not moved:
        return None
    keep = [i for i in range(len(grid.cols)) if i not in moved]
    rows = []
    for r in grid.rows:
        key = tuple(_lines(r[0])) + tuple(Line(f"{grid.cols[i].header}: {r[i]}", 2, 2)
                                          for i in moved if str(r[i]).strip())
        rows.append([key] + [r[i] for i in keep[1:]])
    first = replace(grid.cols[0], kind="name", min_width=max(grid.cols[0].min_width, 20))
    return Grid(grid.title, [first] + [grid.cols[i] for i in keep[1:]], rows, grid.valign)


def _units(grid: Grid) -> list[list[int]]:
    """The columns after the first in runs that stay together (same group)."""
    units: list[list[int]] = []
    for i in range(1, len(grid.cols)):
        g = grid.cols[i].group
        if units and g and grid.cols[units[-1][-1]].group == g:
            units[-1].append(i)
        else:
            units.append([i])
    return units


def _even(units: list[list[int]], n: int) -> list[list[int]]:
    """``units`` in ``n`` consecutive parts of as even a column count as may be."""
    total = sum(len(u) for u in units)
    parts: list[list[int]] = [[]]
    for u in units:
        if parts[-1] and len(parts) < n and sum(len(p) for p in parts) + len(u) / 2 > total * len(parts) / n:
            parts.append([])
        parts[-1] += u
    return parts


def split(grid: Grid, width: int) -> list[Layout] | None:
    """Step 4: the columns after the first over the fewest tables that fit,
    each led by the first column, the columns shared out evenly and a group
    (count A, count B, B/A) never parted."""
    units = _units(grid)
    for n in range(2, len(units) + 1):
        parts = _even(units, n)
        lays = [shrunk(_pick(grid, [0] + part), width) for part in parts]
        if all(lays):
            for k, lay in enumerate(lays):
                lay.grid.title = f"{grid.title} ({k + 1} of {len(lays)})" if grid.title else None
            return lays
    return None


def _pick(grid: Grid, idx: list[int]) -> Grid:
    return Grid(grid.title, [grid.cols[i] for i in idx], [[r[i] for i in idx] for r in grid.rows], grid.valign)


def _wrapped(lay: Layout) -> int:
    """How many columns of the layout are narrower than their content."""
    return sum(w < _natural(lay.grid, i, h) for i, (w, h) in enumerate(zip(lay.widths, lay.headers)))


def layout(grid: Grid, width: int) -> list[Layout]:
    """The grid laid out for ``width`` (steps 1-4 above): one table, or several."""
    lay = shrunk(grid, width)
    st = stacked(grid)
    # one wrapped column reads well; rows of several wrapped names side by
    # side do not, so a table with columns to stack stacks them instead
    if lay and (st is None or _wrapped(lay) <= 1):
        return [lay]
    lay_st = shrunk(st, width) if st is not None else None
    if lay_st or lay:
        return [lay_st or lay]
    grid = st or grid
    parts = split(grid, width)
    if parts:
        return parts
    # narrower than any layout can be: let rich squeeze it rather than fail
    return [Layout(grid, [_natural(grid, i, c.header) for i, c in enumerate(grid.cols)],
                   [c.header for c in grid.cols])]


# ---- rendering ---------------------------------------------------------------------------

class Titled(Table):
    """A table whose title is printed on its own line above it (rich would wrap
    a title wider than the table)."""

    heading: str | None = None

    def __rich_console__(self, console, options):
        if self.heading:
            yield Text(self.heading, style="bold")
        yield from super().__rich_console__(console, options)


def new_table(title: str | None = None, **kw) -> Titled:
    """An empty table in the report's style: a rule under the headings, no frame."""
    t = Titled(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, **kw)
    t.heading = title
    return t


def to_table(lay: Layout) -> Table:
    """A rich table with every column at its decided width: nothing for rich to cut."""
    g = lay.grid
    cells = [[cell_text(c, w) if col.kind == "name" else "" if c is None else str(c)
              for c, col, w in zip(r, g.cols, lay.widths)]
             for r in g.rows]
    # rows wrapped over several lines read better apart (one wrapped row among
    # single lines does not need it), except a tree's, whose lines belong together
    multi = g.valign == "top" and sum(any("\n" in c for c in r) for r in cells) > 1
    t = new_table(g.title, show_lines=multi)
    for i, (col, w, h) in enumerate(zip(g.cols, lay.widths, lay.headers)):
        t.add_column(h, justify=col.justify, width=w, min_width=w, no_wrap=True, vertical=g.valign if i else "top")
    for r in cells:
        t.add_row(*(Text(c) for c in r))
    return t


def tables(grid: Grid, width: int) -> list[Table]:
    """The grid as one or more rich tables that fit ``width``."""
    return [to_table(lay) for lay in layout(grid, width)]
