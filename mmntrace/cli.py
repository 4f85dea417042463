"""Command line: a thin layer over the Python API.

Every :class:`mmntrace.errors.MmntraceError` becomes one sentence on stderr and
its own exit code; nothing here prints a traceback for bad input.
"""

from __future__ import annotations

import functools
import sys

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


if __name__ == "__main__":
    main()
