"""The tracer's BPF program compiled by bcc, with the fallbacks a kernel or a clang forces.

    b = Builder(bcc.BPF, features, lambda choices: codegen.cflags(..., task_storage=choices.task_storage, ...))
    bpf = b.build(codegen.bpf_text())     # bcc's BPF object; b.choices says what it settled on

What is compiled is codegen.py's to say (pure functions of the kernel's
features and the options); this module runs the compile and takes each
fallback in turn, where the first choice is refused:

- a clang that does not know the flag that leaves the optimizing to bcc
  (codegen.OPTIMIZE_ONCE) compiles without it, then and every later time;
- a kernel whose kprobe programs may not use task-local storage (before
  5.12) gets the per-task state in a tid-keyed hash;
- a verifier that refuses the interval walks' bpf_loop() callbacks
  (mmntrace/subprog.py) gets them as bounded loops, as a kernel without the
  helper does;
- a compile that fails without the headers struct pt_regs and PAGE_SIZE come
  from (codegen.lean_header_flags: a kernel whose headers define something
  the program needs in a place this project has not seen) is made again with
  them.

Each is a compile again with one define less; :class:`Choices` records what
was settled (the recording's metadata reports it). What bcc prints from C on
the way is captured (:func:`quiet_bpf_class`): MMNTRACE_DEBUG=1 shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import codegen, nokallsyms, preload, subprog
from .quiet import debug, quietly

#: bcc methods that print from C (libbcc, libbpf, clang): a failed attach
#: (``bpf_attach_raw_tracepoint (kfunc): Unknown error 524``, ``cannot attach
#: kprobe``), a refused load with its verifier log, compiler warnings. The
#: tracer falls back from most of these failures, so the text is noise to
#: the user: captured, shown with MMNTRACE_DEBUG=1 or in the error sentence
#: of a call that fails for good (mmntrace/quiet.py).
NOISY_BCC = ("__init__", "load_func", "attach_kprobe", "attach_kretprobe", "attach_kfunc", "attach_kretfunc",
             "attach_raw_tracepoint", "detach_raw_tracepoint",
             "attach_tracepoint", "detach_kprobe", "detach_kretprobe", "detach_kprobe_event", "detach_kfunc",
             "detach_kretfunc", "detach_tracepoint", "open_perf_buffer", "cleanup")


def quiet_bpf_class(BPF: type) -> type:
    """A subclass of bcc's BPF whose noisy methods (:data:`NOISY_BCC`) keep
    what they print (fds 1 and 2) to themselves, and that attaches nothing as
    it loads."""

    class _BPF(BPF):
        # bcc attaches kfunc__/tracepoint__ programs as it loads them;
        # we attach in our own order, after calibration
        def _trace_autoload(self):
            pass

        #: the BTF id of the per-CPU variable read_pc() reads (None: none)
        pc_var: int | None = None

        def load_func(self, func_name, prog_type, device=None, attach_type=-1):
            """bcc's, but a program that passes a bpf_loop() callback is loaded
            with the callback linked in, and one that reads preempt_count with
            the per-CPU variable's reference made (mmntrace/subprog.py), which
            bcc cannot do."""
            fn = subprog.load_func(self, func_name, prog_type, device, attach_type, pc_var=self.pc_var)
            return fn if fn is not None else BPF.load_func(self, func_name, prog_type, device, attach_type)

    for name in NOISY_BCC:
        if hasattr(_BPF, name):
            setattr(_BPF, name, quietly(getattr(_BPF, name), debug))
    return _BPF


@dataclass
class Choices:
    """What the program is compiled with where the kernel or the compiler may
    refuse the first choice (the defines codegen.cflags takes from it), and
    whether the compile spared bcc's read of kallsyms (an outcome)."""
    task_storage: bool = True       # per-task state in task-local storage, else a tid-keyed hash
    bpf_loop: bool = False          # the interval walks as bpf_loop() callbacks, else bounded loops
    optimize_once: bool = True      # codegen.OPTIMIZE_ONCE in the flags
    lean_headers: bool = True       # struct pt_regs from BTF, its headers left out (codegen.lean_header_flags)
    skipped_kallsyms: bool = False  # bcc's compile spared its kallsyms read (nokallsyms.py)


