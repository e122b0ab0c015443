"""Reports of runs and sweeps whose task is not classification: names, directions, no accuracy.

Runs written before tasks (no ``task`` in summary.json) are the other tests' fixtures and
keep their accuracy; here a regression run follows the contract of
:func:`edgetrain.contract.metrics_columns`, and a sweep is ranked by ``val_rmse``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pandas as pd
import pytest

from edgetrain.contract import metrics_columns
from edgetrain.report import (
    compare_runs,
    load_run,
    load_sweep,
    make_report,
    run_totals,
    totals_table,
    training_curves,
)
from edgetrain.report import figures as fig
from edgetrain.report import sweep as sw
from edgetrain.report.labels import axis_label, is_accuracy, is_performance, pretty_name

ACCURACY = re.compile(r"accuracy|(?<![a-z])acc(?![a-z])", re.IGNORECASE)
RMSE = [0.9, 0.7, 0.75, 0.72]  # best (lowest) at epoch 2
REGRESSION_TASK = {
    "name": "regression",
    "best_metric": "val_rmse",
    "best_mode": "min",
    "metrics": {
        "train_loss": "min",
        "val_loss": "min",
        "val_mae": "min",
        "val_rmse": "min",
        "val_r2": "max",
    },
}


def write_regression_run(path: Path, *, summary: bool = True) -> Path:
    """A regression run of 4 epochs: val_rmse lowest at epoch 2, test metrics recorded."""
    path.mkdir(parents=True)
    header = list(metrics_columns((), ("mae", "rmse", "r2")))
    rows = []
    for epoch, rmse in enumerate(RMSE, start=1):
        values: dict[str, Any] = {
            "epoch": epoch,
            "time_s": 1.0 + 0.1 * epoch,
            "train_loss": 1.0 / epoch,
            "val_loss": rmse**2,
            "val_mae": 0.8 * rmse,
            "val_rmse": rmse,
            "val_r2": 1.0 - rmse,
            "lr": 0.01,
            "batch_size": 32,
            "micro_batch_size": 32,
            "accum_steps": 1,
            "samples_per_s": 1000.0 + epoch,
            "energy_j": 10.0 * epoch,
            "energy_source": "estimated:cpu-tdp",
            "avg_power_w": 15.0,
            "peak_rss_bytes": 2**29 + epoch,
        }
        rows.append([values.get(c, "") for c in header])
    with (path / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    (path / "config.yaml").write_text("data: diabetes\nmodel: mlp\nepochs: 4\n")
    if summary:
        data = {
            "status": "completed",
            "epochs_completed": 4,
            "total_time_s": 5.0,
            "total_energy_j": 100.0,
            "energy_source": "estimated:cpu-tdp",
            "best": {"epoch": 2, "val_rmse": 0.7, "val_mae": 0.56},
            "final": {"epoch": 4, "val_rmse": 0.72, "val_mae": 0.576, "val_r2": 0.28},
            "task": REGRESSION_TASK,
            "test": {"test_loss": 0.5, "test_mae": 0.55, "test_rmse": 0.71, "test_r2": 0.3},
        }
        (path / "summary.json").write_text(json.dumps(data))
    return path


def test_labels_name_any_metric() -> None:
    assert pretty_name("val_rmse") == "val RMSE"
    assert pretty_name("best_val_rmse") == "best val RMSE"
    assert pretty_name("test_perplexity") == "test perplexity"
    assert pretty_name("val_token_acc") == "val token accuracy"
    assert pretty_name("val_r2") == "val R²"
    assert pretty_name("train_time_s") == "train time"  # a unit, not a metric
    assert axis_label("val_rmse", [0.7]) == (1.0, "val RMSE")  # no fraction, no percent
    assert axis_label("val_perplexity", [22.0]) == (1.0, "val perplexity")
    assert axis_label("val_token_acc", [0.3])[1] == "val token accuracy (fraction)"
    assert axis_label("test_acc", [93.0])[1] == "test accuracy (%)"
    assert is_accuracy("best_val_acc") and is_accuracy("test_token_acc")
    assert not is_accuracy("val_rmse") and not is_accuracy("accum_steps")
    assert is_performance("val_r2") and is_performance("val_loss")
    assert not is_performance("accum_steps") and not is_performance("mean_cpu_pct")


def test_regression_totals_and_curves(tmp_path: Path) -> None:
    run = load_run(write_regression_run(tmp_path / "reg"))
    assert run.best_metric == ("val_rmse", "min")
    assert "val_acc" not in run.metrics.columns and "train_acc" not in run.metrics.columns
    totals = run_totals(run)
    assert totals["best_val_rmse"] == 0.7 and totals["best_epoch"] == 2
    assert totals["final_val_rmse"] == 0.72 and totals["final_val_mae"] == 0.576
    assert totals["test_rmse"] == 0.71 and totals["test_loss"] == 0.5
    assert not [k for k in totals if ACCURACY.search(k)]
    table = totals_table(run).set_index("quantity")["text"]
    assert table["best val RMSE (lowest)"] == "0.7"
    assert table["test RMSE"] == "0.71" and table["final val R²"] == "0.28"
    quantities = list(table.index)
    assert quantities.index("test RMSE") < quantities.index("test loss")  # the metric first
    curves = training_curves(run)
    assert list(curves.columns) == [
        "epoch",
        "train_loss",
        "val_loss",
        "val_mae",
        "val_rmse",
        "val_r2",
        "lr",
    ]
    figure = fig.training_curves_figure(curves, "reg")
    labels = [ax.get_ylabel() for ax in figure.axes if ax.get_visible()]
    assert labels == ["loss", "MAE", "RMSE", "R²"]


def test_best_of_a_run_without_summary_follows_the_direction(tmp_path: Path) -> None:
    path = write_regression_run(tmp_path / "reg", summary=False)
    (path / "summary.json").write_text(json.dumps({"task": REGRESSION_TASK}))
    totals = run_totals(load_run(path))
    assert totals["best_val_rmse"] == 0.7 and totals["best_epoch"] == 2  # the lowest, from CSV
    assert totals["final_val_rmse"] == 0.72


def test_regression_run_report_and_comparison(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_regression_run(tmp_path / "runs" / name)
    out = make_report(tmp_path / "runs" / "a")
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    cells = [
        str(cell)
        for sheet in workbook.worksheets
        for row in sheet.iter_rows(values_only=True)
        for cell in row
        if cell is not None
    ]
    assert "best val RMSE (lowest)" in cells
    assert not [c for c in cells if ACCURACY.search(c)]
    comparison = compare_runs([tmp_path / "runs" / "a", tmp_path / "runs" / "b"])
    totals = pd.read_excel(comparison / "report.xlsx", sheet_name="totals")
    assert "best_val_rmse" in totals.columns and "best_val_acc" not in totals.columns
    curves = pd.read_excel(comparison / "report.xlsx", sheet_name="curves")
    assert {"val_rmse", "val_mae", "val_r2"} <= set(curves.columns)


def regression_sweep(path: Path, source: Path) -> Path:
    """The classification sweep fixture turned into one ranked by val_rmse (min)."""
    import shutil

    shutil.copytree(source, path)
    analysis = path / "analysis"
    shutil.rmtree(path / "report", ignore_errors=True)
    drop = ["val_acc", "efficiency_acc_per_kj", "quantized_val_acc"]
    for name in ("trials", "top_energy", "pareto"):
        table = pd.read_csv(analysis / f"{name}.csv")
        table.insert(table.columns.get_loc("val_acc"), "val_rmse", 1.0 - table["val_acc"])
        table.drop(columns=drop).to_csv(analysis / f"{name}.csv", index=False)
    top = pd.read_csv(analysis / "top_accuracy.csv")
    top.insert(top.columns.get_loc("val_acc"), "val_rmse", 1.0 - top["val_acc"])
    top.drop(columns=drop).to_csv(analysis / "top_val_rmse.csv", index=False)
    for name in ("top_accuracy", "top_efficiency"):
        (analysis / f"{name}.csv").unlink()
    importance = pd.read_csv(analysis / "importance.csv")
    importance["target"] = importance["target"].replace({"accuracy": "val_rmse"})
    importance.to_csv(analysis / "importance.csv", index=False)
    best = pd.read_csv(analysis / "best_values.csv")
    best = best.rename(columns={"best_for_accuracy": "best_for_val_rmse"})
    best.drop(columns=["best_for_efficiency"]).to_csv(analysis / "best_values.csv", index=False)
    summary = json.loads((analysis / "summary.json").read_text())
    for key in ("best_accuracy_trial", "best_efficiency_trial", "top_accuracy_driver"):
        summary.pop(key)
    summary.update(
        objectives=["val_rmse:min", "energy"],
        metric={
            "column": "val_rmse",
            "mode": "min",
            "target": "val_rmse",
            "table": "top_val_rmse",
            "efficiency": None,
        },
        best_val_rmse_trial=1,
        top_val_rmse_driver="opt",
    )
    (analysis / "summary.json").write_text(json.dumps(summary))
    return path


def test_sweep_report_ranked_by_rmse(tmp_path: Path, sweep_dir: Path) -> None:
    path = regression_sweep(tmp_path / "sweep", sweep_dir)
    sweep = load_sweep(path)
    assert (sweep.metric.column, sweep.metric.mode, sweep.metric.efficiency) == (
        "val_rmse",
        "min",
        None,
    )
    assert list(sw.top_titles(sweep.metric)) == ["top_val_rmse", "top_energy"]
    overview = dict(sw.sweep_overview(sweep).itertuples(index=False))
    assert overview["best val RMSE"].startswith("trial 1: val RMSE 0.1, energy 400 J (est.)")
    assert overview["top val RMSE driver"] == "opt"
    points = sw.pareto_points(sweep)
    assert list(points.columns[:2]) == ["number", "val_rmse"]
    effects = sw.parameter_effects(sweep)
    groups = sw.parameter_groups(effects)
    assert "val_rmse_mean" in groups.columns
    assert sw.best_trial(sweep)[0] == 5  # no efficiency: the knee
    out = make_report(path)
    names = {p.name for p in out.glob("*.png")}
    assert "sweep_val_rmse_by_parameter.png" in names
    assert not [n for n in names if ACCURACY.search(n)]
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    assert workbook.sheetnames[:5] == [
        "overview",
        "trials",
        "top_val_rmse",
        "top_energy",
        "pareto",
    ]
    cells = [
        str(cell)
        for sheet in workbook.worksheets
        for row in sheet.iter_rows(values_only=True)
        for cell in row
        if cell is not None
    ]
    assert not [c for c in cells if ACCURACY.search(c)]
    assert sw.sfig.pareto_figure(points, "toy", [], "val_rmse", "min") is None  # 5 trials
    more = pd.concat([points, points.assign(number=points["number"] + 10)], ignore_index=True)
    figure = sw.sfig.pareto_figure(more, "toy", [], "val_rmse", "min")
    assert figure.axes[0].get_ylabel() == "val RMSE (lower is better)"
    assert "n = 10, Spearman r" in figure.axes[0].get_title()
    assert np.isfinite(figure.axes[0].get_ylim()).all()


def test_older_analyses_rank_by_accuracy(sweep_dir: Path) -> None:
    sweep = load_sweep(sweep_dir)
    assert sweep.metric.is_accuracy and sweep.metric.table == "top_accuracy"
    assert sw.sweep_figure_names(sweep) == sw.SWEEP_FIGURES


@pytest.mark.parametrize("column", ["val_acc", "val_rmse"])
def test_totals_figure_of_any_metric(column: str) -> None:
    from edgetrain.report.compare_figures import totals_figure

    totals = pd.DataFrame(
        {"run": ["a", "b"], "total_energy_j": [10.0, 20.0], f"best_{column}": [0.7, 0.8]}
    )
    mode = "max" if column == "val_acc" else "min"
    figure = totals_figure(totals, "t", column, mode)
    label = figure.axes[-1].get_ylabel()
    assert label == ("best val accuracy (fraction)" if mode == "max" else "best val RMSE (lowest)")
