"""Markdown building blocks for run reports: metric tables, images, links."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["format_value", "image", "link", "metrics_table"]


def format_value(value: Any, digits: int = 4) -> str:
    """Numbers to ``digits`` significant figures; everything else via ``str``; ``|`` escaped."""
    if isinstance(value, bool) or value is None:
        text = "" if value is None else str(value)
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            text = str(value)
        elif value != 0 and (abs(value) >= 10 ** (digits + 2) or abs(value) < 10 ** -(digits - 1)):
            text = f"{value:.{digits - 1}e}"
        else:
            text = f"{value:.{digits}g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(format_value(v, digits) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def metrics_table(rows: Sequence[Mapping[str, Any]], columns: Iterable[str] | None = None,
                  *, digits: int = 4) -> str:
    """A markdown table, one row per dict; columns default to the union of keys, in order seen.

    Missing values are left blank, so experiments with different metrics can share a table.
    """
    if isinstance(rows, Mapping):
        raise TypeError("rows must be a list of dicts; wrap a single dict as [metrics]")
    if columns is None:
        cols: list[str] = []
        for row in rows:
            cols.extend(k for k in row if k not in cols)
    else:
        cols = list(columns)
    if not cols:
        return "_(no metrics)_\n"
    lines = ["| " + " | ".join(format_value(c) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c), digits) if c in row else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def image(path: str, caption: str = "") -> str:
    """A markdown image with an optional italic caption below it."""
    alt = caption.replace("]", "\\]") or path.rsplit("/", 1)[-1]
    text = f"![{alt}]({path.replace(' ', '%20')})"
    return f"{text}\n\n*{caption}*\n" if caption else text + "\n"


def link(path: str, text: str | None = None) -> str:
    """A markdown link to a (relative) path."""
    return f"[{text or path}]({path.replace(' ', '%20')})"
