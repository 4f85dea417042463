"""`mmntrace report BEFORE --compare AFTER` as a before/after: counts compared
as rates per second of each recording's own duration, readable ratios,
warnings when the recordings differ in kernel, architecture, backend, mode or
quantile method, the secondary-TLB hook lined up across its 6.1 and 6.12
names, the comparison first, and in the HTML colour only where a latency or a
violation got worse or better, in tables that fit 1280 px."""

import copy
import json
import os
import re
import shutil
import subprocess

import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, strategies as st

from mmntrace import hooks, render, report, synthetic
from mmntrace.cli import main
from mmntrace.hooks import stable as stable_hook_name
from mmntrace.recording import Recording
from mmntrace.render_compare import ratio_text

KVM_YOUNG = "kvm_mmu_notifier_clear_flush_young [kvm]"     # 4x slower after
TEST_SEC = "mmnt_secondary_tlb [mmnt_test]"                # 4x faster after


@pytest.fixture(scope="module")
def recs(tmp_path_factory):
    """Before: a 6.1-like kernel (the secondary-TLB hook is `invalidate_range`),
    kprobes, 10 s, no violation. After: 6.12, fentry, 30 s, twice the events
    (so fewer per second), one callback slower, one faster, violations."""
    d = tmp_path_factory.mktemp("cmp")
    before = synthetic.write(d / "before", n_events=3000, segments=2, violations=0, span_s=10.0, seed=1,
                             release="6.1.0-synthetic", secondary="invalidate_range")
    after = synthetic.write(d / "after", n_events=6000, segments=2, violations=12, span_s=30.0, seed=2,
                            backend="fentry", scale={KVM_YOUNG: 4.0, TEST_SEC: 0.25})
    agg = synthetic.write(d / "agg", n_events=2000, segments=1, violations=0, span_s=10.0, seed=3, aggregate=True)
    # the same two as mmntrace wrote them before the stable names: the hook named after the kernel's symbol
    old = {k: synthetic.write(d / f"old-{k}", **kw, legacy_names=True) for k, kw in (
        ("before", dict(n_events=3000, segments=2, violations=0, span_s=10.0, seed=1, release="6.1.0-synthetic",
                        secondary="invalidate_range")),
        ("after", dict(n_events=6000, segments=2, violations=12, span_s=30.0, seed=2, backend="fentry",
                       scale={KVM_YOUNG: 4.0, TEST_SEC: 0.25})))}
    return {"before": before, "after": after, "agg": agg, "old_before": old["before"], "old_after": old["after"]}


@pytest.fixture(scope="module")
def reps(recs):
    a, b = report.build(recs["before"]), report.build(recs["after"])
    return {"a": a, "b": b, "rep": report.with_compare(a, b)}


