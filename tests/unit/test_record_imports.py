"""A streaming recorder's imports around bcc's compile (mmntrace/cli.py _record):
its own modules beside the compile, pyarrow after it (clang's memory and
pyarrow's together were a streaming start's peak), both done, their threads
gone, before the tracer calibrates (it times its own probes) and so before the
session starts (a library's import holds the GIL: it would stall the first drain)."""

import subprocess
import sys


def run(aggregate: bool) -> list[str]:
    code = f"""
import sys, threading, types
from mmntrace import cli, kernel, tracer
import mmntrace.record as record_module     # (pyarrow is not imported with it: its Session is replaced below)
seen = []

def state(when):
    for t in threading.enumerate():
        if t is not threading.current_thread():
            t.join(30)
    seen.append(when + ":" + ",".join(m for m in ("mmntrace.record", "pyarrow", "pyarrow.parquet") if m in sys.modules))

class FakeTracer:
    def __init__(self, f, **kw):
        self.timing = {{}}
    def load(self, beside_compile=None, after_compile=None):
        state("before")
        if beside_compile:
            beside_compile()
        state("compiled")       # the imports beside the compile have ended by now
        if after_compile:
            finish = after_compile()
            finish()            # the verifier's work done: the calibration's turn
            seen.append("calibrating:" + ",".join(m for m in ("pyarrow", "pyarrow.parquet") if m in sys.modules)
                        + ":threads=%d" % threading.active_count())
    def stop(self):
        seen.append("stopped")

class Stop(Exception):
    pass

def session(*a, **kw):
    seen.append("session:" + ",".join(m for m in ("pyarrow", "pyarrow.parquet") if m in sys.modules))
    raise Stop

kernel.probe = lambda: types.SimpleNamespace(ringbuf=True)
kernel.require_recording = lambda f, backend="auto": None
tracer.Tracer = FakeTracer
record_module.Session = session
try:
    cli._record(None, None, "/nonexistent/rec", None, None, None, {aggregate}, "kprobe", "auto", None, False,
                None, False, True, False)
except Stop:
    pass
print("\\n".join(seen))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


def test_streaming_imports_pyarrow_after_the_compile_and_before_its_session():
    assert run(aggregate=False) == ["before:mmntrace.record", "compiled:mmntrace.record",
                                    "calibrating:pyarrow,pyarrow.parquet:threads=1",
                                    "session:pyarrow,pyarrow.parquet", "stopped"]


def test_aggregate_leaves_pyarrow_for_its_end():
    assert run(aggregate=True) == ["before:mmntrace.record", "compiled:mmntrace.record", "session:", "stopped"]
