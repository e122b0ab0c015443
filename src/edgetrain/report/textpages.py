"""Text pages for the PDF: key/value lists and tables laid out in a monospace font.

Content is prepared as :class:`Section` objects (a heading and lines that already fit
the page width); :func:`text_pages` flows them onto as many pages as needed, repeating
a table's header on each continuation page.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.figure import Figure

from edgetrain.report.labels import format_value

__all__ = [
    "LANDSCAPE",
    "PORTRAIT",
    "TABLE_FONT_SIZE",
    "Section",
    "frame_sections",
    "key_value_lines",
    "page_width_chars",
    "table_pages",
    "text_pages",
]

PORTRAIT = (8.27, 11.69)  # A4, inches
LANDSCAPE = (11.69, 8.27)
FONT_SIZE = 8.0
TABLE_FONT_SIZE = 7.5
_MARGIN_IN = 0.6
_BOTTOM_IN = 0.45  # the footer sits below this
_TOP_IN = 0.85  # room for the page heading; the first page's larger title is counted apart
_LINE = 1.45  # line height in font sizes
_CHAR = 0.61  # DejaVu Sans Mono advance is 0.602 em
_MAX_CELL = 42
_KEEP_TOGETHER = 12  # a section this short moves whole to the next page rather than split


@dataclass
class Section:
    """A heading and its lines; ``header`` lines are repeated when the section breaks."""

    heading: str
    lines: list[str]
    header: list[str] = field(default_factory=list)


def page_width_chars(size: tuple[float, float] = PORTRAIT, font_size: float = FONT_SIZE) -> int:
    """How many monospace characters fit across a page of this size."""
    return int((size[0] - 2 * _MARGIN_IN) / (font_size * _CHAR / 72))


def _page_height_lines(size: tuple[float, float], font_size: float) -> int:
    return int((size[1] - _TOP_IN - _BOTTOM_IN) / (font_size * _LINE / 72))


def opening_sections(
    heading: str, pairs: Iterable[tuple[str, str]], problems: Iterable[str], width: int
) -> list[Section]:
    """A report's first sections: ``heading`` over key-value lines, then the problems found
    while reading its input files (when there were any)."""
    sections = [Section(heading, key_value_lines(pairs, width))]
    notes = [f"- {p}" for p in problems]
    if notes:
        sections.append(Section("Notes on the input files", notes))
    return sections


def key_value_lines(pairs: Iterable[tuple[str, str]], width: int, max_key: int = 38) -> list[str]:
    """'key   value' lines; long values wrap under the value column, long keys get their own line."""
    pairs = [(str(k), str(v)) for k, v in pairs]
    if not pairs:
        return []
    key_width = min(max(len(k) for k, _ in pairs), max_key)
    value_width = max(width - key_width - 2, 20)
    lines = []
    for key, value in pairs:
        wrapped = textwrap.wrap(value, value_width, break_long_words=True, break_on_hyphens=False)
        wrapped = wrapped or [""]
        if len(key) > key_width:
            lines.append(key[:width])
            lines.extend(" " * (key_width + 2) + part for part in wrapped)
        else:
            lines.append(f"{key:<{key_width}}  {wrapped[0]}")
            lines.extend(" " * (key_width + 2) + part for part in wrapped[1:])
    return lines


def _cell(column: str, value: object) -> str:
    text = format_value(column, value).replace("\n", " ")
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def frame_sections(
    frame: pd.DataFrame, heading: str, width: int, max_rows: int | None = None
) -> list[Section]:
    """A table as monospace sections; columns that do not fit go to further sections.

    The first column (epoch, run, quantity) is repeated in every part.

    Args:
        frame: The table.
        heading: Section heading.
        width: Characters available per line.
        max_rows: Show at most this many rows and say how many were left out.
    """
    if frame.empty or not len(frame.columns):
        return [Section(heading, ["(no data)"])]
    shown = frame if max_rows is None else frame.head(max_rows)
    cells = {str(c): [_cell(str(c), v) for v in shown[c].tolist()] for c in shown.columns}
    numeric = {str(c): pd.api.types.is_numeric_dtype(shown[c]) for c in shown.columns}
    widths = {c: max([len(c), *map(len, values)]) for c, values in cells.items()}
    names = list(cells)
    first, rest = names[0], names[1:]
    groups: list[list[str]] = []
    current: list[str] = []
    used = widths[first]
    for name in rest:
        if current and used + 2 + widths[name] > width:
            groups.append(current)
            current, used = [], widths[first]
        current.append(name)
        used += 2 + widths[name]
    groups.append(current)

    def render(name: str, text: str) -> str:
        return text.rjust(widths[name]) if numeric[name] else text.ljust(widths[name])

    sections = []
    for number, group in enumerate(groups, start=1):
        columns = [first, *group]
        header = "  ".join(render(c, c) if numeric[c] else c.ljust(widths[c]) for c in columns)
        rule = "  ".join("-" * widths[c] for c in columns)
        lines = [
            "  ".join(render(c, cells[c][row]) for c in columns).rstrip()[:width]
            for row in range(len(shown))
        ]
        if max_rows is not None and len(frame) > max_rows:
            lines.append(f"… {len(frame) - max_rows} more rows (all rows are in report.xlsx)")
        title = (
            heading if len(groups) == 1 else f"{heading} (columns, part {number} of {len(groups)})"
        )
        sections.append(Section(title, lines, [header.rstrip()[:width], rule[:width]]))
    return sections


def _paginate(
    sections: list[Section], capacity: int, first_capacity: int
) -> list[list[tuple[str, str]]]:
    """Flow sections into pages of (style, text) items; a heading counts as two lines."""
    pages: list[list[tuple[str, str]]] = [[]]
    used = 0

    def room() -> int:
        return (first_capacity if len(pages) == 1 else capacity) - used

    def new_page() -> None:
        nonlocal used
        pages.append([])
        used = 0

    for section in sections:
        short = len(section.lines) <= _KEEP_TOGETHER
        need = 2 + len(section.header) + (len(section.lines) if short else 3)
        if used and need > room():
            new_page()
        pages[-1].append(("heading", section.heading))
        used += 2
        for line in section.header:
            pages[-1].append(("header", line))
            used += 1
        for line in section.lines:
            if room() < 1:
                new_page()
                pages[-1].append(("heading", f"{section.heading} (continued)"))
                used += 2
                for header in section.header:
                    pages[-1].append(("header", header))
                    used += 1
            pages[-1].append(("line", line))
            used += 1
    return [page for page in pages if page]


def text_pages(
    sections: list[Section],
    title: str,
    *,
    size: tuple[float, float] = PORTRAIT,
    font_size: float = FONT_SIZE,
    intro: list[str] | None = None,
) -> list[Figure]:
    """Lay sections out on pages of ``size``.

    Args:
        sections: The content.
        title: Shown at the top of every page (large on the first).
        size: Page size in inches.
        font_size: Size of the monospace text (headings are larger).
        intro: Lines under the title on the first page (path, date, status).
    """
    intro = intro or []
    step = font_size * _LINE / 72 / size[1]  # one line, as a fraction of the page height
    capacity = _page_height_lines(size, font_size)
    # The first page's title block is taller than a continuation heading (0.3 in).
    extra_in = 0.1 - 0.3 + step * size[1] * (2 + len(intro) * (font_size + 1) / font_size)
    first = capacity - math.ceil(extra_in / (step * size[1]))
    pages = _paginate(sections, capacity, first)
    figures = []
    for number, items in enumerate(pages):
        figure = Figure(figsize=size)
        left = _MARGIN_IN / size[0]
        y = 1 - 0.55 / size[1]
        if number == 0:
            figure.text(left, y, title, fontsize=16, fontweight="bold", va="top")
            y -= 2 * step + 0.1 / size[1]
            for text in intro:
                figure.text(left, y, text, fontsize=font_size + 1, va="top", family="monospace")
                y -= step * (font_size + 1) / font_size
        else:
            figure.text(left, y, f"{title} (continued)", fontsize=11, fontweight="bold", va="top")
            y -= 0.3 / size[1]
        for style, text in items:
            if style == "heading":
                y -= 0.7 * step
                figure.text(
                    left, y, text, fontsize=11, fontweight="bold", va="top", color="#1f3b73"
                )
                y -= 1.3 * step
            else:
                weight = "bold" if style == "header" else "normal"
                figure.text(
                    left,
                    y,
                    text,
                    fontsize=font_size,
                    va="top",
                    family="monospace",
                    fontweight=weight,
                )
                y -= step
        figures.append(figure)
    return figures


def table_pages(sections: list[Section], title: str) -> list[Figure]:
    """Lay table sections out on landscape pages in the table font (a report's last pages)."""
    return text_pages(sections, title, size=LANDSCAPE, font_size=TABLE_FONT_SIZE)
