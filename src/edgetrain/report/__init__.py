"""Reports from run directories: tables, figures, a PDF and an Excel workbook.

Reads only the files of the run-directory contract (DESIGN.md), so a report can be
made on another machine than the one that trained.
"""

from __future__ import annotations

import logging

from edgetrain.report.compare import (
    compare_curves,
    compare_runs,
    compare_totals,
    config_differences,
)
from edgetrain.report.make import make_report, plot_resources
from edgetrain.report.rundir import Run, detect_kind, load_run
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
    "Run",
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
    "load_run",
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
