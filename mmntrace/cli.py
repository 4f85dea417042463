"""Command line: a thin layer over the Python API.

Every :class:`mmntrace.errors.MmntraceError` becomes one sentence on stderr and
its own exit code; nothing here prints a traceback for bad input.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

# numpy's OpenBLAS starts a thread per CPU as numpy is imported, and they spin
# waiting for work that mmntrace never gives them (it does no linear algebra):
# 70 ms of CPU at every start on the host, where a lab guest's vCPUs share one
# host thread. Before any numpy import; the user's own setting stands.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from . import errors, hooks     # noqa: E402 (after the environment above)

if TYPE_CHECKING:
    from .trial import Verdict


def _friendly(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except errors.MmntraceError as e:
            click.echo(f"mmntrace: {e}", err=True)
            sys.exit(e.exit_code)
        except OSError as e:     # a file we were told to write or read: one sentence, never a traceback
            import errno
            where = f"{e.filename}: " if e.filename else ""
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                click.echo(f"mmntrace: {where}the file system is full ({e.strerror})", err=True)
                sys.exit(errors.DiskFullError.exit_code)
            click.echo(f"mmntrace: {where}{e.strerror or e}", err=True)
            sys.exit(1)
    return wrapper


def _keep_root_owner_option(fn):
    """--keep-root-owner: one flag, one help text, on every command that writes outputs."""
    return click.option(
        "--keep-root-owner", is_flag=True,
        help="Under sudo, leave what is written owned by root (by default it is handed to the user who ran "
             "sudo, still private to them: 0700 directories, 0600 files).")(fn)


PLUGIN_GROUP = "mmntrace.commands"


class _Main(click.Group):
    """The commands of this package, plus those any other installed distribution
    registers under the entry-point group ``mmntrace.commands`` (the
    development checkout's ``lab``, from lab/): the runtime package never
    imports the lab. Entry points are only read for --help and for a name
    that is not built in."""

    def _plugins(self) -> dict:
        from importlib.metadata import entry_points
        return {ep.name: ep for ep in entry_points(group=PLUGIN_GROUP) if ep.name not in self.commands}

    def list_commands(self, ctx):
        return sorted([*self.commands, *self._plugins()])

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        ep = self._plugins().get(name)
        if ep is None:
            return None
        try:
            return ep.load()
        except Exception as e:      # a broken plugin must not take the tool down: one sentence
            raise click.ClickException(f"command '{name}' (from {ep.value}) cannot be loaded: {e}") from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mmntrace")
def main():
    """Trace Linux MMU notifiers: who invalidates secondary MMUs, how long each
    driver's callback takes, and which callbacks break the sleeping rules.

    \b
    Typical session:
      mmntrace doctor                  what can be traced on this kernel
      sudo mmntrace record -d 10 -o rec    record 10 s of notifier activity
      mmntrace report rec              latency and rule-violation report
      mmntrace plot rec                latency CDFs, heatmap, timelines (PNG)
    \b
    In a development checkout (lab/ installed by `make setup`):
      mmntrace lab --kernel 6.12 -- CMD    run CMD in a lab VM of another kernel
    """


HOOK_CHOICES = hooks.choices()     # the stable names (mmntrace/hooks.py), the same on every kernel


@main.command()
@click.argument("command", nargs=-1, metavar="[-- CMD [ARG...]]", type=click.UNPROCESSED)
@click.option("-d", "--duration", metavar="DURATION",
              help="Stop after DURATION: 10 (seconds), 10s, 500ms, 5m, 2h (default: until Ctrl-C).")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False), default="mmntrace-rec", show_default=True,
              help="New directory for the recording (must not exist or be empty).")
@click.option("-p", "--pid", type=int, help="Only this process (tgid), not the processes it forks.")
@click.option("--comm", help="Only tasks with this command name.")
@click.option("--hooks", help="Comma-separated hooks to trace (default: all): " + ", ".join(HOOK_CHOICES))
@click.option("--module", "modules", metavar="NAME[,NAME...]",
              help="Probe only the callbacks of subscribers in these modules (kvm, mmnt_test...; vmlinux: "
                   "built-in ones such as IOMMU SVA). The hooks are traced in full; the callbacks left out "
                   "are listed as not selected, and cost nothing.")
@click.option("--callback", "callbacks", metavar="SYMBOL[,SYMBOL...]",
              help="Probe only these driver callbacks (kvm_mmu_notifier_invalidate_range_start...). "
                   "With --module, a callback that either names is probed.")
@click.option("--aggregate", is_flag=True, help="Keep log2 latency histograms in the kernel; stream only violations.")
@click.option("--min-latency", "min_latency", metavar="LATENCY",
              help="Record as events (with range, process, stack) only the hook and callback calls that took "
                   "at least LATENCY (100us, 2ms, 500ns), as funcslower does; every call is still counted and "
                   "timed in in-kernel log2 histograms, so the report's counts and quantiles cover them all. "
                   "Violations are recorded whatever their length. Not with --aggregate.")
@click.option("--backend", type=click.Choice(["auto", "kprobe", "fentry"]), default="auto", show_default=True,
              help="How functions are probed: fentry/fexit (BPF trampolines, cheaper) or kprobes. auto: "
                   "trampolines on kernel functions where a trial fentry program attaches (as `mmntrace doctor` "
                   "shows), except the hooks when streaming (a kprobe reads their caller from its registers, a "
                   "trampoline must unwind the stack); kprobes on driver "
                   "callbacks in modules (so that a driver can be reloaded while traced). fentry: trampolines "
                   "on driver callbacks too, where the module has BTF; such a module cannot be unloaded "
                   "while the recording runs.")
@click.option("--transport", type=click.Choice(["auto", "ringbuf", "perf"]), default="auto", show_default=True,
              help="Record transport: the BPF ring buffer where the kernel has one (5.8+), else the "
                   "per-CPU perf buffer. `perf` forces the fallback.")
@click.option("--buffer-pages", default=None, type=click.IntRange(1, 1 << 16),
              help="Size of the record buffer in pages (a power of two; per CPU for the perf buffer). "
                   "Records that do not fit are dropped and counted. Default: 2048 (8 MiB) when every "
                   "call is streamed, which holds about 75,000 records: a third of a second of the "
                   "bench's fastest rate while the recorder is busy elsewhere; 256 with --aggregate, "
                   "which sends violations only.")
@click.option("--might-sleep/--no-might-sleep", default=False, show_default=True,
              help="Also probe might-sleep functions (mutex_lock, GFP_KERNEL allocations, msleep...) to "
                   "report calls that MAY sleep inside callbacks that must not, even when they did not "
                   "sleep this time. Off by default: those probes fire on every allocation and lock of "
                   "the machine, traced process or not (BENCHMARKS.md, ambient tax). Real sleeps inside "
                   "must-not-sleep callbacks are caught either way.")
@click.option("--sleep-detect", "sleep_detect", type=click.Choice(hooks.SLEEP_DETECT), default="count",
              show_default=True, help="How real sleeps inside callbacks that must not sleep are caught. count: the "
                   "task's count of voluntary context switches, read as each such callback enters and returns: "
                   "every such sleep, counted exactly, with nothing running outside MMU-notifier calls, but "
                   "without the sleeping function (with --might-sleep the might-sleep call names it; the "
                   "report says how to get it). switch: a program on the sched_switch tracepoint, which names "
                   "what slept with its stack, but runs on every context switch of the machine, traced "
                   "process or not (BENCHMARKS.md: its runs and cost on a pipe ping-pong).")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="Written (JSON: attached probes) once every probe is attached, and again when new driver callbacks are.")
@click.option("--redact", is_flag=True, help="Drop raw kernel addresses (mm, ranges, functions); keep symbols.")
@click.option("-q", "--quiet", is_flag=True, help="No live status line.")
@_keep_root_owner_option
@_friendly
def record(command, duration, out, pid, comm, hooks, modules, callbacks, aggregate, min_latency, backend, transport,
           buffer_pages, might_sleep, sleep_detect, ready_file, redact, quiet, keep_root_owner):
    """Record MMU-notifier activity into a recording directory (needs root).

    Attaches to every notifier entry point the running kernel has
    (invalidate_range_start/end, the secondary-TLB hook, release, the young
    ops, change_pte) and to every subscriber's own callbacks (KVM, IOMMU SVA,
    GPU/HMM drivers...), found from their ops tables when they register or
    first fire. Each invocation gets its event type, range, blockable flag,
    preempt count, IRQ state, duration and caller. Inside callbacks that must
    not sleep, every sleep is recorded with its stack (and, with
    --might-sleep, every call of a function that may sleep).

    With `-- CMD`, starts CMD (as perf record does: held before its exec
    until every probe is attached, so that its first call is seen), traces
    it and every process it forks (and theirs), as perf does, nothing else,
    and stops when it exits. -p PID traces that one process only.

    Stops on Ctrl-C, SIGTERM or after --duration, always writing complete
    metadata. Then: `mmntrace report DIR`. The recording is private (0700
    directory, 0600 files: it holds kernel addresses); under sudo it belongs
    to the user who ran sudo, so they can report on it without sudo.

    \b
    Examples:
      sudo mmntrace record -d 10s -o rec
      sudo mmntrace record -p $(pgrep -f qemu-system) -d 2m -o rec
      sudo mmntrace record --comm qemu-system-x86 --aggregate -o rec
      sudo mmntrace record --might-sleep -d 30s -o rec   # also calls that may sleep
      sudo mmntrace record --module kvm -d 30s -o rec    # KVM's callbacks only
      sudo mmntrace record --min-latency 100us -o rec    # events for slow calls only
      sudo mmntrace record -o rec -- ./my-hmm-test --iterations 100
    """
    # the arguments first: a typo is told at once, before the environment
    # checks and the compile (tens of seconds)
    from .units import parse_duration
    duration = parse_duration(duration) if duration is not None else None
    if min_latency is not None:
        from .units import parse_latency
        if aggregate:
            raise errors.UsageError("--min-latency and --aggregate: --aggregate records no call as an event; "
                                    "give one of them")
        min_latency = parse_latency(min_latency)
    hook_list = [h.strip() for h in hooks.split(",")] if hooks else None
    if hook_list is not None:
        from .tracer import Tracer
        try:
            Tracer._hook_ids(hook_list)
        except errors.MmntraceError as e:
            raise errors.UsageError(f"--hooks: {e}; choose from {', '.join(HOOK_CHOICES)}") from None
    if buffer_pages is not None and buffer_pages & (buffer_pages - 1):
        raise errors.UsageError(f"--buffer-pages {buffer_pages}: use a power of two (64, 256, 1024...)")
    modules = _names("--module", modules, "a module name (kvm, mmnt_test, vmlinux)")
    callbacks = _names("--callback", callbacks, "a function name (kvm_mmu_notifier_invalidate_range_start)")
    o = Path(out)
    from .outpath import refuse_symlink
    refuse_symlink(o)
    if ready_file:
        refuse_symlink(ready_file)
    if o.exists() and (not o.is_dir() or any(o.iterdir())):
        raise errors.UsageError(f"{o} exists and is not an empty directory: choose a new one (-o)")
    held = None
    if command:
        from .command import HeldCommand, check_command
        if pid is not None:
            raise errors.UsageError("-p and -- CMD both choose the process to trace: give one of them")
        check_command(list(command))
        held = HeldCommand(list(command))     # forked now (before any thread), run once ready
        pid = held.pid
    try:
        _record(held, duration, out, pid, comm, hook_list, aggregate, backend, transport, buffer_pages,
                might_sleep, ready_file, redact, quiet, keep_root_owner, modules, callbacks, min_latency,
                sleep_detect)
    finally:
        if held is not None:
            held.cancel()       # never let go (the recorder failed first): it exits unrun


def _names(option: str, value: str | None, what: str) -> list[str] | None:
    """A comma-separated list of kernel names, or None; a bad one is a usage error."""
    if value is None:
        return None
    import re
    names = [n.strip() for n in value.split(",")]
    for n in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", n):
            raise errors.UsageError(f"{option} {value!r}: {n!r} is not {what}")
    return names


#: record buffer sizes (pages) by mode, unless --buffer-pages says. Streaming: 8 MiB,
#: which the recorder's memory counts whole (the kernel maps every page at once). The
#: loop empties it every 100 ms at most (record.gather_s): at the bench's full rate
#: (about 200,000 records a second) a fifth of it; 16 MiB until 2026-12-06, when
#: halving it took a streaming recorder's peak down by 8 MiB with no record lost
#: (make bench's streaming runs in the 6.1 guest: 0 dropped, the same overhead)
STREAM_BUFFER_PAGES = 2048
AGGREGATE_BUFFER_PAGES = 256


def default_buffer_pages(aggregate: bool, per_cpu: bool, cpus: int) -> int:
    """The record buffer's size in pages: one ring of 2048 pages (8 MiB) when
    streaming, 256 with --aggregate; the perf buffer, which is per CPU, shares
    that among the CPUs (a power of two, 64 pages at least)."""
    pages = AGGREGATE_BUFFER_PAGES if aggregate else STREAM_BUFFER_PAGES
    if per_cpu:
        pages = max(64, 1 << max(0, (pages // max(1, cpus)).bit_length() - 1))
    return pages


def _record(held, duration, out, pid, comm, hook_list, aggregate, backend, transport, buffer_pages, might_sleep,
            ready_file, redact, quiet, keep_root_owner, modules=None, callbacks=None, min_latency=None,
            sleep_detect="count"):
    import concurrent.futures
    import importlib
    import time
    # Streaming writes its first segment seconds after the start: its modules
    # and pyarrow (pandas never: mmntrace/record.py) are imported before the
    # first drain, or their import (seconds on a slow machine; a library's
    # dlopen() holds the GIL) would stall it while the buffer overflows. The
    # recorder's own modules import in a thread beside bcc's compile (which
    # releases the GIL; started once the memory the start-up no longer needs
    # has gone back, which a second thread would forbid: heap.py); pyarrow in
    # one started after the compile, beside the kernel's verifying of the
    # programs (bpf() calls, which release it too), not beside the compile,
    # whose memory and pyarrow's together were a streaming start's peak. The
    # tracer waits for both before it calibrates (the calibration times our
    # own probes; in a make bench run with the import beside it, calibrate_s
    # was 1.85 s against 0.77), then what the start-up left goes back,
    # pyarrow's clean library pages too (heap.py: only with no other thread
    # running; without that give-back a notifier run's peak was 185-192 MiB).
    # Alternated in one boot of the 6.1 guest, four runs each, beside the
    # compile / after it: VmHWM at --ready-file 167-169 / 118-121 MiB, after
    # a notifier_bench run 173-184 / 161-166; ready after 29.2-34.7 /
    # 29.4-31.4 s (compile_s 16.1-20.2 / 14.9-16.0, imports_s 1.3-1.6).
    # --aggregate writes tables at its end only: pyarrow waits until then
    # (peak RSS), and the recorder's own modules import after the compile,
    # where they take 0.2 s in the lab's 6.1 guest; beside it, 0.6-0.7 s, and
    # they slowed the compile by as much again (the guest reads them through
    # its file share).
    # pyarrow's memory through malloc, not its own allocator (mimalloc): what the
    # segments took goes back with the heap's (mmntrace/heap.py); the user's own
    # choice stands
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # and every thread's allocations from one arena (heap.one_arena: the segment
    # worker's own arena kept ~15 MiB of a streaming recorder's peak), set before
    # the import threads below start
    from .heap import one_arena
    one_arena()
    imports, pools = [], []

    def importer(*modules):
        def start():
            pool = concurrent.futures.ThreadPoolExecutor(1)
            imports.append(pool.submit(lambda: [importlib.import_module(m) for m in modules]))
            pool.shutdown(wait=False)       # (its thread ends with the import)
            pools.append(pool)
            return finish
        return start

    def finish():
        """The import threads' end (a failed import raises below, not in the
        tracer's load), then the memory the start-up left goes back."""
        from .heap import give_back_memory
        for pool in pools:
            pool.shutdown(wait=True)        # joins its thread
        give_back_memory()
    from . import kernel, tracer
    t0 = time.monotonic()
    f = kernel.probe()
    features_s = time.monotonic() - t0
    kernel.require_recording(f, backend)
    if transport == "ringbuf" and not f.ringbuf:
        raise errors.UsageError("--transport ringbuf: this kernel has no BPF ring buffer; use --transport perf")
    if buffer_pages is None:
        buffer_pages = default_buffer_pages(aggregate, transport == "perf" or not f.ringbuf, os.cpu_count() or 1)
    t = tracer.Tracer(f, backend=backend, hooks=hook_list, pid=pid, comm=comm, aggregate=aggregate,
                      ringbuf=None if transport == "auto" else transport == "ringbuf", ringbuf_pages=buffer_pages,
                      might_sleep=might_sleep, modules=modules, callbacks=callbacks, min_latency_ns=min_latency,
                      children=held is not None, sleep_detect=sleep_detect)
    t.timing["features_s"] = features_s     # kallsyms, BTF, headers: what this kernel offers
    if not quiet:
        click.echo("mmntrace: compiling and attaching probes...", err=True)
    streaming = not aggregate
    t.load(beside_compile=importer("mmntrace.record") if streaming else None,     # compile, calibrate;
           after_compile=importer("pyarrow.parquet") if streaming else None)  # nothing attached
    try:
        for fut in imports:     # (done: the tracer waited for them)
            fut.result()
        rec = importlib.import_module("mmntrace.record")
        s = rec.Session(t, f, Path(out), duration=duration, ready_file=Path(ready_file) if ready_file else None,
                        status=None, redact=redact, hand_over=not keep_root_owner, command=held)
    except BaseException:
        t.stop()
        raise
    status = None
    if not quiet and sys.stderr.isatty():
        def status(rate, total, drops, viol, elapsed):
            click.echo(f"\r{elapsed:6.0f} s  {rate:9.0f} events/s  {total:10d} events  {drops} dropped  "
                       f"{viol} violations ", err=True, nl=False)
    s.status = status
    rec.install_signal_handlers(s)
    res = s.run()
    if status:
        click.echo("", err=True)
    click.echo(rec.summary_line(res), err=True)
    if held is not None:
        rc = held.poll()
        click.echo(f"mmntrace: {held.argv[0]} " + (f"exited with status {rc}" if rc is not None and rc >= 0 else
                                                   f"was killed by signal {-rc}" if rc is not None else
                                                   "was still running when the recording stopped"), err=True)


