"""mmntrace: trace Linux MMU notifiers.

Public API (the notebooks use only this):

- ``mmntrace.load(DIR)``: the events of a recording as one pandas DataFrame;
- ``mmntrace.Recording(DIR)``: ``.events(columns)``, ``.sleeps()``, ``.hist()``, ``.meta``;
- ``mmntrace.summarize(DIR)``: the :class:`Summary` the report is made of
  (latency rows, CDFs, timeline, heatmap, processes, callers, violations),
  streamed segment by segment;
- ``mmntrace.aggregate``: the same aggregations as pure functions over DataFrames.
"""

from . import aggregate  # noqa: F401
from .aggregate import Summary, summarize  # noqa: F401
from .recording import Recording, load  # noqa: F401

__all__ = ["load", "Recording", "summarize", "Summary", "aggregate"]
