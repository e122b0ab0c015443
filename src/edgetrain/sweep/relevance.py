"""Which parameters drive energy and the metric: Pareto front, fANOVA, Kruskal-Wallis.

Pure functions of a trials table (``trials_frame``), testable on synthetic studies.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "TARGETS",
    "GroupStats",
    "best_groups",
    "fanova_importances",
    "knee_index",
    "kruskal_effect",
    "pareto_front",
]

log = logging.getLogger(__name__)

#: target -> (column, "max" or "min") of a classification sweep (any sweep's:
#: ``Analysis.targets``)
TARGETS: dict[str, tuple[str, str]] = {
    "accuracy": ("val_acc", "max"),
    "energy": ("energy_j", "min"),
    "efficiency": ("efficiency_acc_per_kj", "max"),
}
_MAX_BINS = 4  # a numeric parameter with more distinct values is cut into quantile bins


def pareto_front(frame: pd.DataFrame, column: str = "val_acc", mode: str = "max") -> pd.DataFrame:
    """Rows of ``frame`` not dominated in (``mode`` ``column``, min ``energy_j``), by energy.

    Args:
        frame: trials with ``column`` and ``energy_j``.
        column: the metric (``val_acc``, ``val_rmse``).
        mode: ``max`` when higher is better, ``min`` when lower is.
    """
    ok = frame.dropna(subset=[column, "energy_j"])
    sign = 1.0 if mode == "max" else -1.0
    good = sign * ok[column].to_numpy(float)  # higher is better from here on
    energy = ok["energy_j"].to_numpy(float)
    keep = []
    for i in range(len(ok)):
        dominated = np.any(
            (good >= good[i]) & (energy <= energy[i]) & ((good > good[i]) | (energy < energy[i]))
        )
        keep.append(not dominated)
    front = ok[np.array(keep, dtype=bool)] if len(ok) else ok
    return front.sort_values(["energy_j", column], ascending=[True, mode != "max"])


def knee_index(front: pd.DataFrame, column: str = "val_acc", mode: str = "max") -> Any:
    """The front's knee: closest to the ideal point (best metric at least energy).

    The metric and log10 energy are each scaled to [0, 1] over the front, so a 10x energy
    step weighs the same wherever it is.
    """
    if front.empty:
        return None
    good = (1.0 if mode == "max" else -1.0) * front[column].to_numpy(float)
    log_e = np.log10(np.maximum(front["energy_j"].to_numpy(float), 1e-12))

    def scale(x: np.ndarray) -> np.ndarray:
        span = x.max() - x.min()
        return (x - x.min()) / span if span > 0 else np.zeros_like(x)

    dist = np.hypot(1.0 - scale(good), scale(log_e))
    # ties (a two-point front) go to the better trial by the metric
    order = np.lexsort((-good, np.round(dist, 12)))
    return front.index[int(order[0])]


def _binned(values: pd.Series, kind: str) -> bool:
    """Whether a parameter's values are cut into bins: ranges with many distinct values."""
    if kind == "categorical" or not pd.api.types.is_numeric_dtype(values):
        return False
    return kind == "float" or values.nunique() > _MAX_BINS


