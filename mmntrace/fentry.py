"""The fentry backend's trampolines: one compiled program, loaded on each function.

bcc 0.26 (Debian 12) binds a trampoline program to one vmlinux function by
name, and to none in a module. So the tracer compiles each fentry/fexit
program once (``hkf_entry``, ``cbf_exit``...), takes its instructions, and
:class:`Trampolines` loads them here on each target's BTF function and
attaches them (mmntrace/bpfsys.py: the path libbpf takes, through the raw
syscall).

Each load is verified by the kernel on its own. The hook programs carry
their hook's id as a constant (:func:`with_hook`), so that the verifier walks
one hook's paths: with the id read from a map it walked every hook's, about
a second per load in the lab's emulated 6.12 guest and fourteen loads. (Loading
them side by side in threads was measured there and bought nothing: a lab
guest runs on one host CPU.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from . import bpfsys
from . import subprog
from . import btf as btfmod
from .attach import callback_cookie
from .errors import BpfLoadError
from .layout import header
from .probes import trampoline_in_place
from .quiet import debug
from .subprog import with_imm, with_percpu_var
from .transport import prog_counters


#: bpf/mmntrace.h: the immediates that hook_const() and cb_const() load, replaced per copy
HOOK_IMM = header().defines["MMNT_HOOK_IMM"]
CB_FUNC_IMM = header().defines["MMNT_CB_FUNC_IMM"]
CB_INFO_IMM = header().defines["MMNT_CB_INFO_IMM"]


def with_hook(insns: bytes, hook: int) -> bytes:
    """A hook program's copy for hook id ``hook`` (hook_const()): the verifier
    walks that hook's paths only."""
    return with_imm(insns, HOOK_IMM, hook, "hook id")


def with_callback(insns: bytes, func: int, hook: int, series: int, chained: bool) -> bytes:
    """The callback program's copy for one function (cb_const()): its struct
    cbinfo as constants, so that the copy needs no cb_info lookup per call
    and the verifier walks its hook's paths only."""
    try:
        info = callback_cookie(func, hook, series, chained)    # packed as a kprobe's cookie is
    except ValueError as e:
        raise BpfLoadError(f"callback constants out of range: {e}") from e
    return with_imm(with_imm(insns, CB_FUNC_IMM, func, "callback address"), CB_INFO_IMM, info, "callback info")