#: the narrowest text report: below it even the stacked layouts would have to cut cells
MIN_WIDTH = 60


def _check_width(ctx, param, value):
    if value is not None and value < MIN_WIDTH:
        raise click.BadParameter(f"the text report needs at least {MIN_WIDTH} columns, not {value}.")
    return value


@main.command(epilog="""\b
Examples:
  mmntrace report rec                                  tables in the terminal
  mmntrace report rec --width 80 > rec.txt             text laid out for 80 columns
  mmntrace report rec --format json | jq '.violations'  JSON (schema: docs/report-schema.md)
  mmntrace report rec --format html -o rec.html        one self-contained file with plots
  mmntrace report before --compare after               the comparison: rates, after/before ratios, warnings
  mmntrace report before --compare after --format html -o diff.html
""")
@click.argument("recording", type=click.Path(readable=False))   # unreadable: Recording says why
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="text: terminal tables; json: the documented schema; html: one file with embedded plots.")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the report to FILE instead of standard output (html needs it).")
@click.option("--compare", "other", type=click.Path(), metavar="AFTER",
              help="Compare RECORDING (before) with AFTER and print the comparison only: counts as rates per "
                   "second of each recording's own duration, after/before ratios (1.8x, 0.52x, =, new, gone), "
                   "warnings where kernels, architectures, backends or modes differ; hooks by their --hooks "
                   "names, so 6.1 and 6.12 recordings line up.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Rows in the process, mm and caller tables.")