class Builder:
    """bcc's compiles of one tracer's program. ``BPF``: bcc's class (made
    quiet here); ``flags_for``: the compile flags for a :class:`Choices`
    (without OPTIMIZE_ONCE's handling, which is this class's)."""

    def __init__(self, BPF: type, features, flags_for: Callable[[Choices], list[str]],
                 choices: Choices | None = None):
        self.BPF = quiet_bpf_class(BPF)
        self.BPF.pc_var = subprog.percpu_var_id(features)     # what read_pc() refers to
        self.f = features
        self.flags_for = flags_for
        self.choices = choices if choices is not None else Choices(bpf_loop=bool(getattr(features, "bpf_loop", False)))

    def build(self, text: str):
        """The program compiled and its first fallbacks taken: the returned
        BPF object's programs load on this kernel as far as the tests below
        can tell (a program the kernel refuses later says why where it is
        loaded). ``cb_entry`` stays loaded (bcc keeps it by name)."""
        c = self.choices
        bpf = self.compile(text)
        if c.task_storage and not self.loads(bpf):
            # per-task state in task-local storage needs a kernel whose kprobe
            # programs may use it (5.12+): else a tid-keyed hash
            debug("task-local storage refused: per-task state in a hash")
            bpf.cleanup()
            c.task_storage = False
            bpf = self.compile(text)
        if c.bpf_loop and not self.loads_callbacks(bpf):
            # a verifier that refuses the linked callbacks (or the BTF they
            # need): the interval walks as bounded loops, as without the helper
            debug("bpf_loop callbacks refused: the interval walks compiled as bounded loops")
            bpf.cleanup()
            c.bpf_loop = False
            bpf = self.compile(text)
        return bpf

    def compile(self, text: str):
        """bcc's BPF object for ``text`` under the current choices; one that
        fails without the kernel headers of struct pt_regs and PAGE_SIZE is
        made with them, then and every later time."""
        try:
            return self._compile_flags(text)
        except Exception as e:
            if not self.choices.lean_headers or "-DMMNT_LEAN_HEADERS" not in self.flags_for(self.choices):
                raise
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            debug(f"the compile without the headers of struct pt_regs failed ({first}): compiling with them")
            self.choices.lean_headers = False
            return self._compile_flags(text)

    def _compile_flags(self, text: str):
        """bcc's BPF object for ``text`` under the current choices. A clang that
        refuses the flag that leaves the optimizing to bcc (codegen.OPTIMIZE_ONCE)
        gets the program again without it, optimized twice as before, and so
        does every later compile."""
        flags = self.flags_for(self.choices)
        if not self.choices.optimize_once:
            flags = codegen.without_optimize_once(flags)
        try:
            return self._bcc_compile(text, flags)
        except Exception as e:
            if not self.choices.optimize_once or codegen.OPTIMIZE_ONCE[-1] not in getattr(e, "output", ""):
                raise
            debug(f"clang refused {' '.join(codegen.OPTIMIZE_ONCE)}: compiling without it")
            self.choices.optimize_once = False
            return self._bcc_compile(text, codegen.without_optimize_once(flags))

    def _bcc_compile(self, text: str, flags: list[str]):
        """bcc's compile, spared its read of all of kallsyms where BTF has
        answered its question already and bcc has kernel headers to compile
        against (mmntrace/nokallsyms.py)."""
        with nokallsyms.skipping_kallsyms(nokallsyms.wanted(self.f)) as skipped:
            self.choices.skipped_kallsyms = skipped
            return self.BPF(text=text.encode(), cflags=flags)

    def loads(self, bpf) -> bool:
        """Does the kernel take a program that uses the per-task state (the
        feature test for task-local storage)? ``cb_entry`` uses it as the hook
        programs do."""
        try:
            bpf.load_func(b"cb_entry", preload.KPROBE)
            return True
        except Exception as e:
            debug(f"loading cb_entry failed: {e}")
            return False

    @staticmethod
    def loads_callbacks(bpf) -> bool:
        """Does the kernel take a program with bpf_loop() callbacks linked in?
        The first of bcc's that has them is loaded (bcc keeps it: the preload
        does not verify it again)."""
        for name, _size in preload.functions(bpf):
            if name in preload.NOT_BCCS or not subprog.uses_callback(bpf.dump_func(name.encode())):
                continue
            try:
                bpf.load_func(name.encode(), preload.prog_type(name))
            except Exception as e:
                debug(f"loading {name} with its bpf_loop callbacks failed: {e}")
                return False
            return True
        return True
