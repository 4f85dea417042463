"""The figures `mmntrace plot` makes, checked on their matplotlib objects (not
pixels): no empty axes, readable units (never `×10` or `1e+03`), whole
callback names in legends, the recording's own time axis, upper bounds in
--aggregate recordings; and the duration formatter the report, the plots
and the notebooks share."""

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from mmntrace import plot, synthetic
from mmntrace.aggregate import summarize
from mmntrace.cli import main
from mmntrace.plotfmt import fmt_count, time_axis
from mmntrace.render_text import dur
from mmntrace.units import fmt_duration, fmt_upper

SPAN_S, IDLE_START_S, IDLE_END_S = 10.0, 2.0, 5.0
LENGTH_S = IDLE_START_S + SPAN_S + IDLE_END_S
DURATION_LABEL = re.compile(r"^(≤ )?(\d+(\.\d+)?) (ns|µs|ms|s)$")
SCIENTIFIC = re.compile(r"×10|\d[eE][+-]?\d|\$|10\^|\\mathdefault")


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    d = tmp_path_factory.mktemp("plots")
    w = dict(n_events=3000, segments=2, span_s=SPAN_S)
    recs = {
        # an idle start and end, and a release called once (each of its series one call)
        "a": synthetic.write(d / "a", violations=8, idle_start_s=IDLE_START_S, idle_end_s=IDLE_END_S,
                             release_once=True, **w),
        "agg": synthetic.write(d / "agg", violations=4, aggregate=True, seed=3, **w),
        "clean": synthetic.write(d / "clean", violations=0, seed=2, **w),
        "cut": synthetic.write(d / "cut", violations=4, idle_start_s=IDLE_START_S, end=False, seed=4, **w),
    }
    # a recording made before start_ns/end_ns were written
    old = d / "old"
    shutil.copytree(recs["a"], old)
    meta = json.loads((old / "metadata.json").read_text())
    del meta["start_ns"], meta["end_ns"]
    (old / "metadata.json").write_text(json.dumps(meta))
    recs["old"] = old
    return {k: summarize(v) for k, v in recs.items()} | {"dirs": recs}


# ---- what every figure keeps to ----------------------------------------------------------------------

def _drawn(fig):
    fig.draw_without_rendering()        # tick labels are made at draw time
    return fig


def _is_colorbar(ax) -> bool:
    return getattr(ax, "_colorbar", None) is not None


def _labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]


