"""`mmntrace daemon`: periodic, bounded-cost sampling windows for fleets.

The BPF program is compiled once. Each window attaches every probe, keeps the
latency histograms in the kernel (only rule violations are streamed), then
detaches everything: between windows nothing of ours is attached, so the
probe overhead there is zero.

Per window the daemon writes (under OUT):

  hist/host=H/date=D/<window>.parquet        log2 latency histograms
  violations/host=H/date=D/<window>.parquet  one row per sleep attempt
  windows/host=H/date=D/<window>.json        the window's summary
  mmntrace.prom                              node_exporter textfile metrics

Files appear atomically (written under a dot name, then renamed), so a
reader of the Hive-partitioned datasets never sees a partial window; none is
written through a symbolic link (:mod:`mmntrace.outpath`). The windows are
0600 (stacks and unresolved callbacks are kernel addresses); the metrics
textfile is 0644 for node_exporter, so no address reaches it
(:func:`metric_label`). The daemon is a service: its files stay root's, even
when it is started with sudo. A log line (JSON) per window goes to stdout.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from . import decode, kernel, latency
from .errors import MmntraceError, OverheadGuardError, UsageError
from .heap import give_back_memory
from .hooks import SLEEP_DETECT
from .outpath import OutputDir, make_parents, write_atomic
from .units import DAY, parse_duration, parse_size  # noqa: F401 (the daemon's API)
from .wake import Wakeups

if TYPE_CHECKING:
    import pandas as pd



# -- configuration -------------------------------------------------------------
@dataclass
class DaemonConfig:
    every_s: float = 600.0
    for_s: float = 30.0
    count: int | None = None          # windows, then exit (None: forever; --once: 1)
    out: Path = Path("/var/lib/mmntrace")
    host: str = field(default_factory=socket.gethostname)
    max_events_per_s: float | None = None
    textfile: Path | None = None      # default: OUT/mmntrace.prom
    http: str | None = None           # "[ADDR:]PORT", ADDR defaults to 127.0.0.1
    retention_age_s: float | None = 14 * DAY
    retention_bytes: int | None = 1 << 30
    pid: int | None = None
    comm: str | None = None
    hooks: list[str] | None = None
    backend: str = "kprobe"
    max_bpf_cpu: float | None = 0.05  # stop when BPF run time exceeds this share of one CPU
    might_sleep: bool = False         # probe might-sleep functions too (an ambient tax: BENCHMARKS.md)
    # real sleeps by the task's voluntary-switch count: no program on the machine's
    # context switches between notifier calls (as record; switch: a sched_switch program, stacks)
    sleep_detect: str = "count"

    def __post_init__(self):
        if self.for_s > self.every_s:
            raise UsageError(f"a window ({self.for_s:g} s) cannot be longer than the period ({self.every_s:g} s)")
        if self.max_events_per_s is not None and self.max_events_per_s <= 0:
            raise UsageError("--max-events-per-s must be positive")
        if self.count is not None and self.count < 1:
            raise UsageError("--count must be at least 1")
        if self.sleep_detect not in SLEEP_DETECT:
            raise UsageError(f"sleep-detect {self.sleep_detect!r}: use {' or '.join(SLEEP_DETECT)}")


# TOML keys mirror the long flags (dashes or underscores).
_TOML_KEYS = {
    "every": ("every_s", parse_duration), "for": ("for_s", parse_duration),
    "count": ("count", int), "once": ("count", lambda v: 1 if v else None),
    "out": ("out", Path), "host": ("host", str),
    "max_events_per_s": ("max_events_per_s", float), "textfile": ("textfile", Path),
    "http": ("http", str), "retention_age": ("retention_age_s", parse_duration),
    "retention_size": ("retention_bytes", parse_size), "pid": ("pid", int), "comm": ("comm", str),
    "hooks": ("hooks", lambda v: [str(x) for x in (v if isinstance(v, list) else str(v).split(","))]),
    "backend": ("backend", str), "max_bpf_cpu": ("max_bpf_cpu", float),
    "might_sleep": ("might_sleep", bool), "sleep_detect": ("sleep_detect", str),
}


def overhead_guard_tripped(bpf_cpu_share: float | None, limit: float | None) -> bool:
    """--max-bpf-cpu: stop when the programs' own measured run time (kernel.bpf_stats_enabled)
    over a window exceeds ``limit`` of one CPU. Unmeasured (None) never trips it."""
    return limit is not None and bpf_cpu_share is not None and bpf_cpu_share > limit


def load_config(path: Path, base: DaemonConfig | None = None) -> DaemonConfig:
    """Read a TOML config (keys = the daemon's long flags); unknown keys are an error."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read config {path}: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"config {path} is not valid TOML: {e}") from e
    data = data.get("daemon", data)
    if not isinstance(data, dict):
        raise UsageError(f"config {path}: expected a [daemon] table")
    kw = {}
    for k, v in data.items():
        key = k.replace("-", "_")
        if key not in _TOML_KEYS:
            raise UsageError(f"config {path}: unknown key {k!r} (known: {', '.join(sorted(_TOML_KEYS))})")
        name, conv = _TOML_KEYS[key]
        try:
            kw[name] = conv(v)
        except MmntraceError:
            raise
        except (TypeError, ValueError) as e:
            raise UsageError(f"config {path}: bad value for {k!r}: {v!r}") from e
    cfg = base or DaemonConfig()
    try:
        return replace(cfg, **kw)
    except TypeError as e:
        raise UsageError(f"config {path}: {e}") from e


def parse_http(s: str) -> tuple[str, int]:
    addr, _, port = s.rpartition(":")
    try:
        p = int(port)
    except ValueError:
        raise UsageError(f"--http {s!r}: expected [ADDR:]PORT, e.g. 9475 or 127.0.0.1:9475") from None
    if not 0 < p < 65536:
        raise UsageError(f"--http {s!r}: port out of range")
    return (addr.strip("[]") or "127.0.0.1"), p


def check_port(addr: str, port: int) -> None:
    """A UsageError where binding ``addr:port`` fails (in use, not ours to
    take, no such address), bound as the HTTP server will bind it: reusing
    an address in TIME_WAIT, the family getaddrinfo gives first."""
    try:
        family, kind, proto, _name, sockaddr = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(sockaddr)
    except OSError as e:
        raise UsageError(f"--http {addr}:{port}: cannot serve there ({e.strerror or e})") from None


# -- BPF run time (kernel.bpf_stats_enabled) -----------------------------------
class BpfStats:
    """Run time of our BPF programs, from the kernel's per-program stats."""

    PATH = "/proc/sys/kernel/bpf_stats_enabled"

    def __init__(self):
        self.enabled = False
        self._was = None
        try:
            self._was = Path(self.PATH).read_text().strip()
            if self._was != "1":
                Path(self.PATH).write_text("1")
            self.enabled = True
        except OSError:
            pass

    def close(self):
        if self._was is not None and self._was != "1":
            try:
                Path(self.PATH).write_text(self._was)
            except OSError:
                pass

    @staticmethod
    def run_time_ns(prog_fds: list[int]) -> int | None:
        """Sum of run_time_ns over the given program fds."""
        from .transport import prog_counter
        vals = [v for v in (prog_counter(fd, "run_time_ns") for fd in prog_fds) if v is not None]
        return sum(vals) if vals else None


# -- output ----------------------------------------------------------------------
#: the hist partition's columns and their types (pyarrow's names)
HIST_COLUMNS = (("window", "string"), ("start_ns", "int64"), ("hook", "string"), ("callback", "string"),
                ("event", "string"), ("slot", "int32"), ("count", "int64"))


def hist_table(hist_rows: list[dict]):
    """The window's histogram rows as a pyarrow Table of HIST_COLUMNS, built
    without pandas (mmntrace.store.arrow_table): a window of a daemon that
    saw no violation never imports it (~75 MiB of its memory)."""
    import numpy as np
    from .store import arrow_table
    cols = {}
    for name, typ in HIST_COLUMNS:
        vals = [r.get(name) for r in hist_rows]
        cols[name] = vals if typ == "string" else np.array(vals, dtype=typ)
    return arrow_table(cols)


#: the daemon's directories: they hold 0600 files, and their names (host, date) are no secret,
#: so a shipper may list them
DIR_MODE = 0o755


def _write_part(out: OutputDir, kind: str, host: str, date: str, name: str, write) -> str:
    """One file of a window, in OUT/KIND/host=H/date=D/ (made as needed, no link followed)."""
    with out.subdir(kind, f"host={host}", f"date={date}") as d:
        return str(d.write(name, write, mode=0o600))


def write_window(out: Path, host: str, summary: dict, hist_rows: list[dict], sleeps: pd.DataFrame | None) -> dict:
    """Write one window's partitions; returns the paths written."""
    import pyarrow.parquet as pq
    date = datetime.fromtimestamp(summary["start_time"], timezone.utc).strftime("%Y-%m-%d")
    name = summary["window"]
    paths = {}
    hist = hist_table(hist_rows)
    with OutputDir(out, mode=DIR_MODE, hand_over=False) as od:
        paths["hist"] = _write_part(od, "hist", host, date, f"{name}.parquet", lambda f: pq.write_table(hist, f))
        paths.update(_write_violations(od, host, date, name, sleeps))
        paths["summary"] = _write_part(od, "windows", host, date, f"{name}.json",
                                       json.dumps(summary, indent=1, default=str).encode())
    return paths


def _write_violations(out: OutputDir, host: str, date: str, name: str, sleeps: pd.DataFrame | None) -> dict:
    """The window's sleep attempts, if it had any: {"violations": path} or {}."""
    if sleeps is not None and len(sleeps):
        cols = ["ts_ns", "cpu", "pid", "tid", "comm", "hook", "callback", "rule", "sleeper", "atomic", "seq",
                "stack"]
        v = sleeps[[c for c in cols if c in sleeps.columns]].copy()
        v.insert(0, "window", name)
        for c in ("hook", "callback", "rule", "sleeper", "comm"):
            if c in v:
                v[c] = v[c].astype(object).where(v[c].notna(), None).astype(str)
        import pyarrow as pa
        import pyarrow.parquet as pq
        from .store import typed
        table = typed(pa.Table.from_pandas(v, preserve_index=False))
        return {"violations": _write_part(out, "violations", host, date, f"{name}.parquet",
                                          lambda f: pq.write_table(table, f))}
    return {}


def enforce_retention(out: Path, max_age_s: float | None, max_bytes: int | None, now: float | None = None) -> list[str]:
    """Delete whole windows (every file of a window together), oldest first."""
    now = time.time() if now is None else now
    windows: dict[str, list[Path]] = {}
    for sub in ("hist", "violations", "windows"):
        for p in (out / sub).glob("host=*/date=*/*"):
            if p.name.startswith("."):
                continue
            windows.setdefault(p.stem, []).append(p)
    order = sorted(windows, key=lambda w: min(p.stat().st_mtime for p in windows[w]))
    sizes = {w: sum(p.stat().st_size for p in windows[w]) for w in order}
    total = sum(sizes.values())
    removed = []
    for w in order:
        age = now - min(p.stat().st_mtime for p in windows[w])
        if (max_age_s is not None and age > max_age_s) or (max_bytes is not None and total > max_bytes):
            for p in windows[w]:
                p.unlink(missing_ok=True)
            total -= sizes[w]
            removed.append(w)
    for d in sorted(out.glob("*/host=*/date=*"), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    return removed


# -- metrics ---------------------------------------------------------------------
#: a kernel address inside a name: how the recorder names what it cannot symbolize
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{8,}\b")


def metric_label(name: str | None) -> str:
    """A callback or sleeper name as a metric label: "" for none, and any kernel
    address in it (an unresolved symbol) as "unresolved". The textfile is
    world-readable (node_exporter runs as its own user) and /metrics is served
    to anyone who can connect: neither may hand out an address that defeats
    KASLR. Symbol offsets ("+0x1a") are not addresses and stay."""
    return _ADDRESS.sub("unresolved", name) if name else ""


def _merged_totals(totals: dict) -> dict:
    """The histogram series keyed by their labels: two unresolved callbacks become one series."""
    out: dict = {}
    for (hook, cb, ev), slots in totals.items():
        acc = out.setdefault((hook, metric_label(cb), ev or ""), {})
        for slot, n in slots.items():
            acc[slot] = acc.get(slot, 0) + n
    return out


def build_metrics(summary: dict, totals: dict):
    """A prometheus_client registry holding the last window's figures (no kernel address: :func:`metric_label`)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge
    from prometheus_client.core import HistogramMetricFamily

    reg = CollectorRegistry()
    g = lambda n, d, labels=(): Gauge(n, d, labels, registry=reg)  # noqa: E731
    g("mmntrace_window_end_timestamp_seconds", "End of the last completed window").set(summary["end_time"])
    g("mmntrace_window_duration_seconds", "Length of the last window").set(summary["duration_s"])
    g("mmntrace_window_sample_every", "1 in N hook invocations was traced (1: all)").set(summary["sample_every"])
    d = g("mmntrace_window_dropped_records", "Records lost in the last window, by type", ["type"])
    for k, v in summary["drops"].items():
        if k != "total":
            d.labels(k).set(v)
    # inc(), not set(): rows whose names scrub to the same labels add up
    v = g("mmntrace_window_violations", "Callback invocations that broke a sleeping rule in the last window",
          ["rule", "hook", "callback", "sleeper"])
    for r in summary["violations"]:
        v.labels(r["rule"], r["hook"] or "", metric_label(r["callback"]), metric_label(r["sleeper"])).inc(r["count"])
    c = g("mmntrace_window_calls", "Hook and callback invocations in the last window",
          ["hook", "callback", "event"])
    for r in summary["latency"]:
        c.labels(r["hook"], metric_label(r["callback"]), r["event"] or "").inc(r["count"])
    o = g("mmntrace_daemon_bpf_run_seconds", "BPF run time of our programs in the last window "
          "(kernel.bpf_stats_enabled)")
    o.set((summary.get("bpf_run_time_ns") or 0) / 1e9)
    g("mmntrace_daemon_windows", "Windows completed since the daemon started").set(summary["index"] + 1)

    class _Hist:
        def collect(self):
            fam = HistogramMetricFamily("mmntrace_latency_seconds", "Latency of hooks and callbacks in the last "
                                        "window (log2 buckets)", labels=["hook", "callback", "event"])
            sums: dict = {}
            for r in summary["latency"]:
                key = (r["hook"], metric_label(r["callback"]), r["event"] or "")
                sums[key] = sums.get(key, 0) + (r.get("total_ns") or 0)
            for key, slots in sorted(_merged_totals(totals).items()):
                acc, buckets = 0, []
                for slot in range(max(slots) + 1):
                    acc += slots.get(slot, 0)
                    # bcc's bpf_log2l: slot s holds [2^(s-1), 2^s - 1] ns
                    buckets.append((f"{((1 << slot) - 1) / 1e9:.9g}", acc))
                buckets.append(("+Inf", acc))
                fam.add_metric(list(key), buckets, sum_value=sums.get(key, 0) / 1e9)
            yield fam

    reg.register(_Hist())
    return reg


def write_textfile(path: Path, reg) -> None:
    """The node_exporter textfile, atomically and never through a link. 0644:
    node_exporter reads it as its own user, and it holds no address
    (:func:`metric_label`); it stays root's under sudo (the daemon is a service)."""
    from prometheus_client import generate_latest
    make_parents(path)
    write_atomic(path, generate_latest(reg), mode=0o644, hand_over=False)


# -- the daemon -------------------------------------------------------------------
class Daemon:
    def __init__(self, cfg: DaemonConfig, config_path: Path | None = None, log=None):
        self.cfg = cfg
        self.config_path = config_path
        self.log = log or (lambda d: print(json.dumps(d, default=str), flush=True))
        self.stopping = threading.Event()
        self.guard_tripped: tuple[float, float] | None = None   # (share, limit) once --max-bpf-cpu tripped
        self.reload = threading.Event()
        self.tracer = None
        self.sample_every = 1
        self.index = 0
        self._http = None

    # signals: SIGTERM/SIGINT cancel the current window and exit; SIGHUP reloads
    def install_signals(self):
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())

    def _reload(self):
        self.reload.clear()
        if not self.config_path:
            self.log({"event": "reload", "status": "no config file given; nothing to reload"})
            return
        try:
            new = load_config(self.config_path, self.cfg)
        except MmntraceError as e:
            self.log({"event": "reload", "status": "error", "error": str(e)})
            return
        rebuild = ((new.pid, new.comm, new.hooks, new.backend, new.might_sleep, new.sleep_detect)
                   != (self.cfg.pid, self.cfg.comm, self.cfg.hooks, self.cfg.backend, self.cfg.might_sleep,
                       self.cfg.sleep_detect))
        self.cfg = new
        if rebuild and self.tracer is not None:
            self.tracer.stop()
            self.tracer = None
        self.log({"event": "reload", "status": "ok", "recompile": rebuild})

    def _tracer(self):
        from .tracer import Tracer
        if self.tracer is None:
            f = kernel.probe()
            kernel.require_recording(f, self.cfg.backend)
            t = Tracer(f, backend=self.cfg.backend, hooks=self.cfg.hooks, pid=self.cfg.pid, comm=self.cfg.comm,
                       aggregate=True, might_sleep=self.cfg.might_sleep, sampling=True,
                       sleep_detect=self.cfg.sleep_detect)
            t0 = time.monotonic()
            t.load()
            self.log({"event": "compiled", "seconds": round(time.monotonic() - t0, 2),
                      "kernel": f.release})
            self.tracer = t
        return self.tracer

    def run(self) -> int:
        self.install_signals()
        self.stats = BpfStats()
        try:
            if self.cfg.http:
                # the server's thread starts once the program is compiled: the
                # compile then runs in the daemon's one thread, which gives its
                # libraries' pages back (mmntrace/heap.py); a port that cannot
                # be had is said now, not after the compile
                addr, port = parse_http(self.cfg.http)
                check_port(addr, port)
            self._tracer()
            if self.cfg.http:
                from prometheus_client import start_http_server
                self._http_reg = _Forward()
                self._http = start_http_server(port, addr=addr, registry=self._http_reg)
                self.log({"event": "http", "listen": f"{addr}:{port}"})
            next_t = time.monotonic()
            while not self.stopping.is_set():
                if self.reload.is_set():
                    self._reload()
                self.window()
                if self.cfg.count is not None and self.index >= self.cfg.count:
                    break
                next_t += self.cfg.every_s
                while not self.stopping.is_set() and time.monotonic() < next_t:
                    if self.reload.is_set():
                        self._reload()
                    self.stopping.wait(min(1.0, max(0.0, next_t - time.monotonic())))
        finally:
            if self.tracer is not None:
                self.tracer.stop()
            self.stats.close()
            if self._http is not None:
                try:
                    self._http[0].shutdown()
                except Exception:
                    pass
        self.log({"event": "exit", "windows": self.index, "cancelled": self.stopping.is_set()})
        if self.guard_tripped is not None:
            share, limit = self.guard_tripped
            raise OverheadGuardError(
                f"the daemon's BPF programs used {share:.4%} of a CPU in its last window, above "
                f"--max-bpf-cpu {limit:.4%}: it stopped itself (nothing stays attached)")
        return 0

    def window(self) -> dict | None:
        cfg, t = self.cfg, self._tracer()
        t.reset_window()
        t.set_sampling(self.sample_every)
        self._run0 = t.run_time_ns() if self.stats.enabled else None
        name = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{self.index:06d}"
        start_time = time.time()
        attach_ns = time.monotonic_ns()
        t.attach()
        start_ns = time.monotonic_ns()
        known_cb = {a["symbol"] for a in t.attached() if a["kind"] == "callback" and a["status"] == "attached"}
        # "callbacks": those probed before the window opened (every subscriber
        # that exists, found by the start-up sweep): timed from its first call
        self.log({"event": "window_open", "window": name, "index": self.index, "attach_ns": attach_ns,
                  "start_ns": start_ns,
                  "sample_every": self.sample_every,
                  "attached": sum(1 for a in t.attached() if a["status"] == "attached"),
                  "callbacks": sorted(known_cb)})
        chunks: list[bytes] = []
        end = time.monotonic() + cfg.for_s
        last_check, last_calls = time.monotonic(), 0
        sampled_from = None
        # records and signals end a poll (mmntrace/wake.py): no wake-ups ten times a second
        with Wakeups(t) as wake:
            while time.monotonic() < end and not self.stopping.is_set():
                due = min(end, last_check + 1.0) if cfg.max_events_per_s else end
                raw = t.poll(wake.timeout_ms(due - time.monotonic()))
                wake.clear()
                if raw:
                    chunks.append(raw)
                now_cb = {a["symbol"] for a in t.attached() if a["kind"] == "callback" and a["status"] == "attached"}
                if now_cb - known_cb:
                    self.log({"event": "callbacks_attached", "window": name, "ns": time.monotonic_ns(),
                              "callbacks": sorted(now_cb - known_cb)})
                    known_cb = now_cb
                if cfg.max_events_per_s and time.monotonic() - last_check >= 1.0:
                    calls = sum(n for (_f, _h, _e, n, _s) in t.totals())
                    rate = (calls - last_calls) / (time.monotonic() - last_check)
                    last_check, last_calls = time.monotonic(), calls
                    if rate * self.sample_every > cfg.max_events_per_s:
                        self.sample_every = max(self.sample_every,
                                                math.ceil(rate * self.sample_every / cfg.max_events_per_s))
                        t.set_sampling(self.sample_every)
                        sampled_from = sampled_from or round(cfg.for_s - (end - time.monotonic()), 3)
                        self.log({"event": "sampling", "window": name, "sample_every": self.sample_every,
                                  "rate_per_s": round(rate, 1)})
        end_ns = time.monotonic_ns()
        cancelled = self.stopping.is_set()
        t.detach()
        while True:   # what was emitted before the detach
            raw = t.poll(50)
            if not raw:
                break
            chunks.append(raw)
        if cancelled:
            self.log({"event": "window_cancelled", "window": name, "index": self.index})
            return None
        summary, hist_rows, sleeps, totals = self._summarize(t, name, start_time, start_ns, end_ns, chunks,
                                                             sampled_from)
        paths = write_window(cfg.out, cfg.host, summary, hist_rows, sleeps)
        self._metrics(summary, totals)
        removed = enforce_retention(cfg.out, cfg.retention_age_s, cfg.retention_bytes)
        # what the window's summary and writing used (pyarrow, prometheus_client,
        # the heap) is not needed again until the next window, minutes away
        give_back_memory()
        self.index += 1
        if cfg.max_events_per_s and sampled_from is None and self.sample_every > 1:
            # under budget for a whole window: try tracing everything again
            calls = sum(r["count"] for r in summary["latency"] if r["callback"] is None)
            if calls * self.sample_every / summary["duration_s"] < cfg.max_events_per_s / 2:
                self.sample_every = 1
        line = {"event": "window", "window": name, "index": summary["index"], "host": cfg.host,
                "duration_s": summary["duration_s"], "calls": summary["calls"], "dropped": summary["drops"]["total"],
                "violations": sum(v["count"] for v in summary["violations"]), "sample_every": summary["sample_every"],
                "bpf_run_time_ns": summary["bpf_run_time_ns"], "files": paths, "retention_removed": removed}
        self.log(line)
        if overhead_guard_tripped(summary.get("bpf_cpu_share"), cfg.max_bpf_cpu):
            self.log({"event": "overhead_guard", "bpf_cpu_share": summary["bpf_cpu_share"],
                      "limit": cfg.max_bpf_cpu, "action": "stopping"})
            self.guard_tripped = (summary["bpf_cpu_share"], cfg.max_bpf_cpu)
            self.stopping.set()
        return summary

    def _summarize(self, t, name, start_time, start_ns, end_ns, chunks, sampled_from):
        """The window's summary, histogram rows, sleep records (a DataFrame,
        or None: pandas is imported only for a window that has some) and the
        metrics' totals."""
        from .symbolize import Symbolizer
        sym = Symbolizer(t, t.f)
        sleeps = None
        if chunks:
            parts = decode.split(decode.decode(b"".join(chunks)))
            if len(parts["sleep"]):
                sleeps = sym.frames(parts["sleep"], "sleep")
        rows, totals = [], {}
        for func, hook, event, slot, count in t.histograms():
            key = (sym.hook_names.get(hook, str(hook)), sym.cb_sym(func), sym.events.get(event) if event >= 0 else None)
            rows.append({"window": name, "start_ns": start_ns, "hook": key[0], "callback": key[1],
                         "event": key[2], "slot": slot, "count": count})
            # as in the report: the event only for hooks that carry one
            mkey = latency.key_of(*key)
            totals.setdefault(mkey, {})[slot] = totals.get(mkey, {}).get(slot, 0) + count
        dur = (end_ns - start_ns) / 1e9
        tot = [{"hook": sym.hook_names.get(h, str(h)), "callback": sym.cb_sym(f),
                "event": sym.events.get(e) if e >= 0 else None, "count": c, "sum_ns": sn}
               for f, h, e, c, sn in t.totals()]
        lat, _cdfs = latency.rows(latency.groups_from_rows(rows), tot, dur)
        viol = []
        if sleeps is not None and len(sleeps):
            from . import aggregate
            viol = aggregate.violations(sleeps)
        run_ns = t.run_time_ns() if self.stats.enabled else None
        if run_ns is not None and self._run0 is not None:
            run_ns -= self._run0    # the counters run for the programs' lifetime
        drops = t.drops()
        calls = {}
        for r in lat:
            k = f"{r['hook']}/{r['callback'] or '-'}"
            calls[k] = calls.get(k, 0) + r["count"]
        summary = {
            "format": "mmntrace-window", "version": 1, "window": name, "index": self.index,
            "host": self.cfg.host, "kernel": {"release": t.f.release, "arch": os.uname().machine},
            "start_time": start_time, "end_time": start_time + dur, "start_ns": start_ns, "end_ns": end_ns,
            "duration_s": round(dur, 3), "sample_every": self.sample_every, "sampled_from_s": sampled_from,
            "filters": {"pid": self.cfg.pid, "comm": self.cfg.comm, "hooks": self.cfg.hooks},
            "calls": calls, "latency": lat,
            "violations": [{k: v for k, v in r.items() if k not in ("first_ns", "last_ns")} for r in viol],
            "drops": drops, "bpf_run_time_ns": run_ns,
            "bpf_cpu_share": round(run_ns / 1e9 / dur, 6) if run_ns is not None and dur > 0 else None,
            "attached": [a for a in t.attached() if a["kind"] in ("hook", "callback")],
        }
        return summary, rows, sleeps, totals

    def _metrics(self, summary, totals):
        reg = build_metrics(summary, totals)
        write_textfile(Path(self.cfg.textfile or (self.cfg.out / "mmntrace.prom")), reg)
        if self._http is not None:
            self._http_reg.target = reg


class _Forward:
    """Registry stand-in for the HTTP server: serves the latest window's registry."""

    def __init__(self):
        self.target = None

    def collect(self):
        if self.target is not None:
            yield from self.target.collect()
