"""Captioned text tables for the terminal, Markdown and HTML, and the number formats they use."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from typing import Literal

#: How a table is printed.
Style = Literal["text", "markdown", "csv"]


def format_number(value: float, digits: int = 4) -> str:
    """A table cell: blank-safe, compact for large magnitudes (RMSE in original units, parameter counts)."""
    if value is None or not math.isfinite(value):
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.2f}"
    return f"{value:.{digits}f}"


def format_percent(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:+.2f}%"


@dataclass
class Table:
    """A captioned table for the terminal or Markdown; ``spans`` labels runs of columns (e.g. by split)."""

    caption: list[str]
    headers: list[str]
    rows: list[list[str]]
    right: list[bool]
    spans: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: index of the first row of references (shown below a rule, not ranked); None when there are none.
    reference_start: int | None = None

    def render(self, style: Style) -> str:
        """The table as aligned plain text or as Markdown."""
        return self._markdown() if style == "markdown" else self._text()

    def html(self) -> str:
        """The table as an HTML fragment (caption, spanned header, rows, notes), for ``report.html``."""
        out = ["<table>", "<caption>" + "<br>".join(escape(line) for line in self.caption) + "</caption>", "<thead>"]
        if self.spans:
            out.append("<tr>" + "".join(f'<th colspan="{count}" class="span">{escape(label)}</th>'
                                        for label, count in self.spans) + "</tr>")
        out.append("<tr>" + "".join(f"<th>{escape(h)}</th>" for h in self.headers) + "</tr></thead><tbody>")
        for i, row in enumerate(self.rows):
            kind = ' class="reference"' if self.reference_start is not None and i >= self.reference_start else ""
            out.append(f"<tr{kind}>" + "".join(f'<td class="{"num" if r else "text"}">{escape(c)}</td>'
                                               for c, r in zip(row, self.right, strict=True)) + "</tr>")
        out.append("</tbody></table>")
        if self.notes:
            out.append("<ul class=\"notes\">" + "".join(f"<li>{escape(n)}</li>" for n in self.notes) + "</ul>")
        return "\n".join(out)

    def _text(self) -> str:
        widths = [max([len(h), *(len(r[i]) for r in self.rows)]) for i, h in enumerate(self.headers)]
        start = 0
        for label, count in self.spans:  # a span's label must fit over its columns, with a rule either side
            spare = len(label) + 4 - (sum(widths[start:start + count]) + 2 * (count - 1))
            if label and spare > 0:
                widths[start + count - 1] += spare
            start += count

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.rjust(w) if r else c.ljust(w)
                             for c, w, r in zip(cells, widths, self.right, strict=True)).rstrip()

        out = [*self.caption, ""]
        if self.spans:
            parts, start = [], 0
            for label, count in self.spans:
                width = sum(widths[start:start + count]) + 2 * (count - 1)
                parts.append(f" {label} ".center(width, "─") if label else " " * width)
                start += count
            out.append("  ".join(parts).rstrip())
        out.append(line(self.headers))
        out.append("  ".join("-" * w for w in widths))
        for i, row in enumerate(self.rows):
            if i == self.reference_start:
                out.append("  ".join("·" * w for w in widths))
            out.append(line(row))
        out += [f"  {note}" for note in self.notes]
        return "\n".join(out) + "\n"

    def _markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|")

        headers = list(self.headers)
        if self.spans:  # Markdown has no column spans: put the span's label in front of each header
            start = 0
            for label, count in self.spans:
                for i in range(start, start + count):
                    headers[i] = f"{label} {headers[i]}".strip()
                start += count
        out = [f"**{self.caption[0]}**", *[f"{line}" for line in self.caption[1:]], ""]
        out.append("| " + " | ".join(cell(h) for h in headers) + " |")
        out.append("|" + "|".join("---:" if r else ":---" for r in self.right) + "|")
        for i, row in enumerate(self.rows):
            label = [f"*{c}*" if self.reference_start is not None and i >= self.reference_start and c not in ("", "—")
                     else c for c in row]
            out.append("| " + " | ".join(cell(c) for c in label) + " |")
        if self.notes:
            out += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(out) + "\n"
