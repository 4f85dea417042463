"""A hook whose trampoline is refused, in a program compiled without the
hooks' kprobe pair, is still probed.

With the fentry backend and every hook function in BTF, the tracer leaves the
hooks' kprobe programs out of its compile (a third of its code: seconds of
every start in the lab's guests). A kernel could refuse one hook's
trampoline all the same (a function that cannot be patched, a policy);
Tracer.attach then compiles the pair in and probes that hook by kprobe. The
refusal is made here by the test; the ground truth is the test module's own
count of its range-start callback, the only subscriber on the machine, in a
process of its own: one call per hook call.

Run inside the lab:  mmntrace lab --kernel 6.12 -- .venv/bin/python -m pytest -q -m lab tests/lab/test_hook_fallback.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

pytestmark = [pytest.mark.lab]

if os.geteuid() != 0 or not os.path.exists("/dev/mmnt_test"):
    pytest.skip("needs root and the test module (run inside `mmntrace lab`)", allow_module_level=True)

from mmntrace import kernel  # noqa: E402
from mmntrace.tracer import Tracer  # noqa: E402
from groundtruth import numa_scanner_off  # noqa: E402

NPAGES = 32


# the workload, in a process of its own: the only mm with a subscriber (the
# module, registered before the tracer attaches, as a user's would be), so
# every range start the hooks count since then is one the module counts too
CHILD = r"""
import json, sys
sys.path.insert(0, %(repo)r)
from mmnlab import testmod
from mmnlab.workload import PAGE, libc, mmap_anon, touch
m = testmod.TestModule()
m.register(0)
print("ready", flush=True)
sys.stdin.readline()
m.reset()
a = mmap_anon(%(n)d * PAGE)
touch(a, %(n)d * PAGE)
libc.munmap(a, %(n)d * PAGE)
print(json.dumps(m.counts()["calls"]), flush=True)
sys.stdin.readline()        # (its exit calls the hooks again: not before the count is read)
"""


@pytest.fixture
def no_numa_scanner():
    """The lab guest's NUMA scanner makes the child's VMAs PROT_NONE about once a
    second, a range start on its mm at a moment nobody chose (once before the
    child reset the module's counts: 6 hook calls against its 2). The hook's
    count is a total over the whole test, so the scanner is off for it."""
    with numa_scanner_off():
        yield


def test_a_refused_hook_trampoline_gets_the_kprobe_pair_compiled_in(no_numa_scanner):
    f = kernel.probe()
    if not kernel.fentry_verdict().ok:
        pytest.skip("no fentry on this kernel")
    t = Tracer(f, backend="fentry", aggregate=True)
    t.load()
    assert not t.kprobe_hooks, "every hook function of the lab's kernels has BTF: the pair is left out"
    start = next(sym for hook, sym, _ in f.hooks if hook == kernel.HOOK_START)
    real = t._tramp.attach
    refused = []

    def attach(symbol, module, entry, exit_, **kw):
        if symbol == start and entry == "hkf_entry":
            refused.append(symbol)
            return "refused by the test"
        return real(symbol, module, entry, exit_, **kw)
    t._tramp.attach = attach
    child = subprocess.Popen([sys.executable, "-c", CHILD % dict(repo=str(REPO), n=NPAGES)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        t.attach()
        assert refused and t.kprobe_hooks and t.hook_refused
        hooks = {r["symbol"]: r for r in t._probes.records if r["kind"] == "hook"}
        assert hooks[start]["attach"] == "kprobe" and hooks[start]["fentry_error"] == "refused by the test"
        assert all(r["attach"] == "fentry" for s, r in hooks.items() if s != start), hooks
        child.stdin.write("go\n")
        child.stdin.flush()
        want = json.loads(child.stdout.readline())["start"]
        got = sum(n for func, hook, _ev, n, _ns in t.totals() if not func and hook == kernel.HOOK_START)
        assert want > 0 and got == want, (got, want)
    finally:
        t.stop()
        child.stdin.close()
        child.wait(timeout=60)
