"""Command line: a thin layer over the Python API.

Every :class:`mmntrace.errors.MmntraceError` becomes one sentence on stderr and
its own exit code; nothing here prints a traceback for bad input.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import errors


def _friendly(fn):
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except errors.MmntraceError as e:
            click.echo(f"mmntrace: {e}", err=True)
            sys.exit(e.exit_code)
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mmntrace")
def main():
    """Trace Linux MMU notifiers: who invalidates secondary MMUs, how long each
    driver's callback takes, and which callbacks break the sleeping rules.

    \b
    Typical session:
      mmntrace doctor                  what can be traced on this kernel
      sudo mmntrace record -d 10 -o rec    record 10 s of notifier activity
      mmntrace report rec              latency and rule-violation report
      mmntrace lab --kernel 6.12 -- CMD    run CMD in a lab VM of another kernel
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--kernel", "-k", required=True, metavar="VERSION|IMAGE",
              help="Version prefix of an installed kernel (6.1, 6.12) or a path to a kernel image.")
@click.option("--share", multiple=True, type=click.Path(file_okay=False), metavar="HOST_DIR",
              help="Directory the guest may write, at the same path (repeatable).")
@click.option("--cpus", default=2, show_default=True, help="Guest CPUs.")
@click.option("--memory", default="2G", show_default=True, help="Guest memory (split over 2 NUMA nodes).")
@click.option("--no-numa", is_flag=True, help="One NUMA node instead of two.")
@click.option("--timeout", default=1200, show_default=True, help="Seconds before the VM is killed (a failure).")
@click.option("--verbose", "-v", is_flag=True, help="Print the QEMU/virtme-ng command line.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@_friendly
def lab(kernel, share, cpus, memory, no_numa, timeout, verbose, cmd):
    """Boot a real kernel under QEMU and run CMD in it as root.

    The guest sees this machine's root file system read-only (so the project,
    its .venv and its build outputs are all there) and every --share directory
    writable. Before CMD runs, tracefs and debugfs are mounted, kvm_amd or
    kvm_intel is loaded when the virtual CPU offers it, and the project's test
    module (tests/kmod), built against that kernel's own headers, is loaded.

    The exit status is CMD's. A VM that dies or times out exits 125/124; a
    command that passed while the kernel logged BUG:/WARNING: exits 3.

    \b
    Examples:
      mmntrace lab --kernel 6.12 -- uname -r
      mmntrace lab --kernel 6.1 --share /tmp/out -- sudo mmntrace record -d 5 -o /tmp/out/rec
      mmntrace lab --kernel ~/linux/arch/x86/boot/bzImage -- mmntrace doctor
    """
    from . import lab as labmod
    k = labmod.resolve_kernel(kernel)
    res = labmod.run(k, list(cmd), shares=share, cpus=cpus, memory=memory, numa=not no_numa,
                     timeout=timeout, verbose=verbose)
    click.echo(f"lab: {k.release or k.image}: exit {res.returncode}, {res.wall_s:.1f} s "
               f"(guest ready after {res.boot_s:.1f} s)", err=True)
    sys.exit(res.returncode)


HOOK_CHOICES = ["invalidate_range_start", "invalidate_range_end", "secondary_tlb", "release",
                "clear_flush_young", "clear_young", "test_young", "change_pte", "interval_invalidate"]


@main.command()
@click.option("-d", "--duration", type=float, metavar="SECONDS", help="Stop after SECONDS (default: until Ctrl-C).")
@click.option("-o", "--output", "out", type=click.Path(file_okay=False), default="mmntrace-rec", show_default=True,
              help="New directory for the recording (must not exist or be empty).")
@click.option("--pid", type=int, help="Only this process (tgid).")
@click.option("--comm", help="Only tasks with this command name.")
@click.option("--hooks", help="Comma-separated hooks to trace (default: all): " + ", ".join(HOOK_CHOICES))
@click.option("--aggregate", is_flag=True, help="Keep log2 latency histograms in the kernel; stream only violations.")
@click.option("--backend", type=click.Choice(["kprobe", "fentry"]), default="kprobe", show_default=True,
              help="Probe type.")
@click.option("--ready-file", type=click.Path(dir_okay=False),
              help="Written (JSON: attached probes) once every probe is attached, and again when new driver callbacks are.")
@click.option("--redact", is_flag=True, help="Drop raw kernel addresses (mm, ranges, functions); keep symbols.")
@click.option("-q", "--quiet", is_flag=True, help="No live status line.")
@_friendly
def record(duration, out, pid, comm, hooks, aggregate, backend, ready_file, redact, quiet):
    """Record MMU-notifier activity into a recording directory (needs root).

    Attaches to every notifier entry point the running kernel has
    (invalidate_range_start/end, the secondary-TLB hook, release, the young
    ops, change_pte) and to every subscriber's own callbacks (KVM, IOMMU SVA,
    GPU/HMM drivers...), found from their ops tables when they register or
    first fire. Each invocation gets its event type, range, blockable flag,
    preempt count, IRQ state, duration and caller. Inside callbacks that must
    not sleep, every sleep and might-sleep call is recorded with its stack.

    Stops on Ctrl-C, SIGTERM or after --duration, always writing complete
    metadata. Then: `mmntrace report DIR`.

    \b
    Examples:
      sudo mmntrace record -d 10 -o rec
      sudo mmntrace record --comm qemu-system-x86 --aggregate -o rec
    """
    from . import kernel, record as rec, tracer
    f = kernel.probe()
    kernel.require_recording(f)
    hook_list = [h.strip() for h in hooks.split(",")] if hooks else None
    t = tracer.Tracer(f, backend=backend, hooks=hook_list, pid=pid, comm=comm, aggregate=aggregate)
    status = None
    if not quiet and sys.stderr.isatty():
        def status(rate, total, drops, viol, elapsed):
            click.echo(f"\r{elapsed:6.0f} s  {rate:9.0f} events/s  {total:10d} events  {drops} dropped  "
                       f"{viol} violations ", err=True, nl=False)
    elif not quiet:
        click.echo("mmntrace: compiling and attaching probes...", err=True)
    s = rec.Session(t, f, Path(out), duration=duration, ready_file=Path(ready_file) if ready_file else None,
                    status=status, redact=redact)
    rec.install_signal_handlers(s)
    res = s.run()
    if status:
        click.echo("", err=True)
    click.echo(f"mmntrace: {res['events']} records, {res['violations']} sleep records, {res['drops']} dropped "
               f"-> {res['dir']}", err=True)


@main.command()
@click.argument("recording", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@_friendly
def report(recording, fmt):
    """Latency per hook x callback x event, and sleeping-rule violations.

    \b
    JSON schema: docs/report-schema.md. Example:
      mmntrace report rec --format json | jq '.violations'
    """
    from . import report as rep
    from .recording import Recording
    r = rep.build(Recording(recording))
    click.echo(rep.to_json(r) if fmt == "json" else rep.to_text(r), nl=fmt == "json")


@main.command()
@_friendly
def doctor():
    """Say what `record` would attach on this kernel, and why anything cannot be.

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
    click.echo(f"ring buffer     {ok(f.ringbuf)}")
    click.echo(f"MMU notifiers   {ok(f.mmu_notifiers)}")
    for hid, sym, name in f.hooks:
        click.echo(f"  hook {name:<32} {sym}")
    click.echo(f"events          {', '.join(n for _v, n in f.events)}")
    click.echo(f"might-sleep     {len(f.sleepers)} functions")
    kernel.require_recording(f)
    click.echo("recording is possible: sudo mmntrace record -d 10 -o rec")


if __name__ == "__main__":
    main()
