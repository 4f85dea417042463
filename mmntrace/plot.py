"""Figures of a :class:`mmntrace.aggregate.Summary` (matplotlib, Agg: no display needed).

Each ``fig_*`` function returns a matplotlib Figure, or None when the
recording holds nothing for it (say, no per-event times in an --aggregate
recording); :func:`write_all` saves them as PNG or SVG; the HTML report
embeds the same figures.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from .aggregate import Summary, _hook_sort, bucket_lo  # noqa: E402
from .outpath import OutputDir  # noqa: E402

FIGURES = ["latency-cdf", "latency-heatmap", "rate-timeline", "violations-timeline"]


def _ns_label(ns: float) -> str:
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.0f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.0f} ms"
    return f"{ns / 1e9:.0f} s"


def _short(name: str | None, n=40) -> str:
    name = name or "(hook as a whole)"
    return name if len(name) <= n else name[:n - 1] + "…"


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
    """hook -> {callback (None: the hook as a whole) -> (values_ns, fractions)}, events merged."""
    groups: dict = {}
    counts = {(r["hook"], r["callback"], r["event"]): r["count"] for r in s.latency}
    for (hook, cb, ev), (v, f) in s.cdf.items():
        groups.setdefault(hook, {}).setdefault(cb, []).append((np.asarray(v), np.asarray(f),
                                                              counts.get((hook, cb, ev), 1)))
    return {h: {cb: _merge_cdfs(p) for cb, p in d.items()} for h, d in groups.items()}


def _grid(n, w=6.0, h=3.6, cols=2):
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(w * cols, h * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def fig_cdf(s: Summary, other: Summary | None = None, *, labels=("A", "B")) -> Figure | None:
    """Latency CDF per callback, one panel per hook; with ``other``, B dashed
    over A, the hooks by their stable names (so that the secondary-TLB hook of
    a 6.1 and of a 6.12 recording share a panel)."""
    ca = callback_cdfs(s)
    cb_ = callback_cdfs(other) if other is not None else {}
    if other is not None:
        from .kernel import stable_hook_name
        order = {stable_hook_name(h): _hook_sort(h) for h in [*cb_, *ca]}
        ca, cb_ = ({stable_hook_name(h): v for h, v in d.items()} for d in (ca, cb_))
        hooks = sorted(set(ca) | set(cb_), key=order.get)
    else:
        hooks = sorted(ca, key=_hook_sort)
    if not hooks:
        return None
    fig, axes = _grid(len(hooks))
    for ax, hook in zip(axes, hooks):
        names = list(dict.fromkeys(list(ca.get(hook, {})) + list(cb_.get(hook, {}))))
        names.sort(key=lambda c: (c is not None, c or ""))
        for i, cb in enumerate(names):
            color = f"C{i % 10}"
            for src, style, tag in ((ca, "-", labels[0]), (cb_, "--", labels[1])):
                if cb in src.get(hook, {}):
                    v, f = src[hook][cb]
                    lab = _short(cb) + (f" ({tag})" if other is not None else "")
                    ax.step(np.maximum(v, 1) / 1e3, f, where="post", ls=style, color=color, lw=1.6, label=lab)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("latency (µs, log scale)")
        ax.set_ylabel("fraction of invocations ≤ latency")
        ax.set_title(hook, fontsize=11)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    note = " (log2 upper bounds: --aggregate)" if s.kernel_hist else ""
    fig.suptitle(f"Latency CDF per callback{note}" + (f": {labels[0]} solid, {labels[1]} dashed" if other else ""),
                 fontsize=13)
    return fig


def fig_heatmap(s: Summary) -> Figure | None:
    """Hook latency over time: log2 latency buckets x time buckets, colour = invocations."""
    if not s.heatmap or not s.timeline:
        return None
    hooks = sorted(s.heatmap, key=_hook_sort)
    tl = s.timeline
    fig, axes = _grid(len(hooks), w=6.4, h=3.8)
    for ax, hook in zip(axes, hooks):
        h = np.asarray(s.heatmap[hook])              # (time, log2)
        nz = np.flatnonzero(h.sum(axis=0))
        if not len(nz):
            continue
        b0, b1 = int(nz[0]), int(nz[-1])
        m = h[:, b0:b1 + 1].T.astype(float)
        m[m == 0] = np.nan
        x = np.arange(tl["buckets"] + 1) * tl["bucket_s"]
        y = np.arange(b0, b1 + 2)
        mesh = ax.pcolormesh(x, y, m, norm=LogNorm(vmin=1, vmax=max(np.nanmax(m), 1)), cmap="viridis", shading="flat")
        ticks = list(range(b0, b1 + 2, max(1, (b1 - b0 + 1) // 6)))
        ax.set_yticks(ticks)
        ax.set_yticklabels([_ns_label(max(bucket_lo(t), 1)) for t in ticks])
        ax.set_xlabel("time since start of recording (s)")
        ax.set_ylabel("latency (log2 buckets)")
        ax.set_title(hook, fontsize=11)
        fig.colorbar(mesh, ax=ax, label=f"invocations per {tl['bucket_s']:g} s")
    fig.suptitle("Hook latency over time", fontsize=13)
    return fig


def fig_rate(s: Summary) -> Figure | None:
    """Invocations per second and p99 latency per time bucket, per hook."""
    tl = s.timeline
    if not tl or not tl["series"]:
        return None
    fig = Figure(figsize=(11, 6.4), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    x = (np.arange(tl["buckets"]) + 0.5) * tl["bucket_s"]
    for i, ser in enumerate(tl["series"]):
        ax1.plot(x, ser["rate_per_s"], color=f"C{i}", lw=1.4, label=ser["hook"])
        p99 = np.array([np.nan if v is None else v / 1e3 for v in ser["p99_ns"]])
        ax2.plot(x, p99, color=f"C{i}", lw=1.4, marker=".", label=ser["hook"])
    ax1.set_ylabel("invocations per second")
    ax1.set_title(f"Hook invocation rate ({tl['bucket_s']:g} s buckets)", fontsize=11)
    ax1.legend(fontsize=8, loc="best")
    ax1.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax2.set_ylabel("p99 latency (µs, log scale)")
    ax2.set_xlabel("time since start of recording (s)")
    ax2.set_title("Hook p99 latency", fontsize=11)
    ax2.grid(alpha=0.3, which="both")
    fig.suptitle("Rate and latency through the recording", fontsize=13)
    return fig


def fig_violations(s: Summary) -> Figure:
    """One mark per violating callback invocation: time x (rule, callback, sleeper)."""
    rows = s.violations
    fig = Figure(figsize=(11, max(2.6, 1.2 + 0.45 * len(rows))), layout="constrained")
    ax = fig.subplots()
    ax.set_xlabel("time since start of recording (s)")
    ax.set_title("Sleeping-rule violations over time (red: entered in atomic context)", fontsize=12)
    span = s.span_s or s.duration_s or 1.0
    ax.set_xlim(0, max(span, 1e-3) * 1.02)
    vt = s.violation_times
    if not rows or vt is None or not len(vt):
        ax.set_yticks([])
        ax.text(0.5, 0.5, "No rule violations recorded", ha="center", va="center", transform=ax.transAxes,
                fontsize=13, color="0.3")
        return fig
    t = (vt["ts_ns"].to_numpy().astype(np.int64) - (s.t0_ns or 0)) / 1e9
    y = vt["row"].to_numpy()
    at = vt["atomic"].to_numpy(dtype=bool)
    ax.scatter(t[~at], y[~at], marker="|", s=120, color="C1", label="not atomic")
    ax.scatter(t[at], y[at], marker="|", s=120, color="C3", label="atomic")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['rule']}: {_short(r['callback'] or r['hook'], 34)} → {r['sleeper'] or '?'} "
                        f"({r['count']})" for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def figures(s: Summary) -> dict[str, Figure | None]:
    return {"latency-cdf": fig_cdf(s), "latency-heatmap": fig_heatmap(s), "rate-timeline": fig_rate(s),
            "violations-timeline": fig_violations(s)}


WHY_MISSING = {
    "latency-cdf": "no latency data",
    "latency-heatmap": "no per-event timestamps (an --aggregate recording, or no hook invocations)",
    "rate-timeline": "no per-event timestamps (an --aggregate recording, or no hook invocations)",
}


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
                skipped.append(f"{name}: {WHY_MISSING.get(name, 'nothing to plot')}")
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, dpi=dpi)
            written.append(out.write(f"{name}.{fmt}", buf.getvalue()))
    return written, skipped


def png_bytes(fig: Figure, dpi: int = 90) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


__all__ = ["FIGURES", "fig_cdf", "fig_heatmap", "fig_rate", "fig_violations", "figures", "write_all", "png_bytes",
           "callback_cdfs"]
