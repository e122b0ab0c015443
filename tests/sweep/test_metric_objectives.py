"""Objectives on any validation metric: parsing, defaults per task, trial metrics, analysis."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import create_trial

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep.analysis import analyze_study
from edgetrain.sweep.final import choose, default_pick
from edgetrain.sweep.objectives import (
    DATA_TASKS,
    TASK_METRICS,
    check_objectives,
    directions,
    objective_values,
    parse_objective,
    resolve_objectives,
    sweep_metric,
)
from edgetrain.sweep.relevance import knee_index, pareto_front
from edgetrain.sweep.space import load_space
from edgetrain.sweep.study import TRIAL_COLUMNS, trial_columns
from edgetrain.sweep.trial import trial_metrics

optuna.logging.set_verbosity(optuna.logging.WARNING)

REGRESSION_BASE = {
    "model": "mlp",
    "model_args": {"hidden": [16]},
    "data": "diabetes",
    "epochs": 1,
    "batch_size": 32,
    "max_batches_per_epoch": 2,
    "monitor": {"interval_s": 0.1},
}
REGRESSION_SUMMARY = {
    "final": {"val_loss": 0.46, "val_mae": 0.55, "val_rmse": 0.68, "val_r2": 0.61},
    "best": {"epoch": 3, "val_rmse": 0.66},
    "task": {
        "name": "regression",
        "best_metric": "val_rmse",
        "best_mode": "min",
        "metrics": {"val_loss": "min", "val_mae": "min", "val_rmse": "min", "val_r2": "max"},
    },
    "total_energy_j": 5.0,
}


def test_metric_objectives_are_parsed_with_their_direction():
    rmse = parse_objective("val_rmse:min")
    assert (rmse.name, rmse.column, rmse.mode, rmse.direction) == (
        "val_rmse:min",
        "val_rmse",
        "min",
        "minimize",
    )
    assert rmse.target == "val_rmse" and rmse.kind == "metric"
    assert parse_objective("val_rmse") == rmse  # a built-in metric's direction is known
    assert parse_objective("rmse:minimize") == rmse
    assert parse_objective("val_r2:max").direction == "maximize"
    assert parse_objective("val_acc:max").name == "accuracy"  # the same study as before
    assert parse_objective("accuracy").target == "accuracy"
    assert check_objectives(["energy", "val_rmse:min"]) == ("val_rmse:min", "energy")
    assert directions(("val_rmse:min", "energy")) == ["minimize", "minimize"]
    assert directions(("accuracy", "energy")) == ["maximize", "minimize"]
    with pytest.raises(EdgeTrainError, match=r"give the direction of 'val_f1'"):
        parse_objective("val_f1")
    assert parse_objective("val_f1:max").mode == "max"
    with pytest.raises(EdgeTrainError, match="must end in :max or :min"):
        parse_objective("val_rmse:down")
    with pytest.raises(EdgeTrainError, match="reads test data"):
        parse_objective("test_rmse:min")
    with pytest.raises(EdgeTrainError, match="objectives must be one of"):
        check_objectives(["val_rmse:min", "accuracy"])  # one metric per study


def test_default_objectives_follow_the_task(make_space, tiny_base):
    assert resolve_objectives(None, tiny_base) == ("accuracy", "energy")  # unchanged
    assert resolve_objectives(None, REGRESSION_BASE) == ("val_rmse:min", "energy")
    lm = {"data": "pycorpus", "model": "gpt"}
    assert resolve_objectives(None, lm) == ("val_loss:min", "energy")
    assert resolve_objectives(None, {**tiny_base, "task": "regression"})[0] == "val_rmse:min"
    assert resolve_objectives(["metric"], REGRESSION_BASE) == ("val_rmse:min",)
    space = load_space(make_space(base=REGRESSION_BASE))
    assert space.objectives == ("val_rmse:min", "energy")
    assert load_space(space.to_dict()) == space
    with pytest.raises(EdgeTrainError, match="reports no accuracy"):
        load_space(make_space(base=REGRESSION_BASE, objectives=["efficiency"]))


def test_the_tables_of_tasks_match_the_tasks_and_data_sets():
    from edgetrain.tasks import TASKS

    for name, task in TASKS.items():
        assert TASK_METRICS[name] == (task.best_metric, task.best_mode), name
    from edgetrain.zoo import load_dataset

    _, info = load_dataset("diabetes")
    assert DATA_TASKS["diabetes"] == info.task
    _, info = load_dataset("pycorpus", max_bytes=20_000, seq_len=16)
    assert DATA_TASKS["pycorpus"] == info.task


def test_trial_metrics_of_a_regression_run_have_no_accuracy():
    metrics = trial_metrics(REGRESSION_SUMMARY)
    assert metrics["val_rmse"] == 0.68 and metrics["best_val_rmse"] == 0.66
    assert (metrics["best_metric"], metrics["best_mode"], metrics["task"]) == (
        "val_rmse",
        "min",
        "regression",
    )
    assert metrics["metric_modes"]["val_r2"] == "max"
    assert not [k for k in metrics if "acc" in k.split("_")]
    assert objective_values(metrics, ("val_rmse:min", "energy")) == [0.68, 5.0]
    with pytest.raises(EdgeTrainError, match=r"needs val_acc, which the run did not record"):
        objective_values(metrics, ("accuracy", "energy"))
    try:
        objective_values(metrics, ("accuracy",))
    except EdgeTrainError as exc:
        assert "val_mae, val_r2, val_rmse" in str(exc)
        assert "[val_rmse:min, energy]" in str(exc)


def test_pareto_front_and_knee_when_lower_is_better():
    frame = pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4],
            "val_rmse": [0.5, 0.6, 0.55, 0.7, 0.9],
            "energy_j": [100.0, 50.0, 120.0, 60.0, 10.0],
        }
    )
    front = pareto_front(frame, "val_rmse", "min")
    assert front["number"].tolist() == [4, 1, 0]
    assert front.loc[knee_index(front, "val_rmse", "min"), "number"] == 1


def _regression_study(space, n=12, seed=0):
    """lr drives RMSE (larger lr, lower RMSE); batch size drives energy."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=["minimize", "minimize"])
    dists = space.distributions()
    for _ in range(n):
        params = {
            "lr": float(10 ** rng.uniform(-3, -1)),
            "batch_size": int(rng.choice([16, 32])),
        }
        rmse = 1.0 - 0.2 * (math.log10(params["lr"]) + 3) + 0.01 * rng.standard_normal()
        energy = (200.0 if params["batch_size"] == 16 else 50.0) * (1 + 0.1 * rng.random())
        summary = {
            **REGRESSION_SUMMARY,
            "final": {**REGRESSION_SUMMARY["final"], "val_rmse": rmse},
            "total_energy_j": energy,
        }
        attrs = {k: v for k, v in trial_metrics(summary).items() if v is not None}
        study.add_trial(
            create_trial(
                params=params, distributions=dists, values=[rmse, energy], user_attrs=attrs
            )
        )
    return study


