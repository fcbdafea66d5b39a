"""A report as one self-contained HTML page: inline CSS, plots embedded as ``data:`` PNGs.

The page needs no network and no JavaScript: its Content-Security-Policy forbids both (only inline
styles and ``data:`` images load), so what a browser shows is exactly the file. Every piece of text
goes through :func:`html.escape`. Standard library only; tables come as pandas frames or as
``(header, rows)``.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

SHORT = 30  # characters: a table cell this short never wraps
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2125;
  margin: 0; background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 21px; margin: 36px 0 8px; padding-top: 8px; border-top: 2px solid #e3e6ea; }
h3 { font-size: 17px; margin: 24px 0 6px; }
nav { font-size: 14px; color: #555; margin-bottom: 8px; }
nav a { margin-right: 14px; }
a { color: #0b62a4; }
p, li { max-width: 980px; }
code { background: #f0f2f4; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
.lead { font-size: 16px; }
.scroll { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #dde1e5; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num, td.short, th { white-space: nowrap; }
th { background: #eef1f4; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; }
figure { margin: 12px 0 24px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
figure.narrow img { max-width: 460px; }
.beside { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
.beside > div { flex: 1 1 380px; }
.beside > figure { margin-top: 4px; }
figcaption { font-size: 13px; color: #555; margin-top: 4px; }
.sub { color: #555; font-size: 14px; margin-top: 0; }
"""


@dataclass
class Section:
    """One ``<section>`` of the page: an anchor id, a heading, and body fragments (HTML)."""

    id: str
    title: str
    parts: list[str] = field(default_factory=list)


def esc(text: Any) -> str:
    """Text made safe for HTML (quotes included)."""
    return html.escape(str(text), quote=True)


def paragraph(text: str, cls: str | None = None) -> str:
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attr}>{_inline(text)}</p>"


def text_block(text: str) -> str:
    """Plain report text as HTML: ``- item`` lines become a list, ``1. item`` lines a numbered
    list, other lines paragraphs."""
    out: list[str] = []
    kind: str | None = None
    for line in text.strip().splitlines():
        stripped = line.strip()
        numbered = re.match(r"^\d+\.\s+(.*)$", stripped)
        now = "ul" if stripped.startswith("- ") else "ol" if numbered else None
        if now != kind:
            if kind:
                out.append(f"</{kind}>")
            if now:
                out.append(f"<{now}>")
            kind = now
        if now == "ul":
            out.append(f"<li>{_inline(stripped[2:])}</li>")
        elif now == "ol":
            out.append(f"<li>{_inline(numbered.group(1))}</li>")
        elif stripped:
            out.append(paragraph(stripped))
    if kind:
        out.append(f"</{kind}>")
    return "\n".join(out)


def _inline(text: str) -> str:
    """Escape ``text``; spans in backticks become ``<code>``."""
    parts = str(text).split("`")
    return "".join(
        f"<code>{esc(p)}</code>" if i % 2 and i < len(parts) - 1 else esc(p)
        for i, p in enumerate(parts)
    )


def _cell(value: Any) -> tuple[str, bool]:
    """A cell's text (numbers to 4 significant digits, NaN and None empty) and whether it is a
    number (right-aligned)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, float):
        return f"{value:.4g}", True
    if isinstance(value, int):
        return str(value), True
    return str(value), False


def table(header: Sequence[Any], rows: Sequence[Sequence[Any]], caption: str | None = None) -> str:
    """A scrollable ``<table>`` (wide tables scroll sideways instead of widening the page)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            text, number = _cell(value)
            # numbers and short words stay on one line ("28-39" must not break at its hyphen)
            cls = "num" if number else "short" if len(text) <= SHORT else ""
            cells.append(f'<td class="{cls}">{esc(text)}</td>' if cls else f"<td>{esc(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (
        f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def frame_table(frame: pd.DataFrame) -> str:
    """A pandas frame as :func:`table` (its index dropped, as in the text report)."""
    rows = [
        [None if _missing(v) else _plain(v) for v in row]
        for row in frame.astype(object).itertuples(index=False)
    ]
    return table([str(c) for c in frame.columns], rows)


def _missing(value: Any) -> bool:
    try:
        return value is None or (isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers, so they format and align as numbers."""
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, (str, bytes)) else value


def image(path: Path, title: str, narrow: bool = False) -> str:
    """A PNG embedded in the page (``data:`` URI) with its title as alt text and caption;
    ``narrow`` keeps a square plot (a confusion matrix) from filling the page's width."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    cls = ' class="narrow"' if narrow else ""
    return (
        f'<figure{cls}><img src="data:image/png;base64,{data}" alt="{esc(title)}">'
        f"<figcaption>{esc(title)}</figcaption></figure>"
    )


def beside(parts: Sequence[str], figure: str) -> str:
    """Fragments with a figure to their right; below them on a narrow screen."""
    return f'<div class="beside"><div>{"".join(parts)}</div>{figure}</div>'


def page(title: str, intro: str, sections: Sequence[Section]) -> str:
    """The whole document: a heading, a table of contents, then the sections in order.

    Args:
        title: The page title and ``<h1>``.
        intro: One line under the heading (plain text).
        sections: The sections, in reading order.
    """
    nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{esc(s.id)}">\n<h2>{esc(s.title)}</h2>\n'
        + "\n".join(s.parts)
        + "\n</section>"
        for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n"
        f"<h1>{esc(title)}</h1>\n{paragraph(intro, 'lead')}\n<nav>{nav}</nav>\n{body}\n"
        "</main>\n</body>\n</html>\n"
    )
