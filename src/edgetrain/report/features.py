"""Which optional features were active in a run, told from its files.

A run report has a section for each feature that was on (the memory budget and its
controller, activation compression, sparse updates, pruning, the resource monitor) and
none for the others. Each feature leaves traces: its section of summary.json, its file
(``adapt.csv``, ``sparse_update.csv``, ``resources.csv``) or its metrics.csv column; any
one of them counts, so a run cut short before summary.json was written still shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from edgetrain.report.rundir import Run

__all__ = [
    "FEATURES",
    "FEATURE_TITLES",
    "active_features",
    "controller_decisions",
    "feature_summary",
    "prune_decisions",
]

#: Every optional feature a run report knows, in report order.
FEATURES = ("monitor", "adapt", "activations", "sparse_update", "prune")
#: The human name of each feature (a section heading).
FEATURE_TITLES = {
    "monitor": "resource monitor",
    "adapt": "memory budget and adaptation",
    "activations": "activation compression",
    "sparse_update": "sparse updates",
    "prune": "pruning",
}
_PRUNE_CHOICE = "prune"


def _has(frame: pd.DataFrame, column: str) -> bool:
    return column in frame.columns and bool(frame[column].notna().any())


def _rows(frame: pd.DataFrame) -> bool:
    return not frame.dropna(how="all").empty


def feature_summary(run: Run, feature: str) -> dict[str, Any]:
    """The feature's section of summary.json (``{}`` when absent)."""
    section = run.summary.get(feature)
    return dict(section) if isinstance(section, Mapping) else {}


def prune_decisions(run: Run) -> pd.DataFrame:
    """The decisions pruning wrote into decisions.csv (``chosen`` is ``prune``)."""
    decisions = run.decisions
    if decisions.empty or "chosen" not in decisions.columns:
        return decisions.iloc[0:0]
    return decisions[decisions["chosen"] == _PRUNE_CHOICE].reset_index(drop=True)


def controller_decisions(run: Run) -> pd.DataFrame:
    """The decisions of the adaptation controller: decisions.csv without pruning's."""
    decisions = run.decisions
    if decisions.empty or "chosen" not in decisions.columns:
        return decisions.reset_index(drop=True)
    return decisions[decisions["chosen"] != _PRUNE_CHOICE].reset_index(drop=True)


def _varies(metrics: pd.DataFrame) -> bool:
    return any(
        c in metrics.columns and metrics[c].dropna().nunique() > 1
        for c in ("batch_size", "micro_batch_size", "accum_steps")
    )


def _activations_on(run: Run) -> bool:
    section = feature_summary(run, "activations")
    return bool(section) or _has(run.metrics, "activation_bytes")


def active_features(run: Run) -> list[str]:
    """The features that were on in ``run``, in :data:`FEATURES` order."""
    metrics = run.metrics
    active = {
        "monitor": _rows(run.resources) or bool(feature_summary(run, "monitor")),
        "adapt": bool(feature_summary(run, "adapt"))
        or _rows(run.adapt)
        or _rows(controller_decisions(run))
        or _varies(metrics),
        "activations": _activations_on(run),
        "sparse_update": bool(feature_summary(run, "sparse_update"))
        or _rows(run.sparse_update)
        or _has(metrics, "trainable_frac"),
        "prune": bool(feature_summary(run, "prune"))
        or _has(metrics, "param_sparsity")
        or _rows(prune_decisions(run)),
    }
    return [name for name in FEATURES if active[name]]