def _groups(values: pd.Series, kind: str) -> tuple[pd.Series, dict[Any, str]]:
    """Group labels for a parameter's values: each value, or quantile bins of a range."""
    n_bins = min(_MAX_BINS, len(values) // 3, values.nunique())
    if not _binned(values, kind) or n_bins < 2:
        if _binned(values, kind):  # too few trials to bin a range: one group, no test
            labels = pd.Series("all", index=values.index)
            return labels, {"all": "all"}
        labels = values.astype(str)
        return labels, {lab: lab for lab in labels.unique()}
    codes = pd.qcut(values.rank(method="first"), n_bins, labels=False)
    names = {}
    for code in sorted(codes.unique()):
        inside = values[codes == code]
        names[code] = f"[{inside.min():.4g}, {inside.max():.4g}]"
    return codes, names


def kruskal_effect(
    values: pd.Series, target: pd.Series, kind: str = "categorical"
) -> dict[str, float]:
    """Kruskal-Wallis H test of ``target`` across the groups of ``values``, with effect sizes.

    Groups are the parameter's values; a numeric range (``kind`` int or float) with more
    than four distinct values is cut into up to four quantile bins.

    Returns:
        ``kruskal_h``, ``kruskal_p``, ``epsilon_sq`` (H / (n - 1), Tomczak & Tomczak 2014),
        ``eta_sq_h`` ((H - k + 1) / (n - k)), ``n_groups`` and ``n_trials``.
    """
    from scipy.stats import kruskal

    ok = target.notna() & values.notna()
    values, target = values[ok], target[ok].astype(float)
    out = {
        "kruskal_h": math.nan,
        "kruskal_p": math.nan,
        "epsilon_sq": math.nan,
        "eta_sq_h": math.nan,
        "n_groups": 0,
        "n_trials": len(target),
    }
    if len(target) < 3:
        return out
    codes, _ = _groups(values, kind)
    samples = [target[codes == c].to_numpy() for c in codes.unique()]
    samples = [s for s in samples if len(s)]
    k, n = len(samples), len(target)
    out["n_groups"] = k
    if k < 2 or np.ptp(target.to_numpy()) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h, p = kruskal(*samples)
    out.update(kruskal_h=float(h), kruskal_p=float(p), epsilon_sq=float(h) / (n - 1))
    if n > k:
        out["eta_sq_h"] = (float(h) - k + 1) / (n - k)
    return out


@dataclass(frozen=True)
class GroupStats:
    """The best group of a parameter for one target."""

    label: str
    value: Any
    mean: float
    n: int


def best_groups(
    values: pd.Series, target: pd.Series, goal: str, kind: str = "categorical"
) -> GroupStats | None:
    """The parameter group with the best mean target (``goal``: max or min).

    For a binned numeric parameter, ``value`` is the median value inside the best bin.
    """
    ok = target.notna() & values.notna()
    values, target = values[ok], target[ok].astype(float)
    if target.empty:
        return None
    codes, names = _groups(values, kind)
    means = target.groupby(codes).mean()
    best = means.idxmax() if goal == "max" else means.idxmin()
    inside = values[codes == best]
    if _binned(values, kind):
        value: Any = float(inside.median())
        if kind == "int":
            value = round(value)
    else:
        value = inside.iloc[0]
        value = value.item() if hasattr(value, "item") else value  # numpy scalar -> Python
    return GroupStats(names[best], value, float(means[best]), int((codes == best).sum()))


def fanova_importances(
    trials: Sequence[Any],
    distributions: Mapping[str, Any],
    target: Sequence[float],
    seed: int,
) -> dict[str, float]:
    """fANOVA importance (normalised to sum 1) of each parameter for one target.

    Args:
        trials: finished Optuna trials (their params), aligned with ``target``.
        distributions: the space's distributions.
        target: the value to explain for each trial.
        seed: seed of the evaluator's random forest (pinned: results are reproducible).
    """
    from edgetrain.sweep._optuna import optuna

    rows = [
        (t, y) for t, y in zip(trials, target, strict=True) if y is not None and math.isfinite(y)
    ]
    names = [n for n, d in distributions.items() if not d.single()]
    if len(rows) < 2 or not names:
        return {n: math.nan for n in distributions}
    study = optuna.create_study(direction="minimize", storage=optuna.storages.InMemoryStorage())
    study.add_trials(
        optuna.trial.create_trial(
            params={n: t.params[n] for n in names if n in t.params},
            distributions={n: distributions[n] for n in names if n in t.params},
            value=float(y),
        )
        for t, y in rows
    )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = optuna.importance.get_param_importances(
                study, evaluator=evaluator, params=names, normalize=True
            )
    except (RuntimeError, ValueError) as exc:
        log.warning("fANOVA importance could not be computed: %s", exc)
        return {n: math.nan for n in distributions}
    return {n: float(result.get(n, 0.0 if n in names else math.nan)) for n in distributions}
