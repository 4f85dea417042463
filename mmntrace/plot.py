"""Figures of a :class:`mmntrace.aggregate.Summary` (matplotlib, no display needed).

Each ``fig_*`` function returns a matplotlib Figure, or None when the
recording holds nothing for it (say, no per-event times in an --aggregate
recording: :func:`why_missing` says why in a sentence); :func:`write_all`
saves them as PNG or SVG; the HTML report embeds the same figures and the
notebooks show them.

What every figure keeps to (tests/unit/test_plot.py checks it):

- no empty axes: a panel with nothing to draw is left out and the grid
  re-flows; a series too small for a CDF line (one call) is a marker;
- durations read as ``8.39 ms`` (:func:`mmntrace.units.fmt_duration`, the
  text report's formatter), log axes included; counts as ``1k``, fractions as
  percentages, never ``9×10⁻¹``;
- callback names whole, ``[module]`` included: legends go below the panel;
- time is seconds since the recording started, the axis from its start to
  its end (:func:`mmntrace.plotfmt.time_axis`), so an idle start or end
  shows as idle;
- in --aggregate recordings, durations are log2 bucket upper bounds and say
  so (``max ≤ 8.2 µs``).

Figures are made as :class:`matplotlib.figure.Figure` objects, never through
pyplot, so no backend is chosen here: saving uses Agg by itself, and a
notebook's inline backend is left alone when it imports this module.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from .aggregate import Summary, _hook_sort, bucket_lo
from .outpath import OutputDir
from .plotfmt import (TimeAxis, count_axis, count_colorbar, duration_axis, fmt_duration, fmt_upper, percent_axis,
                      seconds_axis, time_axis, wrap_name)

FIGURES = ["latency-cdf", "latency-heatmap", "rate-timeline", "violations-timeline"]
WHOLE_HOOK = "(hook as a whole)"


def _merge_cdfs(parts):
    """Weighted merge of step CDFs [(values, fractions, n), ...] -> (values, fractions)."""
    if len(parts) == 1:
        return parts[0][0], parts[0][1]
    xs = np.unique(np.concatenate([p[0] for p in parts]))
    total = sum(p[2] for p in parts)
    y = np.zeros(len(xs))
    for v, f, n in parts:
        i = np.searchsorted(v, xs, side="right") - 1
        y += np.where(i >= 0, f[np.clip(i, 0, None)], 0.0) * n
    return xs, y / total


def callback_cdfs(s: Summary) -> dict:
    """hook -> {callback (None: the hook as a whole) -> (values_ns, fractions)}, events merged;
    series without a point left out."""
    groups: dict = {}
    counts = {(r["hook"], r["callback"], r["event"]): r["count"] for r in s.latency}
    for (hook, cb, ev), (v, f) in s.cdf.items():
        if len(v):
            groups.setdefault(hook, {}).setdefault(cb, []).append((np.asarray(v), np.asarray(f),
                                                                  counts.get((hook, cb, ev), 1)))
    return {h: {cb: _merge_cdfs(p) for cb, p in d.items()} for h, d in groups.items()}


def _rows(n: int, cols: int) -> int:
    return (n + cols - 1) // cols


def _grid(n: int, w: float = 6.0, h: float = 3.6, cols: int = 2) -> tuple[Figure, list]:
    """A figure with exactly n axes, cols to a row: no hidden spare axes."""
    cols = min(cols, n)
    rows = _rows(n, cols)
    fig = Figure(figsize=(w * cols, h * rows + 0.6), layout="constrained")
    gs = fig.add_gridspec(rows, cols)
    return fig, [fig.add_subplot(gs[i // cols, i % cols]) for i in range(n)]


def _panels(n: int, w: float, h: float, cols: int = 2) -> tuple[Figure, list]:
    """n subfigures, cols to a row, each to hold one axes and the legend below
    it (where constrained layout makes room for names of any length)."""
    cols = min(cols, n)
    rows = _rows(n, cols)
    fig = Figure(figsize=(w * cols, h * rows + 0.6), layout="constrained")
    subs = list(fig.subfigures(rows, cols, squeeze=False).ravel())
    for sf in subs[n:]:
        sf.set_visible(False)
    return fig, subs[:n]


# ---- latency CDF ----------------------------------------------------------------------------------------

def _cdf_label(cb: str | None, tag: str | None, values: np.ndarray, upper: bool) -> str:
    """Legend text: the whole callback name, the recording's tag in a
    comparison, and in an --aggregate recording the max as the bound it is."""
    text = wrap_name(cb) if cb else WHOLE_HOOK
    if tag:
        text += f" ({tag})"
    if upper:
        text += f", max {fmt_upper(values[-1])}"
    return text


def _draw_cdf(ax, v: np.ndarray, f: np.ndarray, *, style: str, color: str, label: str, whole: bool) -> np.ndarray:
    """One CDF on ax; returns the x values drawn. A series with one distinct
    value (say, one call) is a marker at its value and fraction: a step line
    through one point draws nothing."""
    x = np.maximum(np.asarray(v, dtype=float), 1.0)      # 0 ns drawn at 1 ns: a log axis has no 0
    f = np.asarray(f, dtype=float)
    if len(np.unique(x)) == 1:
        ax.plot(x[-1:], f[-1:], ls="none", marker="o" if style == "-" else "D", ms=7, color=color,
                mfc=color if style == "-" else "none", label=label, zorder=3)
    else:
        # the CDF rises from 0 at the smallest value (the points start at 1/n)
        ax.step(np.r_[x[0], x], np.r_[0.0, f], where="post", ls=style, color=color,
                lw=2.6 if whole else 1.6, alpha=0.8 if whole else 1.0, label=label)
    return x


def _cdf_hooks(s: Summary, other: Summary | None) -> tuple[dict, dict, list]:
    """Per-hook CDFs of s and other, and the hooks with data in either, in
    order; with ``other``, by stable names (so that the secondary-TLB hook of a
    6.1 and of a 6.12 recording share a panel)."""
    ca = callback_cdfs(s)
    cb_ = callback_cdfs(other) if other is not None else {}
    if other is None:
        return ca, cb_, sorted((h for h in ca if ca[h]), key=_hook_sort)
    from .hooks import stable
    order = {stable(h): _hook_sort(h) for h in [*cb_, *ca]}
    ca, cb_ = ({stable(h): v for h, v in d.items()} for d in (ca, cb_))
    return ca, cb_, sorted((h for h in set(ca) | set(cb_) if ca.get(h) or cb_.get(h)), key=order.get)


def _cdf_bounds_note(summaries: list[Summary], tags: list[str | None]) -> tuple[str, str]:
    """The x label and the title's note: in --aggregate recordings every value
    drawn is the upper bound of a log2 bucket."""
    agg = [t for sm, t in zip(summaries, tags) if sm.kernel_hist]
    if not agg:
        return "latency (log scale)", ""
    if len(agg) == len(summaries):
        return "latency, upper bound of its log2 bucket (log scale)", " (log2 bucket upper bounds: --aggregate)"
    return "latency (log scale)", f" ({', '.join(agg)}: log2 bucket upper bounds, --aggregate)"


def fig_cdf(s: Summary, other: Summary | None = None, *, labels=("A", "B")) -> Figure | None:
    """Latency CDF per callback, one panel per hook, the legend below each
    panel; with ``other``, B dashed over A."""
    ca, cb_, hooks = _cdf_hooks(s, other)
    if not hooks:
        return None
    sides = [(ca, "-", labels[0] if other is not None else None, s)]
    if other is not None:
        sides.append((cb_, "--", labels[1], other))
    xlabel, note = _cdf_bounds_note([summ for *_, summ in sides], [tag for _s, _st, tag, _sm in sides])
    entries = max(len(set(ca.get(h, {})) | set(cb_.get(h, {}))) * len(sides) for h in hooks)
    fig, panels = _panels(len(hooks), w=6.2, h=3.3 + 0.16 * entries)
    for sf, hook in zip(panels, hooks):
        ax = sf.add_subplot()
        names = sorted(set(ca.get(hook, {})) | set(cb_.get(hook, {})), key=lambda c: (c is not None, c or ""))
        drawn = []
        for i, cb in enumerate(names):
            color = "0.55" if cb is None else f"C{i % 10}"
            for src, style, tag, summ in sides:
                if cb in src.get(hook, {}):
                    v, f = src[hook][cb]
                    drawn.append(_draw_cdf(ax, v, f, style=style, color=color, whole=cb is None,
                                           label=_cdf_label(cb, tag, v, summ.kernel_hist)))
        duration_axis(ax, "x", np.concatenate(drawn))
        percent_axis(ax, "y")
        ax.set_ylim(0, 1.05)          # room for a marker at 100 %
        ax.set_xlabel(xlabel)
        ax.set_ylabel("invocations ≤ latency")
        ax.set_title(hook, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        sf.legend(loc="outside lower center", fontsize=7.5, frameon=False)
    fig.suptitle(f"Latency CDF per callback{note}" + (f": {labels[0]} solid, {labels[1]} dashed" if other else ""),
                 fontsize=13)
    return fig


# ---- time -------------------------------------------------------------------------------------------------

def _bucket_edges(tl: dict, t: TimeAxis) -> np.ndarray:
    """The timeline's bucket edges in seconds on the recording's axis: the
    buckets start at the first record, not at the recording's start."""
    off = (int(tl["start_ns"]) - t.origin_ns) / 1e9
    return off + np.arange(int(tl["buckets"]) + 1) * float(tl["bucket_s"])


