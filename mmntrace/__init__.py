"""mmntrace: trace Linux MMU notifiers.

Public API (the notebooks use only this):

- ``mmntrace.load(DIR)``: the events of a recording as one pandas DataFrame;
- ``mmntrace.Recording(DIR)``: ``.events(columns)``, ``.sleeps()``, ``.hist()``, ``.meta``;
- ``mmntrace.summarize(DIR)``: the :class:`Summary` the report is made of
  (latency rows, CDFs, timeline, heatmap, processes, callers, violations),
  streamed segment by segment;
- ``mmntrace.aggregate``: the same aggregations as pure functions over DataFrames.
"""

import importlib

__all__ = ["load", "Recording", "summarize", "Summary", "aggregate"]

# Imported on first use: pandas and pyarrow take seconds to import on a slow
# machine (10 s in the emulated lab), and `mmntrace record` imports them
# while bcc compiles instead of before.
_LAZY = {"aggregate": (".aggregate", None), "Summary": (".aggregate", "Summary"),
         "summarize": (".aggregate", "summarize"), "Recording": (".recording", "Recording"),
         "load": (".recording", "load")}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'mmntrace' has no attribute {name!r}")
    mod, attr = _LAZY[name]
    m = importlib.import_module(mod, __name__)
    return m if attr is None else getattr(m, attr)


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