def test_analysis_ranks_by_the_metric_in_its_direction(make_space):
    space = load_space(make_space(base=REGRESSION_BASE))
    analysis = analyze_study(_regression_study(space), space, top_k=5)
    t = analysis.tables
    assert list(t) == [
        "trials",
        "top_val_rmse",
        "top_energy",
        "pareto",
        "importance",
        "best_values",
    ]
    assert t["top_val_rmse"]["val_rmse"].is_monotonic_increasing
    assert t["top_val_rmse"]["val_rmse"].iloc[0] == t["trials"]["val_rmse"].min()
    columns = list(t["trials"].columns)
    assert columns[4:8] == ["val_rmse", "val_loss", "val_mae", "val_r2"]
    assert not [c for c in columns if "acc" in c.split("_")]
    assert set(t["importance"]["target"]) == {"val_rmse", "energy"}
    assert list(t["best_values"].columns) == ["parameter", "best_for_val_rmse", "best_for_energy"]
    assert analysis.summary["metric"] == {
        "column": "val_rmse",
        "mode": "min",
        "target": "val_rmse",
        "table": "top_val_rmse",
        "efficiency": None,
    }
    assert analysis.summary["top_val_rmse_driver"] == "lr"
    assert analysis.summary["top_energy_driver"] == "batch_size"
    front = t["pareto"]
    assert front["energy_j"].is_monotonic_increasing and front["val_rmse"].is_monotonic_decreasing
    # picks: the metric by name or column; accuracy is refused with what to pick instead
    assert default_pick(space.objectives) == "knee"
    assert default_pick(("val_rmse:min",)) == "metric"
    best = int(t["top_val_rmse"]["number"].iloc[0])
    assert analysis.best_number("metric") == analysis.best_number("val_rmse") == best
    with pytest.raises(EdgeTrainError, match=r"ranks by val_rmse .* pick from knee, metric"):
        analysis.best_number("accuracy")
    number, _ = choose(analysis, None, "per-parameter")
    assert number is None


def test_trial_columns_keep_the_classification_layout():
    accuracy = parse_objective("accuracy")
    assert trial_columns(accuracy) == list(TRIAL_COLUMNS)
    rmse = parse_objective("val_rmse:min")
    columns = trial_columns(rmse)
    assert "val_acc" not in columns and "efficiency_acc_per_kj" not in columns
    assert columns[4] == "val_rmse"
    r2 = trial_columns(parse_objective("val_r2:max"))
    assert "efficiency_r2_per_kj" in r2  # a metric where higher is better has a per-kJ value


def test_sweep_metric_for_energy_only_studies_comes_from_the_trials():
    assert sweep_metric(("energy",), REGRESSION_BASE).column == "val_rmse"
    recorded = [("val_loss", "min"), ("val_loss", "min")]
    assert sweep_metric(("energy",), {"data": "x.y:load"}, recorded).column == "val_loss"
    assert sweep_metric(("efficiency",)).column == "val_acc"