def _slow_only(s: Summary) -> str:
    """What a --min-latency recording's per-call figures hold ('' else)."""
    return f": invocations of at least {fmt_duration(s.min_latency_ns)} only" if s.min_latency_ns else ""


def fig_heatmap(s: Summary, hooks: list[str] | None = None) -> Figure | None:
    """Hook latency over time (``hooks``: these only): log2 latency buckets x
    time buckets, colour = invocations."""
    if not s.heatmap or not s.timeline:
        return None
    t = time_axis(s)
    tl = s.timeline
    panels = []
    for hook in sorted(hooks if hooks is not None else s.heatmap, key=_hook_sort):
        h = np.asarray(s.heatmap.get(hook, np.zeros((0, 0))))       # (time, log2)
        nz = np.flatnonzero(h.sum(axis=0)) if h.size else []
        if len(nz):                                                   # no invocations: no panel
            panels.append((hook, h, int(nz[0]), int(nz[-1])))
    if not panels:
        return None
    fig, axes = _grid(len(panels), w=6.4, h=3.8)
    x = _bucket_edges(tl, t)
    for ax, (hook, h, b0, b1) in zip(axes, panels):
        m = h[:, b0:b1 + 1].T.astype(float)
        m[m == 0] = np.nan
        # bucket b holds [2**(b-1), 2**b) ns; bucket 0 (0 ns) is drawn from 0.5 ns on the log axis
        y = np.array([max(bucket_lo(b), 0.5) for b in range(b0, b1 + 2)], dtype=float)
        mesh = ax.pcolormesh(x, y, m, norm=LogNorm(vmin=1, vmax=max(np.nanmax(m), 2)), cmap="viridis",
                             shading="flat")
        duration_axis(ax, "y")
        ax.set_ylim(y[0], y[-1])
        ax.set_ylabel("latency (log2 buckets)")
        seconds_axis(ax, t)
        ax.set_title(hook, fontsize=11)
        count_colorbar(fig.colorbar(mesh, ax=ax, label=f"invocations per {fmt_duration(tl['bucket_ns'])}"))
    fig.suptitle(t.title("Hook latency over time" + _slow_only(s)), fontsize=13)
    return fig


