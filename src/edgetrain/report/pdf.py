"""Writing figures to PNG files and a multi-page PDF."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

__all__ = ["assemble", "drawn_figures", "save_pdf", "save_png", "save_pngs"]

logger = logging.getLogger(__name__)

PNG_DPI = 110


def assemble(
    *parts: tuple[str, Sequence[Figure]] | Mapping[str, Figure],
) -> tuple[list[Figure], list[str]]:
    """Pages in order with their names: ``("title", pages)`` names them "title 1", "title 2",
    ...; a mapping of figures contributes its keys as names."""
    pages: list[Figure] = []
    names: list[str] = []
    for part in parts:
        if isinstance(part, Mapping):
            pages += list(part.values())
            names += list(part)
        else:
            label, figures = part
            pages += list(figures)
            names += [f"{label} {i + 1}" for i in range(len(figures))]
    return pages, names


def drawn_figures(
    drawn: Mapping[str, Figure | None], names: Iterable[str], where: object
) -> dict[str, Figure]:
    """The figures of ``names`` that were drawn, in that order; the others (None or absent:
    no data) are logged as skipped, with ``where`` (the directory) in the message."""
    names = list(names)
    skipped = [name for name in names if drawn.get(name) is None]
    if skipped:
        logger.info("%s: no data for figure(s) %s; skipped", where, ", ".join(skipped))
    return {name: figure for name in names if (figure := drawn.get(name)) is not None}


def save_pngs(drawn: Mapping[str, Figure], names: Iterable[str], out: Path) -> None:
    """Write each drawn figure as ``out/<name>.png``; remove PNGs of figures not drawn now
    (left from an earlier report of the same directory)."""
    for name in names:
        png = out / f"{name}.png"
        if name in drawn:
            save_png(drawn[name], png)
        elif png.exists():
            png.unlink()


def save_png(figure: Figure, path: Path, *, freeze_layout: bool = True) -> Path:
    """Write one figure as PNG (Agg renderer).

    Args:
        figure: The figure.
        path: The PNG file.
        freeze_layout: Keep the layout computed for this drawing, so that saving the
            figure again (into the PDF) does not solve the constrained layout twice.
    """
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=PNG_DPI)
    if freeze_layout:
        figure.set_layout_engine("none")
    return path


def save_pdf(pages: list[Figure], path: Path, *, title: str, footer: str) -> int:
    """Write pages to ``path`` with a 'footer · page i of n' line on each.

    The file is written beside its final place and renamed, so a reader never sees
    half a PDF.

    Returns:
        The number of pages written.
    """
    temporary = path.with_name(path.name + ".tmp")
    metadata = {"Title": title, "Creator": "edgetrain", "CreationDate": datetime.now(timezone.utc)}
    with PdfPages(temporary, metadata=metadata) as pdf:
        for number, figure in enumerate(pages, start=1):
            figure.text(
                0.99,
                0.006,
                f"{footer} · page {number} of {len(pages)}",
                ha="right",
                va="bottom",
                fontsize=7,
                color="0.4",
            )
            pdf.savefig(figure)
    os.replace(temporary, path)
    logger.info("wrote %s (%d pages)", path, len(pages))
    return len(pages)