def _legend_texts(fig) -> list[str]:
    legends = [lg for sf in fig.subfigs for lg in sf.legends] + list(fig.legends)
    legends += [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [" ".join(t.get_text().split()) for lg in legends for t in lg.get_texts()]


def assert_readable(fig) -> None:
    """Every axes holds data and has x tick labels; no label anywhere is in
    scientific notation; colourbars are labelled counts."""
    _drawn(fig)
    assert fig.axes
    for ax in fig.axes:
        texts = _labels(ax.xaxis) + _labels(ax.yaxis)
        assert not [t for t in texts if SCIENTIFIC.search(t)], texts
        if _is_colorbar(ax):
            assert texts and all(re.fullmatch(r"\d+(\.\d+)?[kMG]?", t) for t in texts), texts
            continue
        assert ax.get_visible()
        assert ax.lines or ax.collections or ax.patches or ax.images, f"empty axes: {ax.get_title()!r}"
        assert _labels(ax.xaxis), f"no x tick labels: {ax.get_title()!r}"


def assert_duration_ticks(axis) -> None:
    labels = _labels(axis)
    assert len(labels) >= 2, labels
    for t in labels:
        m = DURATION_LABEL.match(t)
        assert m, t
        assert len(m.group(2).replace(".", "").lstrip("0")) <= 3, t


def _data_axes(fig) -> list:
    return [ax for ax in fig.axes if not _is_colorbar(ax)]


@pytest.mark.parametrize("name", ["a", "agg", "cut", "old", "clean"])
def test_every_figure_is_readable(recs, name):
    made = {k: f for k, f in plot.figures(recs[name]).items() if f is not None}
    assert made
    for fig in made.values():
        assert_readable(fig)


def test_cdf_one_panel_per_hook_whole_names_in_legends(recs):
    s = recs["a"]
    fig = _drawn(plot.fig_cdf(s))
    hooks = list(dict.fromkeys(r["hook"] for r in s.latency))
    assert sorted(ax.get_title() for ax in fig.axes) == sorted(hooks)
    want = {r["callback"] or plot.WHOLE_HOOK for r in s.latency}
    assert set(_legend_texts(fig)) == want
    assert "kvm_mmu_notifier_invalidate_range_start [kvm]" in _legend_texts(fig)
    for ax in fig.axes:
        assert_duration_ticks(ax.xaxis)
        assert all(t.endswith("%") for t in _labels(ax.yaxis))


def test_cdf_of_one_call_is_a_marker(recs):
    """The release hook and each of its callbacks were called once: each is a
    point at its value with fraction 1, in a panel with x labels."""
    fig = _drawn(plot.fig_cdf(recs["a"]))
    ax = next(ax for ax in fig.axes if ax.get_title() == "release")
    assert len(ax.lines) == 3
    for line in ax.lines:
        assert line.get_marker() == "o" and len(line.get_xdata()) == 1 and line.get_ydata()[0] == 1.0
    values = sorted(line.get_xdata()[0] for line in ax.lines)
    assert values == sorted(float(d) for _k, _c, d in synthetic.RELEASE_ONCE)
    lo, hi = ax.get_xlim()
    assert lo <= values[0] and values[-1] <= hi
    assert_duration_ticks(ax.xaxis)


def test_a_hook_with_nothing_to_draw_has_no_panel(recs):
    s = recs["a"]
    cdf = dict(s.cdf)
    for k in [k for k in cdf if k[0] == "release"]:
        cdf[k] = (np.zeros(0), np.zeros(0))
    import dataclasses
    fig = _drawn(plot.fig_cdf(dataclasses.replace(s, cdf=cdf)))
    assert "release" not in [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == len({r["hook"] for r in s.latency}) - 1
    assert_readable(fig)


def test_time_axes_span_the_recording(recs):
    s = recs["a"]
    assert s.duration_s == LENGTH_S
    t = time_axis(s)
    assert t.note is None and t.length_s == pytest.approx(LENGTH_S)
    heat, rate, viol = plot.fig_heatmap(s), plot.fig_rate(s), plot.fig_violations(s)
    for fig in (heat, rate, viol):
        _drawn(fig)
        for ax in _data_axes(fig):
            assert ax.get_xlim() == (0, pytest.approx(LENGTH_S))
            assert ax.get_xlabel() in ("time since the recording started (s)", "")
    # the idle start shows as idle: nothing is drawn before the first record
    first = min(np.min(c.get_offsets()[:, 0]) for c in _data_axes(viol)[0].collections)
    assert IDLE_START_S <= first < IDLE_START_S + SPAN_S
    mesh = _data_axes(heat)[0].collections[0]
    xs = mesh.get_coordinates()[0, :, 0]
    assert xs[0] == pytest.approx(IDLE_START_S, abs=0.1) and xs[-1] <= LENGTH_S - IDLE_END_S + 1
    # the rate is drawn as 0 through the idle start and end
    stairs = _data_axes(rate)[0].patches[0]
    assert stairs.get_data().edges[0] == 0 and stairs.get_data().edges[-1] == pytest.approx(LENGTH_S)
    assert stairs.get_data().values[0] == 0 and stairs.get_data().values[-1] == 0


def test_duration_and_count_axes_are_readable(recs):
    s = recs["a"]
    heat = _drawn(plot.fig_heatmap(s))
    for ax in _data_axes(heat):
        assert_duration_ticks(ax.yaxis)
    cbars = [ax for ax in heat.axes if _is_colorbar(ax)]
    assert len(cbars) == len(_data_axes(heat))
    for cb in cbars:
        assert "1" in _labels(cb.yaxis)
        assert cb.get_ylabel() == "invocations per 200 ms"
    rate = _drawn(plot.fig_rate(s))
    top, bottom = rate.axes
    assert all(re.fullmatch(r"\d+(\.\d+)?[kM]?", t) for t in _labels(top.yaxis))
    assert_duration_ticks(bottom.yaxis)
    assert "(200 ms buckets)" in top.get_title()


def test_aggregate_recordings_mark_upper_bounds(recs):
    s = recs["agg"]
    fig = _drawn(plot.fig_cdf(s))
    assert "upper bounds" in fig.get_suptitle()
    texts = _legend_texts(fig)
    top: dict = {}          # (hook, callback) -> max over its events
    for r in s.latency:
        top[r["hook"], r["callback"]] = max(top.get((r["hook"], r["callback"]), 0), r["max_ns"])
    for ax in fig.axes:
        assert "upper bound" in ax.get_xlabel()
        assert_duration_ticks(ax.xaxis)
    for (hook, cb), mx in top.items():
        assert f"{cb or plot.WHOLE_HOOK}, max {fmt_upper(mx)}" in texts
    assert all(re.search(r", max ≤ \d", t) for t in texts)
    assert plot.fig_heatmap(s) is None and plot.fig_rate(s) is None
    assert "--aggregate" in plot.why_missing(s, "rate-timeline")


def test_cut_short_and_old_recordings_say_where_the_axis_comes_from(recs):
    cut = recs["cut"]
    t = time_axis(cut)
    assert "cut short" in t.note
    # from the recording's start (it has one) to the last record
    assert t.origin_ns == cut.meta["start_ns"]
    assert t.length_s == pytest.approx((cut.t0_ns - cut.meta["start_ns"]) / 1e9 + cut.span_s)
    assert t.length_s > IDLE_START_S + 0.9 * SPAN_S
    fig = _drawn(plot.fig_rate(cut))
    assert "cut short" in fig.get_suptitle()
    assert all(ax.get_xlim() == (0, pytest.approx(t.length_s)) for ax in fig.axes)
    old = recs["old"]
    t = time_axis(old)
    assert "first record" in t.note and t.length_s == pytest.approx(old.span_s)
    fig = _drawn(plot.fig_violations(old))
    assert fig.axes[0].get_xlabel() == "time since the first record (s)"
    assert "first record" in fig.axes[0].get_title()


@pytest.mark.parametrize("junk", [{"start_ns": "x"}, {"start_ns": True}, {"start_ns": 1, "end_ns": 2},
                                  {"start_ns": 2 ** 80}, {"start_ns": -5, "end_ns": None},
                                  {"start_ns": 10 ** 18, "end_ns": 10 ** 18 + 10}, {"end_ns": 3.5e12}])
def test_any_clock_metadata_gives_a_time_axis(recs, junk):
    import dataclasses
    s = recs["a"]
    s = dataclasses.replace(s, meta=dict(s.meta) | junk)
    t = time_axis(s)
    assert t.length_s > 0
    for fig in plot.figures(s).values():
        if fig is not None:
            assert_readable(fig)


def test_no_violations_no_figure_and_a_sentence(recs):
    assert plot.fig_violations(recs["clean"]) is None
    r = CliRunner().invoke(main, ["plot", str(recs["dirs"]["clean"]), "-o", str(recs["dirs"]["clean"]) + "-p"])
    assert r.exit_code == 0, r.output
    assert "skipped violations-timeline: no rule violations in this recording: nothing to plot" in r.stderr
    assert [p.rsplit("/", 1)[1] for p in r.stdout.split()] == ["latency-cdf.png", "latency-heatmap.png",
                                                               "rate-timeline.png"]


def test_violation_labels_are_whole(recs):
    s = recs["a"]
    fig = _drawn(plot.fig_violations(s))
    labels = [" ".join(t.split()) for t in _labels(fig.axes[0].yaxis)]
    assert labels == [f"{r['rule']}: {r['callback']} → {r['sleeper']} ({r['count']})" for r in s.violations]
    assert all("[mmnt_test]" in t for t in labels)


def test_compare_cdf_names_each_side(recs):
    fig = _drawn(plot.fig_cdf(recs["a"], recs["agg"], labels=("before", "after")))
    texts = _legend_texts(fig)
    assert "kvm_mmu_notifier_invalidate_range_start [kvm] (before)" in texts
    assert any(t.startswith("kvm_mmu_notifier_invalidate_range_start [kvm] (after), max ≤ ") for t in texts)
    assert "after: log2 bucket upper bounds" in fig.get_suptitle()
    assert_readable(fig)


# ---- the formatters ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("ns,text", [
    (0, "0 ns"), (1, "1 ns"), (999, "999 ns"), (999.4, "999 ns"), (999.6, "1 µs"), (1_000, "1 µs"),
    (1_500, "1.5 µs"), (8_191, "8.19 µs"), (999_000, "999 µs"), (999_900, "1 ms"), (1_000_000, "1 ms"),
    (8_000_000, "8 ms"), (8_388_608, "8.39 ms"), (999_999_999, "1 s"), (1_000_000_000, "1 s"),
    (1_500_000_000, "1.5 s"), (1_234_000_000_000, "1230 s"), (None, "-"), (float("nan"), "-"),
])
def test_fmt_duration(ns, text):
    assert fmt_duration(ns) == text
    assert dur(ns) == text                  # the text report's formatter is the same one


@pytest.mark.parametrize("ns,text", [(2 ** 13 - 1, "≤ 8.2 µs"), (999, "≤ 999 ns"), (1023, "≤ 1.03 µs"),
                                     (2 ** 20 - 1, "≤ 1.05 ms"), (8_000_000, "≤ 8 ms"), (None, "-")])
def test_fmt_upper_rounds_up(ns, text):
    assert fmt_upper(ns) == text


@pytest.mark.parametrize("v,text", [(0, "0"), (0.5, "0.5"), (7, "7"), (950, "950"), (999, "999"), (1000, "1k"),
                                    (1500, "1.5k"), (10_000, "10k"), (999_999, "1M"), (2_500_000, "2.5M")])
def test_fmt_count(v, text):
    assert fmt_count(v) == text