def _with_idle(edges: np.ndarray, values, length_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Stairs over the whole recording: 0 before the first bucket and after
    the last one (no record there: idle)."""
    e, v = np.asarray(edges, dtype=float), np.asarray(values, dtype=float)
    if e[0] > 0:
        e, v = np.r_[0.0, e], np.r_[0.0, v]
    if e[-1] < length_s:
        e, v = np.r_[e, length_s], np.r_[v, 0.0]
    return e, v


def fig_rate(s: Summary) -> Figure | None:
    """Invocations per second and p99 latency per time bucket, per hook."""
    tl = s.timeline
    if not tl or not tl["series"]:
        return None
    t = time_axis(s)
    fig = Figure(figsize=(11, 6.4), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1)
    edges = _bucket_edges(tl, t)
    mids = (edges[:-1] + edges[1:]) / 2
    p99_all = []
    for i, ser in enumerate(tl["series"]):
        e, v = _with_idle(edges, ser["rate_per_s"], t.length_s)
        ax1.stairs(v, e, baseline=None, color=f"C{i}", lw=1.4, label=ser["hook"])
        p99 = np.array([np.nan if v is None else v for v in ser["p99_ns"]], dtype=float)
        ax2.plot(mids, p99, color=f"C{i}", lw=1.4, marker=".", label=ser["hook"])
        p99_all.append(p99)
    bucket = fmt_duration(tl["bucket_ns"])
    ax1.set_ylabel("invocations per second")
    ax1.set_title(f"Hook invocation rate ({bucket} buckets)", fontsize=11)
    ax1.set_ylim(bottom=0)
    count_axis(ax1, "y")
    ax1.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    duration_axis(ax2, "y", np.concatenate(p99_all))
    ax2.set_ylabel("p99 latency (log scale)")
    ax2.set_title(f"Hook p99 latency ({bucket} buckets)", fontsize=11)
    for ax in (ax1, ax2):
        seconds_axis(ax, t)
        ax.grid(alpha=0.3, which="both")
    ax1.set_xlabel("")
    fig.suptitle(t.title("Rate and latency through the recording" + _slow_only(s)), fontsize=13)
    return fig


def _violation_label(r: dict) -> str:
    return wrap_name(f"{r['rule']}: {r['callback'] or r['hook']} → {r['sleeper'] or '?'} ({r['count']})", 70)


def fig_violations(s: Summary) -> Figure | None:
    """One mark per violating callback invocation: time x (rule, callback,
    sleeper). None when there is none."""
    rows = s.violations
    vt = s.violation_times
    if not rows or vt is None or not len(vt):
        return None
    t = time_axis(s)
    fig = Figure(figsize=(11, max(2.6, 1.4 + 0.45 * len(rows))), layout="constrained")
    ax = fig.subplots()
    x = t.seconds(vt["ts_ns"].to_numpy())
    y = vt["row"].to_numpy()
    at = vt["atomic"].to_numpy(dtype=bool)
    for sel, color, label in ((~at, "C1", "not atomic"), (at, "C3", "atomic")):
        if sel.any():
            ax.scatter(x[sel], y[sel], marker="|", s=120, color=color, label=label)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_violation_label(r) for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    seconds_axis(ax, t)
    ax.set_title(t.title("Sleeping-rule violations over time (red: entered in atomic context)"), fontsize=12)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def figures(s: Summary) -> dict[str, Figure | None]:
    return {"latency-cdf": fig_cdf(s), "latency-heatmap": fig_heatmap(s), "rate-timeline": fig_rate(s),
            "violations-timeline": fig_violations(s)}


def why_missing(s: Summary, name: str) -> str:
    """Why figure ``name`` is None for this recording, as a sentence."""
    if name == "violations-timeline":
        return "no rule violations in this recording: nothing to plot"
    if name == "latency-cdf" or not s.latency:
        return "no hook or callback invocations in this recording: nothing to plot"
    if s.kernel_hist:
        return "an --aggregate recording keeps no per-event times: nothing to plot over time"
    return "no hook invocations with timestamps in this recording: nothing to plot over time"


def write_all(s: Summary, outdir: str | Path, fmt: str = "png", dpi: int = 110, *,
              hand_over: bool = True) -> tuple[list[Path], list[str]]:
    """Save every figure; returns (files written, 'name: why' for those skipped).

    The directory is made 0700 if missing and each figure is 0600: a callback
    the recorder could not symbolize is labelled with its kernel address.
    Nothing is written through a link (:mod:`mmntrace.outpath`); under sudo
    what is made goes to the invoking user unless ``hand_over`` is False.
    """
    written, skipped = [], []
    with OutputDir(outdir, mode=0o700, hand_over=hand_over) as out:
        for name, fig in figures(s).items():
            if fig is None:
                skipped.append(f"{name}: {why_missing(s, name)}")
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi)
            written.append(out.write(f"{name}.{fmt}", buf.getvalue()))
    return written, skipped


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


__all__ = ["FIGURES", "fig_cdf", "fig_heatmap", "fig_rate", "fig_violations", "figures", "why_missing", "write_all",
           "png_bytes", "callback_cdfs"]
