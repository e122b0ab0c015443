"""The registry of report kinds: every kind of directory ``edgetrain report`` knows.

:data:`REPORT_KINDS` is tried in order and the first kind whose ``detect`` accepts the
directory writes its report: a run first; then a sweep (its files, or an analysis
directory written elsewhere), a benchmark, a sparse-update comparison, and last a
directory of runs. To add a kind, write a module that defines a
:class:`~edgetrain.report.reportkind.ReportKind` and add it here.
"""

from __future__ import annotations

from pathlib import Path

from edgetrain.report.bench import BENCH_KIND
from edgetrain.report.compare import COMPARE_KIND
from edgetrain.report.reportkind import ReportKind
from edgetrain.report.run_report import RUN_KIND
from edgetrain.report.rundir import require_directory
from edgetrain.report.sparse import SPARSE_KIND
from edgetrain.report.sweep import SWEEP_KIND

__all__ = ["KINDS", "REPORT_KINDS", "detect_kind", "find_kind"]

REPORT_KINDS: tuple[ReportKind, ...] = (
    RUN_KIND,
    SWEEP_KIND,
    BENCH_KIND,
    SPARSE_KIND,
    COMPARE_KIND,
)

KINDS: dict[str, str] = {kind.name: kind.description for kind in REPORT_KINDS}


def find_kind(path: Path | str) -> ReportKind | None:
    """The first kind in :data:`REPORT_KINDS` that recognises the directory, or None.

    Raises:
        EdgeTrainError: if ``path`` does not exist or is a file.
    """
    path = require_directory(path)
    return next((kind for kind in REPORT_KINDS if kind.detect(path)), None)


def detect_kind(path: Path | str) -> str:
    """Classify a directory: one of :data:`KINDS`, or 'unknown'."""
    kind = find_kind(path)
    return kind.name if kind is not None else "unknown"