class Trampolines:
    """fentry/fexit programs loaded and attached per function, keyed by the
    function's address: ``fds[addr]`` = [prog, link, prog, link] (fexit
    first). ``insns(name)``: the compiled instructions of program ``name``;
    ``by_name``: symbol -> its addresses (mmntrace/ksyms.py); ``pc_var``: the
    BTF id preempt_count's reads refer to (subprog.percpu_var_id; None: none)."""

    def __init__(self, insns: Callable[[str], bytes], by_name: Callable[[], dict], pc_var: int | None = None):
        self._insns_of = insns
        self._by_name = by_name
        self._insns: dict[str, bytes] = {}          # program name -> its instructions
        self.fds: dict[int, list[int]] = {}         # function address -> its programs and links
        self.counted: set[int] = set()              # functions whose programs' recursion misses are drops
        self.closed_missed = 0                      # recursion misses of counted programs since closed
        self.closed_run_ns = 0                      # run time of every program since closed
        self._btf_objs: dict[str, tuple] = {}       # "vmlinux" or module -> (Btf, BTF object fd)
        self.pc_var = pc_var                        # BTF id of preempt_count's per-CPU variable (with_percpu_var)

    # -- BTF objects -------------------------------------------------------------
    def btf_obj(self, obj: str):
        """(parsed BTF, BTF object fd) of vmlinux or a module, cached."""
        if obj not in self._btf_objs:
            base = btfmod.load_vmlinux()
            b = base if obj == "vmlinux" else None
            if obj != "vmlinux" and base is not None and Path(f"/sys/kernel/btf/{obj}").exists():
                b = btfmod.Btf.load(f"/sys/kernel/btf/{obj}", base=base)
            fd = bpfsys.btf_obj_fd(obj) if b is not None else None
            self._btf_objs[obj] = (b, fd)
        return self._btf_objs[obj]

    def close_btf_obj(self, obj: str) -> None:
        """Forget a module's BTF object (it unloaded: a reload has a new one)."""
        b_fd = self._btf_objs.pop(obj, None)
        if b_fd and b_fd[1] is not None:
            os.close(b_fd[1])

    def insns(self, name: str) -> bytes:
        if name not in self._insns:
            self._insns[name] = self._insns_of(name)
        return self._insns[name]

    def _target(self, symbol: str, module: str | None):
        """(BTF object fd, BTF id, address) of ``symbol``, or the reason there is none."""
        b, fd = self.btf_obj(module or "vmlinux")
        if b is None or fd is None:
            return f"no BTF for {module or 'vmlinux'}"
        tid = b.find(symbol, (btfmod.KIND_FUNC,))
        if tid is None:
            return f"{symbol} is not in the BTF of {module or 'vmlinux'}"
        addr = self._by_name().get(symbol, [None])[0]
        if addr is None:
            return f"{symbol} is not in /proc/kallsyms"
        return fd, tid, addr

    @staticmethod
    def _progs(entry: str, exit_: str | None):
        # fexit first, as for kprobes (attach.Probes.probe): a call that meets
        # only the entry program would be seen yet leave no record
        return [(n, k) for n, k in ((exit_, bpfsys.TRACE_FEXIT), (entry, bpfsys.TRACE_FENTRY)) if n is not None]

    # -- loading and attaching ---------------------------------------------------
    def attach(self, symbol: str, module: str | None, entry: str, exit_: str | None,
               check_patched: bool = True, hook: int | None = None, cb: tuple | None = None) -> str | None:
        """Put the fentry program ``entry`` (and the fexit program ``exit_``)
        on ``symbol``, loaded on its BTF function; ``hook``: the hook id the
        copies serve (:func:`with_hook`); ``cb``: the callback's (func, hook,
        series, chained) that the entry copy carries (:func:`with_callback`).
        The reason if not (nothing of it is left loaded then)."""
        t = self._target(symbol, module)
        if isinstance(t, str):
            return t
        fd, tid, addr = t
        fds: list[int] = []
        try:
            for name, kind in self._progs(entry, exit_):
                insns = self.insns(name)
                linked = subprog.load_args(insns)       # its bpf_loop callbacks, where it has them
                if hook is not None:
                    insns = with_hook(insns, hook)
                elif cb is not None and kind == bpfsys.TRACE_FENTRY:
                    insns = with_callback(insns, *cb)
                if self.pc_var is not None:
                    insns = with_percpu_var(insns, self.pc_var)
                prog = bpfsys.load_tracing(insns, name=name, attach=kind, btf_obj_fd=fd, btf_id=tid, **linked)
                fds.append(prog)
                fds.append(bpfsys.attach_tracing(prog))
        except bpfsys.BpfSysError as e:
            for x in fds:
                os.close(x)
            debug(f"fentry on {symbol}: {e}\n{e.log}")
            return str(e)
        if check_patched and not trampoline_in_place(symbol, module):
            # seen on 6.12: kvm_mmu_notifier_invalidate_range_end took both
            # programs and a link, yet its call site stayed a NOP and it
            # never ran them; a kprobe pair sees it (exactness first)
            for x in fds:
                os.close(x)
            return "the kernel took the programs but did not patch the function"
        self.fds[addr] = fds
        return None

    def detach(self, func: int | None = None) -> None:
        """Close the programs and links on one function (or all); what they
        missed and ran stays counted."""
        for f in ([func] if func is not None else list(self.fds)):
            fds = self.fds.pop(f, [])
            got = _fields(fds, ("recursion_misses", "run_time_ns"))      # one bpf() call a program
            if f in self.counted:
                self.closed_missed += got["recursion_misses"]
            self.closed_run_ns += got["run_time_ns"]
            for fd in reversed(fds):
                _close(fd)

    def close(self) -> None:
        """Detach everything, close the BTF objects."""
        self.detach()
        for obj in list(self._btf_objs):
            self.close_btf_obj(obj)
        self._insns.clear()         # a program compiled again has other map fds

    # -- what they cost and missed -------------------------------------------------
    def prog_fds(self) -> list[int]:
        return [fd for fds in self.fds.values() for fd in fds[::2]]

    def missed(self) -> int:
        """Recursion misses of the counted functions' programs, those closed included."""
        return self.closed_missed + sum(_fields(fds, ("recursion_misses",))["recursion_misses"]
                                        for f, fds in self.fds.items() if f in self.counted)


def _fields(fds: list[int], keys: tuple[str, ...]) -> dict[str, int]:
    """``keys``' counters summed over the programs of ``fds`` ([prog, link, prog, link])."""
    out = dict.fromkeys(keys, 0)
    for fd in fds[::2]:
        try:
            got = prog_counters(fd, keys)
        except (OSError, ValueError):
            continue
        for k, v in got.items():
            out[k] += v
    return out


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
