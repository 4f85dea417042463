import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    """Lab tests need a traceable kernel, root and the test module: inside
    `mmntrace lab` they have all three. Elsewhere they skip, saying why."""
    reason = None
    if os.geteuid() != 0:
        reason = "lab test: needs root in a lab guest (run `make lab-test`)"
    elif not os.path.exists("/dev/mmnt_test"):
        reason = "lab test: the test module /dev/mmnt_test is not loaded (run `make lab-test`)"
    if reason:
        for item in items:
            if "lab" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))
