"""What a report kind is: how to recognise its directory and how to write its report.

Each kind of directory that ``edgetrain report`` knows (a run, a sweep, ...) is one
:class:`ReportKind`, defined beside the code that writes its report; :mod:`.kinds` lists
them, in the order in which they are tried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["REPORT_DIR", "ReportKind"]

REPORT_DIR = "report"  # where a report goes inside the directory it reports on


@dataclass(frozen=True)
class ReportKind:
    """One kind of directory and its report.

    Attributes:
        name: The kind's name, as :func:`~edgetrain.report.kinds.detect_kind` returns it.
        description: What such a directory holds (listed when a directory is of no kind).
        detect: Whether an existing directory is of this kind (looks at its files only).
        write: Read the directory (first argument) and write its report's PNGs, PDF and
            workbook into the output directory (second argument).
        out_dir: The output directory's name inside the directory.
    """

    name: str
    description: str
    detect: Callable[[Path], bool]
    write: Callable[[Path, Path], object]
    out_dir: str = REPORT_DIR