@click.option("--width", type=int, callback=_check_width, metavar="COLUMNS",
              help=f"Lay the text report out for COLUMNS columns (at least {MIN_WIDTH}): tables wrap names and "
                   "stack or split columns to fit, never cutting a number. Default: the terminal's width, or "
                   "220 when writing to a file or a pipe.")
@_keep_root_owner_option
@_friendly
def report(recording, fmt, out, other, top, width, keep_root_owner):
    """Report on a recording: latency, rate, time, processes, callers, violations.

    \b
    Sections:
      latency     per hook x callback x event: count, rate, p50/p90/p99/p99.9/max, log2 histogram
      over time   invocation rate and p99 latency per time bucket, per hook
      processes   top processes and top mms by hook invocations
      callers     who invoked the secondary-TLB hook: ptl_clear / tlb_flush / permission_upgrade / range_end
      violations  sleeping-rule violations by rule, callback and sleeper, with an example stack
      coverage    drops, and which probes were attached or skipped

    Recordings made with --aggregate hold only in-kernel log2 histograms:
    their quantiles are log2 upper bounds and the time, process and caller
    sections are absent. A file written with -o is 0600 (it shows mm
    addresses), never through a symbolic link.
    """
    from . import aggregate, render, report as rep
    from .recording import Recording
    if fmt == "html" and not out:
        raise errors.UsageError("--format html writes a file: add -o FILE (for example -o report.html)")
    if width is not None and fmt != "text":
        raise errors.UsageError(f"--width lays out the text report: --format {fmt} has no width")
    sa = aggregate.summarize(Recording(recording), top=top)
    rep.require_data(sa)
    r = rep.from_summary(sa)
    sb = None
    if other:
        sb = aggregate.summarize(Recording(other), top=top)
        rep.require_data(sb)
        r = rep.with_compare(r, rep.from_summary(sb))
    if fmt == "json":
        text = render.json(r) + "\n"
    elif fmt == "html":
        text = render.html(r, sa, sb)
    else:
        text = render.text(r, width=width or (None if out else _term_width()),
                           color=not out and sys.stdout.isatty())
    if out:
        _write_output(Path(out), text, hand_over=not keep_root_owner)
        click.echo(f"mmntrace: wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


def _term_width() -> int | None:
    """The terminal's width when standard output is one (None: a pipe, where
    the renderer's default applies); never under MIN_WIDTH, the narrowest
    layout the report has."""
    if not sys.stdout.isatty():
        return None
    import shutil
    return max(shutil.get_terminal_size((200, 50)).columns, MIN_WIDTH)


def _write_output(path: Path, text: str, hand_over: bool = True) -> None:
    """report -o: 0600 whatever the format (each shows mm addresses, unless the
    recording was --redact'ed), atomically, never through a link."""
    from .outpath import write_atomic
    try:
        write_atomic(path, text.encode("utf-8"), hand_over=hand_over)
    except OSError as e:
        raise errors.UsageError(f"cannot write {path}: {e.strerror or e}") from None


@main.command(epilog="""\b
Examples:
  mmntrace plot rec                         PNGs in rec-plots/
  mmntrace plot rec -o figs --format svg    SVGs in figs/
""")
@click.argument("recording", type=click.Path(readable=False))   # unreadable: Recording says why
@click.option("-o", "--output", "outdir", type=click.Path(file_okay=False), metavar="OUTDIR",
              help="Directory for the figures (default: RECORDING-plots next to the recording).")
@click.option("--format", "fmt", type=click.Choice(["png", "svg"]), default="png", show_default=True)
@_keep_root_owner_option
@_friendly
def plot(recording, outdir, fmt, keep_root_owner):
    """Plot a recording: latency CDFs, latency heatmap, rate and violation timelines.

    \b
    Figures (one file each, named so):
      latency-cdf           latency CDF per callback, one panel per hook
      latency-heatmap       log2 latency buckets x time buckets, per hook
      rate-timeline         invocations per second and p99 latency through the recording
      violations-timeline   one mark per sleeping-rule violation, by rule and callback

    Durations read as the report writes them (8.39 ms), time as seconds
    since the recording started, from its start to its end. Prints the files
    written. Recordings made with --aggregate have no per-event times: their
    heatmap and rate timeline are skipped, saying so; so is the violation
    timeline of a recording without violations.
    A directory made for them is 0700 and each figure 0600 (a callback with
    no symbol is labelled with its kernel address).
    """
    from . import plot as plotmod, report as rep
    src = Path(recording)
    s = rep.load_summary(src)
    outdir = Path(outdir) if outdir else src.resolve().parent / f"{src.resolve().name}-plots"
    try:
        written, skipped = plotmod.write_all(s, outdir, fmt, hand_over=not keep_root_owner)
    except OSError as e:
        raise errors.UsageError(f"cannot write the figures to {outdir}: {e.strerror or e}") from None
    for p in written:
        click.echo(str(p))
    for why in skipped:
        click.echo(f"mmntrace: skipped {why}", err=True)


@main.command(epilog="""\b
Examples:
  mmntrace notebooks rec rec-notebooks     executed copies in rec-notebooks/
  mmntrace notebooks --where               where the notebooks are, to open them in Jupyter
""")
@click.argument("recording", required=False, type=click.Path(readable=False))
@click.argument("outdir", required=False, type=click.Path(file_okay=False))
@click.option("--where", is_flag=True, help="Print the directory of the shipped notebooks and exit.")
@click.option("--timeout", default=600, show_default=True, type=click.IntRange(1, 86400), metavar="SECONDS",
              help="Longest a single cell may run.")
@_friendly
def notebooks(recording, outdir, where, timeout):
    """Run the notebooks shipped with mmntrace on a recording.

    Each notebook (latency, violations) reads the recording named by
    MMNTRACE_RECORDING; the executed copies, with their tables and figures,
    are written to OUTDIR (0700, each notebook 0600: they show the
    recording's mm addresses and stacks). Needs the notebooks extra:
    pip install 'mmntrace[notebooks]'. To explore interactively, open the
    notebooks --where prints with MMNTRACE_RECORDING set.
    """
    from . import notebooks as nb
    if where:
        click.echo(str(nb.NOTEBOOKS))
        return
    if not recording or not outdir:
        raise errors.UsageError("give a RECORDING and an OUTDIR (or --where)")
    from .recording import Recording
    Recording(recording)          # an unreadable or foreign directory: one sentence before any kernel starts
    for p in nb.run_notebooks(recording, outdir, timeout=timeout):
        click.echo(str(p))


@main.command()
@_friendly
def doctor():
    """Say what `record` would attach on this kernel, and why anything cannot be.

    fentry is tried for real: a no-op fentry program is loaded, attached and
    closed at once, and the line says why it failed (the errno and the step)
    where it did; `record --backend auto` follows the same verdict.

    Exits non-zero when recording is impossible here (for example: no kprobes,
    not root); the message says what to do instead.
    """
    from . import kernel
    f = kernel.probe()
    ok = lambda b: "yes" if b else "NO"
    click.echo(f"kernel          {f.release}")
    click.echo(f"root            {ok(f.is_root)}")
    click.echo(f"kprobes         {ok(f.kprobes)}")
    click.echo(f"kallsyms        {ok(f.kallsyms)}")
    click.echo(f"BTF             {ok(f.btf)}")
    click.echo(f"headers         {f.headers or 'NO'}{'' if f.headers_match else ' (do not match the running kernel)' if f.headers else ''}")
    click.echo(f"ring buffer     {ok(f.ringbuf)}{'' if f.ringbuf else ' (records go through the perf buffer)'}")
    click.echo(f"fentry          {_fentry_line(kernel.fentry_verdict(), f.kprobes)}")
    click.echo(f"kprobe cookies  {ok(f.kprobe_cookie)}"
               + ("  (each hook's and callback's kprobe is told what it serves by its BPF link)" if f.kprobe_cookie
                  else "  (the kprobes look their hook or callback up by address on every call)"))
    click.echo(f"bpf_loop        {ok(f.bpf_loop)}"
               + ("  (the interval-tree walk's steps are a callback: programs load in a fraction of the time)"
                  if f.bpf_loop else "  (the interval-tree walk is unrolled by the verifier: slower loads)"))
    lean = getattr(f, "lean_headers", None)
    click.echo(f"lean compile    {ok(bool(lean))}"
               + (f"  (struct pt_regs from BTF: {', '.join(h.split('include/')[-1] for h in kernel.LEAN_SKIPPED)} and what "
                  "they include are not parsed, a faster compile)" if lean else
                  "  (struct pt_regs from the kernel headers, with everything they include)"))
    click.echo(f"MMU notifiers   {ok(f.mmu_notifiers)}")
    for hid, sym, name in f.hooks:
        click.echo(f"  hook {name:<32} {sym}")
    click.echo(f"events          {', '.join(n for _v, n in f.events)}")
    click.echo(f"lock context    {kernel.CONTEXT_SOURCES[f.context_source]}")
    click.echo(f"might-sleep     {len(f.sleepers)} functions (probed with record --might-sleep; real sleeps: the "
               "task's voluntary-switch count; or --sleep-detect switch: sched_switch, "
               + ("raw tracepoint" if getattr(f, "raw_sched_switch", False) else "perf tracepoint") + ")")
    kernel.require_recording(f)
    click.echo("recording is possible: sudo mmntrace record -d 10 -o rec")


def _fentry_line(v: Verdict, kprobes: bool) -> str:
    """doctor's fentry line from the trial attach's verdict (mmntrace/trial.py),
    not from the presence of BTF and trampoline symbols, which can both be
    there on a kernel that refuses fentry programs."""
    if v.ok:
        return ("yes  (a trial fentry program attached; auto backend: fentry for might-sleep functions "
                "and, with --aggregate, hooks; kprobes for driver callbacks, and for hooks when streaming)")
    return f"NO  ({v.reason}{'; the auto backend uses kprobes' if kprobes else ''})"


@main.command(epilog="""\b
Examples:
  sudo mmntrace daemon --every 10m --for 30s -o /var/lib/mmntrace
  sudo mmntrace daemon --once --for 30s -o /var/lib/mmntrace     one window, for cron
  sudo mmntrace daemon --config /etc/mmntrace/daemon.toml         flags mirrored in TOML
  sudo mmntrace daemon --max-events-per-s 50000 --http 9475       budget + /metrics on 127.0.0.1

\b
Output (Hive-partitioned; read a fleet's files with pyarrow.dataset, DuckDB or Spark):
  OUT/hist/host=H/date=D/WINDOW.parquet         log2 latency histograms
  OUT/violations/host=H/date=D/WINDOW.parquet   sleep attempts with stacks
  OUT/windows/host=H/date=D/WINDOW.json         the window's summary
  OUT/mmntrace.prom                             node_exporter textfile metrics
See docs/daemon.md for the rollout and what it costs per host.
""")
@click.option("--every", default="10m", show_default=True, metavar="DURATION",
              help="Start a window this often (30s, 10m, 1h...).")
@click.option("--for", "for_", default="30s", show_default=True, metavar="DURATION",
              help="How long each window stays attached.")
@click.option("--once", is_flag=True, help="Run a single window and exit (for cron or a systemd timer).")
@click.option("--count", type=click.IntRange(1), metavar="N", help="Run N windows and exit.")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False), metavar="DIR",
              help="Output directory [default: /var/lib/mmntrace].")
