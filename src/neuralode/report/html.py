"""Markdown reports as one self-contained HTML file: figures embedded, readable offline, no JavaScript.

A ``report.md`` with relative image links is awkward to open outside a repository viewer; the
HTML twin written beside it carries every figure inside it as a ``data:`` URI, so the single
file can be mailed, archived or opened from a browser's file menu. Links to other reports
(``classify-2d/report.md``) point at their HTML twins.
"""

from __future__ import annotations

import base64
import html as _html
import mimetypes
import os
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from neuralode.io import atomic_write_text

__all__ = ["markdown_to_html", "write_html"]

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1.5em; color: #1f2328; line-height: 1.5; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fbfcfd; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0 0.2em; }
code { background: #f6f8fa; padding: 0 .3em; border-radius: 4px; font-size: 0.9em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; border-radius: 6px; }
pre code { padding: 0; }
td.verdict { font-weight: 600; white-space: nowrap; }
td.v-good { color: #116329; background: #dafbe1 !important; }
td.v-bad { color: #a40e26; background: #ffebe9 !important; }
td.v-info { color: #57606a; }
.missing-figure { color: #a40e26; font-style: italic; }
"""

_GOOD = ("reproduced", "better", "met")
_BAD = ("short by", "missed by", "off by", "not finite", "not a number")
_VERDICT_CELL = re.compile(r"<td>((?:reproduced|better|met|measured|short by|missed by|off by|not )[^<]*)</td>")
_IMG = re.compile(r'<img([^>]*?)src="([^"]+)"([^>]*)>')
_HREF = re.compile(r'href="([^"#:]+?)\.md(#[^"]*)?"')


def _verdict_cell(match: re.Match[str]) -> str:
    text = match.group(1)
    if text.startswith(_GOOD) and not text.startswith("measured"):
        cls = "v-good"
    elif text.startswith(_BAD):
        cls = "v-bad"
    else:
        cls = "v-info"
    return f'<td class="verdict {cls}">{text}</td>'


def _embed(base_dir: Path, missing: list[str]) -> Callable[[re.Match[str]], str]:
    def sub(match: re.Match[str]) -> str:
        before, src, after = match.groups()
        if src.startswith(("data:", "http://", "https://")):
            return match.group(0)
        path = base_dir / unquote(_html.unescape(src))
        if not path.is_file():
            missing.append(src)
            return f'<span class="missing-figure">[missing figure: {_html.escape(src)}]</span>'
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'<img{before}src="data:{mime};base64,{data}"{after}>'

    return sub


def markdown_to_html(text: str, *, base_dir: str | os.PathLike[str] = ".", title: str = "report") -> str:
    """Convert report markdown to a standalone HTML page.

    Relative images are read from ``base_dir`` and embedded as ``data:`` URIs (a missing one is
    shown as a visible "[missing figure: ...]" note); links to ``*.md`` files point at
    ``*.html``; verdict cells of headline tables are coloured. The page has inline CSS only.
    """
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code", "sane_lists"], output_format="html")
    missing: list[str] = []
    body = _IMG.sub(_embed(Path(base_dir), missing), body)
    body = _HREF.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"', body)
    body = _VERDICT_CELL.sub(_verdict_cell, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"{body}\n</body>\n</html>\n")


def _title(text: str, default: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return default


def write_html(markdown_path: str | os.PathLike[str]) -> Path:
    """Write the HTML twin of ``markdown_path`` (``report.md`` -> ``report.html``) beside it."""
    md = Path(markdown_path)
    text = md.read_text(encoding="utf-8")
    page = markdown_to_html(text, base_dir=md.parent, title=_title(text, md.parent.name))
    return atomic_write_text(md.with_suffix(".html"), page)
