"""Presentation entry points: a report dict (:mod:`mmntrace.report`) as text,
JSON or HTML. The report module builds data only and never imports these."""

from __future__ import annotations

import json as _json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .aggregate import Summary


def json(rep: dict) -> str:
    return _json.dumps(rep, indent=2)


def text(rep: dict, *, width: int | None = None, color: bool = False) -> str:
    from .render_text import render
    return render(rep, width=width, color=color)


def html(rep: dict, summary: Summary | None = None, summary_b: Summary | None = None) -> str:
    from .render_html import render
    return render(rep, summary, summary_b)