@click.option("--config", type=click.Path(dir_okay=False), metavar="FILE.toml",
              help="TOML file whose keys mirror these flags (flags given here win); SIGHUP re-reads it.")
@click.option("--max-events-per-s", type=float, metavar="N",
              help="Event budget: past it, trace 1 hook invocation in N (N is in the window's metadata).")
@click.option("--textfile", type=click.Path(dir_okay=False), metavar="FILE",
              help="node_exporter textfile-collector file [default: OUT/mmntrace.prom].")
@click.option("--http", metavar="[ADDR:]PORT", help="Also serve /metrics over HTTP (ADDR defaults to 127.0.0.1), "
              "from the end of the compile on (the port is checked before it).")
@click.option("--retention-age", metavar="DURATION", help="Delete windows older than this [default: 14d].")
@click.option("--retention-size", metavar="SIZE", help="Keep at most this much output, oldest deleted first "
              "[default: 1G].")
@click.option("--host", help="Host name in the partitions [default: this host's name].")
@click.option("-p", "--pid", type=int, help="Only this process (tgid).")
@click.option("--comm", help="Only tasks with this command name.")
@click.option("--hooks", help="Comma-separated hooks to trace (default: all).")
@click.option("--max-bpf-cpu", type=float, metavar="SHARE",
              help="Stop (exit 23) after a window in which our BPF programs used more than SHARE of one CPU [default: 0.05].")
