"""``mmntrace lab``: boot a lab kernel under QEMU and run a command in it.

Registered with the ``mmntrace`` command through the entry-point group
``mmntrace.commands`` (lab/pyproject.toml), so the runtime package never
imports the lab; this file exists only in a development checkout.
"""

from __future__ import annotations

import sys

import click

from mmntrace.cli import _friendly


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--kernel", "-k", required=True, metavar="VERSION|IMAGE",
              help="An installed kernel: a version prefix (6.1, 6.12: the generic flavour), with a "
                   "flavour (6.12-rt: PREEMPT_RT) or an architecture (6.12-arm64: the arm64 lab, "
                   "`make arm64-root`), a full release, or a path to a kernel image.")
@click.option("--arch", metavar="ARCH", default=None,
              help="Another architecture's kernel: arm64 (the same as --kernel 6.12-arm64).")
@click.option("--share", multiple=True, type=click.Path(file_okay=False), metavar="HOST_DIR",
              help="Directory the guest may write, at the same path (repeatable).")
@click.option("--cpus", default=2, show_default=True, help="Guest CPUs.")
@click.option("--memory", default="2G", show_default=True, help="Guest memory (split over 2 NUMA nodes).")
@click.option("--no-numa", is_flag=True, help="One NUMA node instead of two.")
@click.option("--timeout", default=1200, show_default=True, help="Seconds before the VM is killed (a failure).")
@click.option("--boot-timeout", default=None, type=float, metavar="SECONDS",
              help="A guest that has not started CMD by then is killed and booted again (a boot takes 15-25 s; "
                   "default 150, 450 for another architecture's, about 95 s).")
@click.option("--boot-attempts", default=3, show_default=True, type=click.IntRange(1, 20),
              help="Boots tried when the guest dies or hangs before CMD starts.")
@click.option("--verbose", "-v", is_flag=True, help="Print the QEMU/virtme-ng command line.")
@click.option("--keep-run-dir", is_flag=True,
              help="Keep the run directory (/tmp/mmntrace-lab-*) after a clean run too; it is always kept, and "
                   "named, when CMD fails or a guest dies or times out.")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@_friendly
def lab(kernel, arch, share, cpus, memory, no_numa, timeout, boot_timeout, boot_attempts, verbose, keep_run_dir, cmd):
    """Boot a real kernel under QEMU and run CMD in it as root.

    The guest sees this machine's root file system read-only (so the project,
    its .venv and its build outputs are all there) and every --share directory
    writable. An arm64 guest (QEMU emulating it) boots build/arm64/root
    instead, with this checkout mounted at its own path and run by that
    root's Python. Before CMD runs, tracefs and debugfs are mounted, kvm_amd or
    kvm_intel is loaded when the virtual CPU offers it, and the project's test
    module (tests/kmod), built against that kernel's own headers, is loaded.

    The exit status is CMD's. A VM that dies or times out exits 125/124; a
    command that passed while the kernel logged BUG:/WARNING: exits 3.

    The emulator loses a few guests in early boot. A guest that dies, or has
    not started CMD after --boot-timeout seconds, is booted again (one line
    says so), up to --boot-attempts boots; once CMD has started, a death is a
    failure. Each boot's output (QEMU, virtme-ng, the kernel's console when
    it Oopses or panics) and its kernel log stay in the run directory, with
    attempts.json. That directory is removed after a clean run (exit 0, no
    boot lost) unless --keep-run-dir; otherwise one line names it. The VM
    never outlives this command, however it ends.

    \b
    Examples:
      mmntrace lab --kernel 6.12 -- uname -r
      mmntrace lab --kernel 6.12-rt -- uname -r     # PREEMPT_RT
      mmntrace lab --arch arm64 --kernel 6.12 -- uname -m   # its own root: make arm64-root
      mmntrace lab --kernel 6.1 --share /tmp/out -- sudo mmntrace record -d 5 -o /tmp/out/rec
      mmntrace lab --kernel ~/linux/arch/x86/boot/bzImage -- mmntrace doctor
    """
    from . import vm as labmod
    k = labmod.resolve_kernel(kernel, arch)
    res = labmod.run(k, list(cmd), shares=share, cpus=cpus, memory=memory, numa=not no_numa,
                     timeout=timeout, verbose=verbose, boot_timeout=boot_timeout,
                     boot_attempts=boot_attempts, keep_run_dir=keep_run_dir)
    click.echo(f"lab: {k.release or k.image}: exit {res.returncode}, {res.wall_s:.1f} s "
               f"(guest ready after {res.boot_s:.1f} s)", err=True)
    sys.exit(res.returncode)
