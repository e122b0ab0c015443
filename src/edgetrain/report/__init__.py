"""Reports from run directories: tables, figures, a PDF and an Excel workbook.

Reads only files (the run-directory contract in docs/design.md, and the tables that
``edgetrain sweep analyze``, ``edgetrain bench`` and ``edgetrain sparse-compare`` write),
so a report can be made on another machine than the one that trained; it imports no torch.
:func:`make_report` detects the kind of directory (:data:`KINDS`): each kind is a
:class:`ReportKind` registered in :data:`REPORT_KINDS` (module :mod:`.kinds`).
"""

from __future__ import annotations

import logging

from edgetrain.report.bench import Bench, load_bench
from edgetrain.report.compare import (
    compare_curves,
    compare_runs,
    compare_totals,
    config_differences,
)
from edgetrain.report.kinds import KINDS, REPORT_KINDS, detect_kind
from edgetrain.report.make import make_report, plot_resources
from edgetrain.report.reportkind import ReportKind
from edgetrain.report.rundir import Run, load_run
from edgetrain.report.sparse import SparseCompare, load_sparse_compare
from edgetrain.report.sweep import Sweep, load_sweep
from edgetrain.report.tables import (
    activation_table,
    config_table,
    controller_table,
    correlation_matrix,
    decisions_table,
    energy_per_epoch,
    environment_table,
    epoch_boundaries,
    epoch_numeric_table,
    metrics_table,
    resource_summary,
    resource_usage,
    run_totals,
    sensors_table,
    strongest_pairs,
    totals_table,
    training_curves,
)

__all__ = [
    "KINDS",
    "REPORT_KINDS",
    "Bench",
    "ReportKind",
    "Run",
    "SparseCompare",
    "Sweep",
    "activation_table",
    "compare_curves",
    "compare_runs",
    "compare_totals",
    "config_differences",
    "config_table",
    "controller_table",
    "correlation_matrix",
    "decisions_table",
    "detect_kind",
    "energy_per_epoch",
    "environment_table",
    "epoch_boundaries",
    "epoch_numeric_table",
    "load_bench",
    "load_run",
    "load_sparse_compare",
    "load_sweep",
    "make_report",
    "metrics_table",
    "plot_resources",
    "resource_summary",
    "resource_usage",
    "run_totals",
    "sensors_table",
    "strongest_pairs",
    "totals_table",
    "training_curves",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
