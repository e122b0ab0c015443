"""``final_training``: retrain the configuration the analysis chose, then report its test
metrics (test accuracy for classification, test RMSE, MAE and R² for regression, ...).

This is the only step of a sweep that reads test data. The choice comes from the
study's own analysis (recomputed here and written to ``DIR/analysis/``), so the final
run always follows the tables it is reported with:

- ``knee``: the Pareto front's knee (default for metric + energy sweeps);
- ``metric`` (``accuracy`` for a sweep ranked by accuracy, or the metric's column such
  as ``val_rmse``) | ``energy`` | ``efficiency``: the best trial by that measure;
- ``per-parameter``: each parameter's best value (greenscreen's intent), for the
  study's objective (efficiency when it has two and the metric has one, else the metric).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.safefs import dumps_strict
from edgetrain.sweep.analysis import Analysis, analyze_study, write_analysis
from edgetrain.sweep.objectives import parse_objective
from edgetrain.sweep.space import encode_choice
from edgetrain.sweep.study import load_study

__all__ = ["PICKS", "FinalResult", "choose", "final_training"]

log = logging.getLogger(__name__)

PICKS = ("knee", "efficiency", "accuracy", "metric", "energy", "per-parameter")
FINAL_FILE = "final.json"


@dataclass
class FinalResult:
    """The final run and its report (``final.json`` in the run directory)."""

    run_dir: Path
    pick: str
    trial: int | None
    params: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)


def default_pick(objectives: tuple[str, ...]) -> str:
    """``knee`` for two objectives, else the single objective (``metric`` for a validation
    metric other than accuracy)."""
    if len(objectives) > 1:
        return "knee"
    objective = parse_objective(objectives[0])
    if objective.kind != "metric":
        return objective.name
    return "accuracy" if objective.target == "accuracy" else "metric"


def choose(analysis: Analysis, study: Any, pick: str) -> tuple[int | None, dict[str, Any]]:
    """The trial number (None for per-parameter) and the parameters ``pick`` selects.

    Raises:
        EdgeTrainError: an unknown pick, or no completed trial to choose from.
    """
    if pick not in PICKS and pick != analysis.metric.column:
        raise EdgeTrainError(
            f"--pick must be one of {list(PICKS)}, got {pick!r}{suggest(pick, PICKS)}"
        )
    space = analysis.space
    if pick == "per-parameter":
        if len(space.objectives) == 1:
            target = parse_objective(space.objectives[0]).target
        else:
            target = "efficiency" if "top_efficiency" in analysis.tables else "metric"
        best = analysis.best_values(target)
        missing = [n for n in space.params if n not in best]
        if missing:
            raise EdgeTrainError(
                f"no completed trial gives a best value for {', '.join(missing)}; "
                "run more trials or use --pick knee"
            )
        return None, {n: encode_choice(best[n]) for n in space.params}
    number = analysis.best_number(pick)
    if number is None:
        column = analysis.metric.column
        what = f"{column} and energy" if pick == "knee" else column if pick == "metric" else pick
        raise EdgeTrainError(
            f"no completed trial with {what} to pick from in study '{analysis.study_name}'"
        )
    return number, dict(study.trials[number].params)


def final_training(
    sweep_dir: str | Path | None,
    *,
    pick: str | None = None,
    epochs: int | None = 50,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> FinalResult:
    """Retrain the chosen configuration into ``DIR/final/`` and report its test metrics.

    Args:
        sweep_dir: the sweep directory (None for a database study; then ``out`` or
            ``./final-<study>``).
        pick: knee | metric (accuracy) | energy | efficiency | per-parameter (default:
            knee for two objectives, else the objective).
        epochs: epochs of the final run (None: the trial's own).
        storage: database URL for a study in a database.
        study_name: the study (default from DIR/sweep.json).
        out: the final run directory (default ``DIR/final``).
        overwrite: replace an existing final run.
        progress: show training progress.
    """
    from edgetrain.sweep.quantize import quantize_run
    from edgetrain.train import train

    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1
    ):
        raise EdgeTrainError(f"--epochs must be an integer >= 1, got {epochs!r}")
    directory = Path(sweep_dir) if sweep_dir is not None else None
    study, space = load_study(directory, storage=storage, study_name=study_name)
    pick = pick or default_pick(space.objectives)
    analysis = analyze_study(study, space)
    number, params = choose(analysis, study, pick)
    config, quantize = space.trial_config(params)
    if epochs is not None:
        config["epochs"] = epochs
    run_dir = (
        Path(out)
        if out is not None
        else (directory / "final" if directory is not None else Path(f"final-{study.study_name}"))
    )
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise EdgeTrainError(f"final run {run_dir} already exists; pass --overwrite to replace it")
    config["out"] = str(run_dir)
    if directory is not None:  # the tables the final run is reported with
        write_analysis(analysis, directory / "analysis")
    log.info("final training of %s (pick %s) into %s", number, pick, run_dir)
    fit = train(config, overwrite=overwrite, progress=progress)
    s = fit.summary
    test = {k: v for k, v in (s.get("test") or {}).items() if str(k).startswith("test_")}
    final = {k: v for k, v in (s.get("final") or {}).items() if str(k).startswith("val_")}
    metric = analysis.metric
    report: dict[str, Any] = {
        "study": study.study_name,
        "pick": pick,
        "trial": number,
        "params": {k: v for k, v in params.items()},
        "epochs": (s.get("epochs_completed")),
        "metric": metric.column,
        "metric_mode": metric.mode,
        **test,  # test_acc, test_loss for classification; test_rmse, ... for regression
        **final,  # the final epoch's validation metrics
        "energy_j": s.get("total_energy_j"),
        "energy_source": s.get("energy_source"),
        "avg_power_w": s.get("avg_power_w"),
        "time_s": s.get("total_time_s"),
        "status": s.get("status"),
        "knee_trial": analysis.knee_number,
        "quantized": None,
    }
    if number is not None:
        ua = study.trials[number].user_attrs
        report[f"trial_{metric.column}"] = ua.get(metric.column)
        report["trial_energy_j"] = ua.get("energy_j")
    if quantize and "test_acc" not in test:
        log.warning("the final run's task reports no accuracy: int8 accuracy left out")
    elif quantize:
        q = quantize_run(run_dir, split="test")
        report["quantized"] = {
            "test_acc": q.quantized_acc,
            "float_test_acc": q.float_acc,
            "quantized_bytes": q.quantized_bytes,
            "float_bytes": q.float_bytes,
            "quantized_layers": q.quantized_layers,
        }
    from edgetrain.train.rundir import atomic_write_text

    atomic_write_text(run_dir / FINAL_FILE, dumps_strict(report))
    return FinalResult(run_dir=run_dir, pick=pick, trial=number, params=params, report=report)
