"""One design result rendered three ways: a title, an intro, numbered headlines and one table,
as terminal text, Markdown and the HTML of ``report.html``. The path and the whole-space
importances share this shape; the crossed and one-factor results have several tables and keep
their own renderers."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence


def text(title: str, intro: str, headlines: Sequence[str], header: Sequence[str],
         rows: Sequence[Sequence[str]]) -> str:  # fmt: skip
    out = [title, "", *textwrap.wrap(intro, 100), ""]
    out += [f"{i:>2}. {line}" for i, line in enumerate(headlines, 1)]
    table = [list(header), *rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    out.append("")
    for row in table:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out) + "\n"


def markdown(title: str, intro: str, headlines: Sequence[str], header: Sequence[str],
             rows: Sequence[Sequence[str]]) -> str:  # fmt: skip
    out = [f"## {title}", "", intro, ""]
    out += [f"{i}. {line}" for i, line in enumerate(headlines, 1)]
    out += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out) + "\n"


def html(intro: str, headlines: Sequence[str], header: Sequence[str],
         rows: Sequence[Sequence[str]]) -> str:  # fmt: skip
    from bench.results import html as h

    items = "".join(f"<li>{h.esc(line)}</li>" for line in headlines)
    return "\n".join([h.paragraph(intro), f"<ol>{items}</ol>", h.table(list(header), rows)])
