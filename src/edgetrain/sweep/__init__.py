"""Energy-aware sweeps on Optuna: search spaces, workers, analysis, final training.

``run_sweep`` runs trials (each in its own process) into ``DIR/trials/<n>/``;
``analyze`` writes ``DIR/analysis/`` (top-k tables, Pareto front, parameter relevance,
results.xlsx); ``final_training`` retrains the chosen configuration into ``DIR/final/``
and is the only step that reads test data.

Names are imported on first use, so that a trial process (``python -m
edgetrain.sweep.trial``) does not pay for Optuna, pandas and scipy.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logging.getLogger(__name__).addHandler(logging.NullHandler())

_EXPORTS = {
    "SearchSpace": "space",
    "ParamSpec": "space",
    "load_space": "space",
    "space_from_dict": "space",
    "check_objectives": "objectives",
    "parse_objective": "objectives",
    "Objective": "objectives",
    "efficiency_acc_per_kj": "objectives",
    "make_sampler": "samplers",
    "mask_url": "storage",
    "open_storage": "storage",
    "load_study": "study",
    "open_study": "study",
    "trials_frame": "study",
    "count_trials": "study",
    "run_sweep": "runner",
    "SweepResult": "runner",
    "Analysis": "analysis",
    "analyze": "analysis",
    "pareto_front": "relevance",
    "kruskal_effect": "relevance",
    "final_training": "final",
    "FinalResult": "final",
    "quantize_model": "quantize",
    "quantize_run": "quantize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgetrain.sweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgetrain.sweep.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