def _cli(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


def _row(rows, hook, callback, event=None):
    [r] = [r for r in rows if r["stable_hook"] == hook and r["callback"] == callback and r.get("event") == event]
    return r


# ---- the numbers -------------------------------------------------------------------------

def test_counts_are_compared_as_rates_of_each_recordings_own_duration(reps):
    a, b, c = reps["a"], reps["b"], reps["rep"]["compare"]
    assert (a["rate_s"], b["rate_s"]) == (10.0, 30.0) and c["rate_s"] == {"a": 10.0, "b": 30.0}
    tot = {t["metric"]: t for t in c["totals"]}
    h = tot["hook_invocations"]
    na, nb = a["hook_invocations"], b["hook_invocations"]
    assert (h["a_count"], h["b_count"]) == (na, nb) and nb > na          # more events after ...
    assert h["rate_ratio"] == round((nb / 30.0) / (na / 10.0), 4) < 1    # ... but fewer per second
    assert h["a_rate_per_s"] == pytest.approx(na / 10.0) and h["b_rate_per_s"] == pytest.approx(nb / 30.0)
    # per hook and callback, all events together
    r = _row(c["rates"], "invalidate_range_start", None)
    ca = sum(x["count"] for x in a["latency"] if x["hook"] == "invalidate_range_start" and x["callback"] is None)
    cb = sum(x["count"] for x in b["latency"] if x["hook"] == "invalidate_range_start" and x["callback"] is None)
    assert (r["a_count"], r["b_count"]) == (ca, cb) and r["rate_ratio"] == round((cb / 30) / (ca / 10), 4)
    # a latency row's rate ratio is the same rates' ratio, its count ratio stays the raw one (schema minor 2)
    lr = _row(c["latency"], "invalidate_range_start", None, "clear")
    assert lr["ratio"]["rate_per_s"] == round((lr["b"]["count"] / 30) / (lr["a"]["count"] / 10), 4)
    assert lr["ratio"]["count"] == round(lr["b"]["count"] / lr["a"]["count"], 4)


def test_readable_ratios():
    assert [ratio_text(r) for r in (1.8, 0.52, 0.004, 1.003, 0.996, 12.3, 1.04, 2.0, 1234.0, None)] == \
        ["1.8x", "0.52x", "<0.01x", "=", "=", "12x", "1.04x", "2x", "1,234x", "-"]
    assert ratio_text(None, "new") == "new" and ratio_text(0.0, "gone") == "gone"


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_a_ratio_never_reads_as_zero(r):
    t = ratio_text(r)
    assert t == "=" or (t.endswith("x") and not re.fullmatch(r"0(\.0+)?x", t)), t


def test_latency_judged_worse_and_better(reps):
    c = reps["rep"]["compare"]
    worse = _row(c["latency"], "clear_flush_young", KVM_YOUNG)
    better = _row(c["latency"], "secondary_tlb", TEST_SEC)
    for f in ("p50_ns", "p99_ns"):
        assert worse["ratio"][f] >= 2 and worse["judged"][f] == "worse"
        assert better["ratio"][f] <= 0.5 and better["judged"][f] == "better"
        assert ratio_text(worse["ratio"][f]).endswith("x")
    assert worse["ratio"]["p50_ns"] == round(worse["b"]["p50_ns"] / worse["a"]["p50_ns"], 4)
    # rows only one side has are not judged: nothing to compare
    assert all(set(r["judged"].values()) == {None} for r in c["latency"] if r["status"] != "both")


def test_violation_that_appeared_is_new_and_worse(reps):
    c = reps["rep"]["compare"]
    assert c["violations"] and all(v["status"] == "new" and v["judged"] == "worse" for v in c["violations"])
    for v in c["violations"]:
        assert v["a_count"] == 0 and v["b_count"] > 0 and v["rate_ratio"] is None and v["ratio"] is None
        assert v["b_rate_per_s"] == pytest.approx(v["b_count"] / 30.0) and v["stack"]
        assert v["stable_hook"] == v["hook"] == v["b_hook"] == "secondary_tlb"
    assert report.judge(0.0, "gone", presence_counts=True) == "better"
    assert report.judge(1.1, "both") == "worse" and report.judge(1.09, "both") is None
    assert report.judge(0.91, "both") == "better" and report.judge(0.92, "both") is None


# ---- one name per hook ---------------------------------------------------------------------

SYM_61, SYM_612 = "__mmu_notifier_invalidate_range", "__mmu_notifier_arch_invalidate_secondary_tlbs"


def _lined_up(a: dict, b: dict, c: dict) -> None:
    """Every hook of a 6.1 (A) and a 6.12 (B) comparison is joined under its
    stable name, the secondary-TLB hook and its callback included: a row
    only one side has is one the other side never saw (release is rare)."""
    sec = [r for r in c["latency"] if r["stable_hook"] == "secondary_tlb"]
    assert {r["callback"] for r in sec} == {None, TEST_SEC} and all(r["status"] == "both" for r in sec)
    seen = {side: {(r["hook"], r["callback"], r["event"]) for r in rep["latency"]}
            for side, rep in (("a", a), ("b", b))}
    for r in c["latency"] + c["rates"]:
        assert r["hook"] == r["stable_hook"] == hooks.stable(r["hook"]) and r["hook"] in hooks.choices()
        if r["status"] == "both":
            assert r["a_hook"] == r["b_hook"] == r["stable_hook"], r
        else:
            n = 3 if "event" in r else 2        # rates rows: all events together
            other = {k[:n] for k in seen["a" if r["status"] == "new" else "b"]}
            assert (r["hook"], r["callback"], r.get("event"))[:n] not in other, r
    assert {k[0] for k in seen["a"]} - {"release"} == {k[0] for k in seen["b"]} - {"release"}
    for v in c["violations"]:
        assert v["hook"] == v["stable_hook"] == "secondary_tlb"
    assert c["hook_names"] == []
    assert c["hook_symbols"] == [{"hook": "secondary_tlb", "a": SYM_61, "b": SYM_612}]


def test_secondary_tlb_lines_up_across_61_and_612(reps, recs):
    c = reps["rep"]["compare"]
    assert stable_hook_name("invalidate_range") == stable_hook_name("arch_invalidate_secondary_tlbs") == \
        "secondary_tlb"
    assert stable_hook_name("release") == "release" and stable_hook_name("no_such_hook") == "no_such_hook"
    _lined_up(reps["a"], reps["b"], c)
    # the kernel's symbol is a field of the recording, not its name
    ma, mb = Recording(recs["before"]).meta, Recording(recs["after"]).meta
    assert ma["hook_symbols"]["secondary_tlb"] == SYM_61 and mb["hook_symbols"]["secondary_tlb"] == SYM_612
    assert "secondary_tlb" in ma["hooks"] and "secondary_tlb" in mb["hooks"]
    text = render.text(reps["rep"], width=160)
    assert "\nsecondary_tlb" in text and "\ninvalidate_range " not in text
    assert "arch_invalidate_secondary_tlbs" not in text.replace(SYM_612, "")
    assert f"secondary_tlb is the kernel's {SYM_61} before and {SYM_612} after" in " ".join(text.split())


def test_recordings_made_before_the_stable_names_line_up(recs, reps):
    """Recordings that name the secondary-TLB hook after the kernel's symbol
    (``invalidate_range`` on 6.1, ``arch_invalidate_secondary_tlbs`` on 6.12)
    are read under the stable names: compared with each other or with a
    new recording, every hook lines up as it does between two new ones."""
    raw = pd.read_parquet(recs["old_before"] / "events-000001.parquet", columns=["hook"])
    assert "invalidate_range" in set(raw["hook"].astype(str))                   # as written ...
    old = Recording(recs["old_before"])
    assert set(old.events()["hook"].astype(str)) <= set(hooks.choices())        # ... as read
    assert old.meta["hook_symbols"]["secondary_tlb"] == SYM_61 and "invalidate_range" not in old.meta["hooks"]
    assert {a["hook"] for a in old.meta["attached"] if a["hook"]} <= set(hooks.choices())
    oa, ob = report.build(recs["old_before"]), report.build(recs["old_after"])
    assert {v["hook"] for v in ob["violations"]} == {"secondary_tlb"}
    for a, b in ((oa, ob), (oa, reps["b"]), (reps["a"], ob)):
        _lined_up(a, b, report.compare(a, b))
    # old and new of the same kernel: the same report, names and all
    for k in ("latency", "violations", "secondary_tlb"):
        assert oa[k] == reps["a"][k] and ob[k] == reps["b"][k], k


# ---- warnings ------------------------------------------------------------------------------

def test_warnings_say_what_differs_and_what_it_means(reps, recs):
    c = reps["rep"]["compare"]
    w = {x["key"]: x for x in c["warnings"]}
    assert list(w) == ["kernel", "backend"]
    assert (w["kernel"]["a"], w["kernel"]["b"]) == ("6.1.0-synthetic", "6.12.0-synthetic")
    assert "a change may be the kernel's" in w["kernel"]["text"]
    assert (w["backend"]["a"], w["backend"]["b"]) == ("kprobe", "fentry") and "probes' own" in w["backend"]["text"]
    a2, b2 = copy.deepcopy(reps["a"]), copy.deepcopy(reps["b"])
    b2["kernel"]["arch"], b2["quantile_method"] = "aarch64", "loglinear"
    w2 = {x["key"]: x for x in report.compare(a2, b2)["warnings"]}
    assert list(w2) == ["kernel", "arch", "backend", "quantile_method"]
    assert "x86_64 before, aarch64 after" in w2["arch"]["text"]
    assert "exact before, loglinear after" in w2["quantile_method"]["text"] and "0.8%" in w2["quantile_method"]["text"]
    # per-event against --aggregate: one line says it, quantiles included
    agg = report.build(recs["agg"])
    w3 = {x["key"]: x for x in report.compare(reps["b"], agg)["warnings"]}
    assert "aggregate" in w3 and "quantile_method" not in w3 and "log2 upper bounds" in w3["aggregate"]["text"]
    # the same recording twice: nothing to warn about
    assert report.compare(reps["a"], reps["a"])["warnings"] == []


# ---- text ----------------------------------------------------------------------------------

def test_text_puts_the_comparison_first(reps, recs):
    r = _cli("report", recs["before"], "--compare", recs["after"], "--width", 120)
    assert r.exit_code == 0, r.output
    t = r.output
    lines = t.splitlines()
    assert lines[0] == "mmntrace report --compare: before → after"
    assert lines[1] == f"  before  {recs['before']}" and lines[3] == f"  after   {recs['after']}"
    order = [t.index(s) for s in ("WARNING: the recordings differ", "kernels differ", "backends differ", "CHANGES",
                                  "Totals, before → after", "Invocations per hook and callback, before → after",
                                  "Latency (µs), before → after", "Rule violations, before → after",
                                  "new after: might_sleep", "Each recording's full report")]
    assert order == sorted(order)
    # before's own report is not printed first (nor at all): a command away
    assert "VERDICT" not in t and "Over time" not in t and "Coverage:" not in t
    assert lines[-3:-1] == [f"  mmntrace report {recs['before']}", f"  mmntrace report {recs['after']}"]
    assert "0.00x" not in t and " new" in t
    assert re.search(r"hook invocations\s+1,5\d\d → 2,9\d\d\s+15\d\.\d → +\d\d\.\d\s+0\.\d\dx", t)


def test_json_carries_rates_ratios_status_and_warnings(recs):
    r = _cli("report", recs["before"], "--compare", recs["after"], "--format", "json")
    assert r.exit_code == 0
    rep = json.loads(r.output)
    assert rep["schema_minor"] == report.SCHEMA_MINOR and rep["recording"] == str(recs["before"])     # before's report, as before
    c = rep["compare"]
    assert {"warnings", "hook_names", "hook_symbols", "rate_s", "totals", "rates", "notable"} <= c.keys()
    for rows in (c["rates"], c["violations"], c["processes"], c["secondary_tlb"], c["totals"]):
        for x in rows:
            assert {"a_count", "b_count", "a_rate_per_s", "b_rate_per_s", "rate_ratio", "status"} <= x.keys()
            assert x["status"] in ("both", "new", "gone", "none")
            # gone: 0 per second after, a ratio of 0; but a process missing from one side's top has none
            none = ("new", "none") if rows is not c["processes"] else ("new", "none", "gone")
            assert (x["rate_ratio"] is None) == (x["status"] in none), x
    for x in c["latency"]:
        assert {"stable_hook", "a_hook", "b_hook", "status", "judged"} <= x.keys()
        assert set(x["judged"]) == {"p50_ns", "p99_ns", "max_ns"}
    assert c["report_b"]["recording"] == str(recs["after"])


# ---- HTML ----------------------------------------------------------------------------------

def _sections(html: str) -> dict:
    parts = re.split(r"<h2>(.*?)</h2>", html)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def html(recs, tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "cmp.html"
    r = _cli("report", recs["before"], "--compare", recs["after"], "--format", "html", "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_html_colours_only_judged_latency_and_violations(html, reps):
    text = html.read_text()
    sec = _sections(text)
    assert list(sec)[:4] == ["Totals", "Invocations per hook and callback", "Latency", "Sleeping-rule violations"]
    for name, body in sec.items():
        if name not in ("Latency", "Sleeping-rule violations"):
            assert 'class="worse"' not in body and 'class="better"' not in body, name
    c = reps["rep"]["compare"]
    judged = [v for r in c["latency"] for v in r["judged"].values()]
    assert sec["Latency"].count('class="worse"') == judged.count("worse") > 0
    assert sec["Latency"].count('class="better"') == judged.count("better") > 0
    assert sec["Sleeping-rule violations"].count('class="worse"') == len(c["violations"])
    assert text.index("The recordings differ") < text.index("<h2>Totals</h2>")
    assert "<script" not in text and "0.00x" not in text


def test_html_css_keeps_the_comparison_narrow(html):
    """Checked without a browser: the tables take the page's width and let
    names wrap; nothing is given a fixed width over 1280 px."""
    css = re.search(r"<style>(.*?)</style>", html.read_text(), re.S).group(1)
    assert "table.cmp { width: 100%; }" in css and "overflow-wrap: anywhere" in css
    assert all(int(px) <= 1280 for px in re.findall(r"(?<!max-)width:\s*(\d+)px", css))
    assert 'class="cmp"' in html.read_text()


def _chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


#: added to a copy of the page: writes each table container's widths into the DOM, which --dump-dom prints
PROBE = """<script>window.addEventListener('load', () => {
  const out = ['page ' + document.documentElement.scrollWidth + ' ' + window.innerWidth];
  document.querySelectorAll('.scroll').forEach(
    (d, i) => out.push('table' + i + ' ' + d.scrollWidth + ' ' + d.clientWidth));
  const p = document.createElement('pre'); p.id = 'mmnt-probe'; p.textContent = out.join(';');
  document.body.appendChild(p); });</script>"""


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed: the CSS is checked without a browser "
                                                 "(test_html_css_keeps_the_comparison_narrow)")
def test_html_fits_1280px_in_chromium(html, tmp_path):
    page = tmp_path / "probe.html"
    page.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    args = [_chromium(), "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000", "--dump-dom", page.as_uri()]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="mmnt-probe">(.*?)</pre>', p.stdout)
    assert m, p.stderr[-2000:]
    page_w, view = map(int, m.group(1).split(";")[0].split()[1:])
    assert view == 1280 and page_w <= 1280, m.group(1)
    tables = [tuple(map(int, t.split()[1:])) for t in m.group(1).split(";")[1:]]
    assert len(tables) >= 5
    assert all(scroll <= client for scroll, client in tables), f"tables wider than the page: {m.group(1)}"