@click.option("--might-sleep/--no-might-sleep", default=None,
              help="Also probe might-sleep functions in each window [default: off: they tax every allocation "
                   "and lock of the machine; real sleeps are caught either way].")
@click.option("--sleep-detect", "sleep_detect", type=click.Choice(hooks.SLEEP_DETECT), default=None,
              help="How real sleeps are caught, as for record [default: count: nothing runs outside "
                   "MMU-notifier calls; switch also names what slept, at a cost on every context switch].")
@_friendly
def daemon(every, for_, once, count, out, config, max_events_per_s, textfile, http, retention_age,
           retention_size, host, pid, comm, hooks, max_bpf_cpu, might_sleep, sleep_detect):
    """Sample MMU-notifier latency and rule violations periodically, at bounded cost.

    The BPF program is compiled once; each window attaches every probe, keeps
    latency histograms in the kernel and streams only violations, then
    detaches everything, so between windows the probe overhead is zero.
    SIGTERM cancels the current window (nothing partial is written) and
    detaches; SIGHUP re-reads --config. One JSON log line per window on stdout.
    """
    from . import daemon as d
    cfg = d.load_config(Path(config)) if config else d.DaemonConfig()
    kw = {}
    ctx = click.get_current_context()
    given = lambda name: ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT  # noqa: E731
    if given("every") or not config:
        kw["every_s"] = d.parse_duration(every)
    if given("for_") or not config:
        kw["for_s"] = d.parse_duration(for_)
    if once:
        kw["count"] = 1
    elif count:
        kw["count"] = count
    for name, val, conv in (("out", out, Path), ("max_events_per_s", max_events_per_s, float),
                            ("textfile", textfile, Path), ("http", http, str), ("host", host, str),
                            ("pid", pid, int), ("comm", comm, str), ("max_bpf_cpu", max_bpf_cpu, float),
                            ("might_sleep", might_sleep, bool), ("sleep_detect", sleep_detect, str)):
        if val is not None:
            kw[name] = conv(val)
    if retention_age:
        kw["retention_age_s"] = d.parse_duration(retention_age)
    if retention_size:
        kw["retention_bytes"] = d.parse_size(retention_size)
    if hooks:
        kw["hooks"] = [h.strip() for h in hooks.split(",") if h.strip()]
    import dataclasses
    try:
        cfg = dataclasses.replace(cfg, **kw)
    except TypeError as e:
        raise errors.UsageError(str(e)) from e
    from . import kernel
    kernel.require_recording(kernel.probe(), cfg.backend)
    sys.exit(d.Daemon(cfg, Path(config) if config else None).run())


if __name__ == "__main__":
    main()
