"""The run-directory contract, defined once (docs/design.md, "The run directory").

The writer (``train``), the readers (``report``, ``sweep``, ``compare``) and the tests
import these names; none of them spells a column or a status out again. No torch here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "DECISIONS_COLUMNS",
    "DECISIONS_FILE",
    "DEFAULT_DIRECTIONS",
    "ENV_FILE",
    "METRICS_AFTER",
    "METRICS_COLUMNS",
    "METRICS_FILE",
    "MODEL_FILE",
    "RESOURCES_BASE_COLUMNS",
    "RESOURCES_FILE",
    "STATUSES",
    "SUMMARY_FILE",
    "SWEEP_ANALYSIS_TABLES",
    "TEXT_COLUMNS",
    "best_metric",
    "direction",
    "metric_columns",
    "metrics_columns",
]

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.csv"
RESOURCES_FILE = "resources.csv"
DECISIONS_FILE = "decisions.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoints/last.pt"
MODEL_FILE = "model.pt"

# summary.json "status"
STATUSES = ("running", "completed", "interrupted", "diverged", "failed")

# metrics.csv: epoch, time_s, train_loss, train_<m>..., val_loss, val_<m>..., then these
METRICS_AFTER: tuple[str, ...] = (
    "lr",
    "batch_size",
    "micro_batch_size",
    "accum_steps",
    "samples_per_s",
    "energy_j",
    "energy_source",
    "energy_scope",
    "energy_coverage",
    "energy_process_j",
    "energy_process_source",
    "avg_power_w",
    "peak_rss_bytes",
    "peak_pss_bytes",
    "peak_device_mem_bytes",
    "activation_bytes",
    "param_sparsity",
    "trainable_frac",
)


def metrics_columns(
    train_metrics: Iterable[str] = ("acc",), val_metrics: Iterable[str] = ("acc",)
) -> tuple[str, ...]:
    """The metrics.csv columns of a task reporting these metrics (names without prefix).

    A feature that is off leaves its column empty, never absent.
    """
    return (
        "epoch",
        "time_s",
        "train_loss",
        *(f"train_{m}" for m in train_metrics),
        "val_loss",
        *(f"val_{m}" for m in val_metrics),
        *METRICS_AFTER,
    )


# the columns of a classification run (the default task)
METRICS_COLUMNS = metrics_columns()

RESOURCES_BASE_COLUMNS: tuple[str, ...] = (
    "t_s",
    "epoch",
    "cpu_pct",
    "ram_used_bytes",
    "proc_rss_bytes",
)
DECISIONS_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "memory_score",
    "accuracy_score",
    "priority_batch_size",
    "priority_learning_rate",
    "chosen",
    "parameter",
    "old",
    "new",
    "reason",
)
TEXT_COLUMNS = frozenset(
    {"energy_source", "energy_scope", "energy_process_source", "chosen", "parameter", "reason"}
)

# a sweep's analysis/ tables when it is ranked by accuracy (written by sweep.analysis, read
# by the sweep report); a sweep ranked by another metric names its own (top_<metric>)
SWEEP_ANALYSIS_TABLES: tuple[str, ...] = (
    "trials",
    "top_accuracy",
    "top_energy",
    "top_efficiency",
    "pareto",
    "importance",
    "best_values",
)

# directions of the built-in metrics, for runs whose summary.json does not record them
DEFAULT_DIRECTIONS: dict[str, str] = {
    "loss": "min",
    "acc": "max",
    "accuracy": "max",
    "token_acc": "max",
    "mae": "min",
    "mse": "min",
    "rmse": "min",
    "r2": "max",
    "perplexity": "min",
}


def metric_columns(columns: Iterable[str]) -> list[str]:
    """The metric columns among metrics.csv's (``train_*``, ``val_*``), in file order."""
    return [c for c in columns if c.startswith(("train_", "val_", "test_"))]


def direction(column: str, summary: Mapping[str, Any] | None = None) -> str:
    """``max`` or ``min`` for a metric column: as recorded in summary.json ``task.metrics``,
    else by the built-in table (unknown metrics: ``min``, as for a loss)."""
    recorded = ((summary or {}).get("task") or {}).get("metrics") or {}
    if column in recorded:
        return str(recorded[column])
    name = column.split("_", 1)[1] if "_" in column else column
    return DEFAULT_DIRECTIONS.get(name, "min")


def best_metric(summary: Mapping[str, Any] | None, columns: Iterable[str] = ()) -> tuple[str, str]:
    """The column that decides "best" and its direction: as summary.json ``task`` says,
    else ``val_acc`` (max) when present (runs written before tasks), else ``val_loss``."""
    task = (summary or {}).get("task") or {}
    if task.get("best_metric"):
        return str(task["best_metric"]), str(task.get("best_mode") or "min")
    return ("val_acc", "max") if "val_acc" in set(columns) else ("val_loss", "min")
