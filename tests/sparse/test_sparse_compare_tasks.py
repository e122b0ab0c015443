"""sparse-compare on a task without accuracy: the table and its report use the task's metric."""

from __future__ import annotations

import openpyxl
import pandas as pd
import pytest

from edgetrain.compare import result_metrics, sparse_compare, summarize_runs
from edgetrain.report import load_sparse_compare, make_report

REGRESSION = {
    "model": "mlp",
    "model_args": {"hidden": [16]},
    "data": "diabetes",
    "epochs": 2,
    "batch_size": 32,
    "max_batches_per_epoch": 3,
    "monitor": {"enabled": False},
}


def test_result_metrics_follow_the_runs_columns():
    classification = ["scheme", "best_val_acc", "test_acc", "final_test_acc", "updated_params"]
    assert result_metrics(classification)[:3] == ["test_acc", "best_val_acc", "updated_params"]
    regression = ["scheme", "best_val_rmse", "test_rmse", "final_test_rmse"]
    assert result_metrics(regression)[:2] == ["test_rmse", "best_val_rmse"]
    runs = pd.DataFrame(
        {
            "scheme": ["full", "full"],
            "budget": [None, None],
            "best_val_rmse": [0.7, 0.9],
            "test_rmse": [0.6, 0.8],
        }
    )
    table = summarize_runs(runs)
    assert table["test_rmse_mean"].tolist() == pytest.approx([0.7])
    assert "test_acc_mean" not in table.columns


def test_regression_comparison_reports_test_rmse(tmp_path):
    out = tmp_path / "cmp"
    result = sparse_compare(
        REGRESSION, schemes=["velocity", "full"], budgets=[0.5], seeds=1, out=out
    )
    runs = result.runs
    assert {"test_rmse", "best_val_rmse", "final_test_rmse"} <= set(runs.columns)
    assert not [c for c in runs.columns if "acc" in c.split("_")]
    assert (runs["test_rmse"] > 0).all()
    history = pd.read_csv(out / "runs" / "full-s0" / "metrics.csv")
    best = history["val_rmse"].idxmin()  # the best epoch is the lowest RMSE
    assert runs.loc[runs["scheme"] == "full", "best_epoch"].iloc[0] == best + 1
    assert {"test_rmse_mean", "best_val_rmse_mean"} <= set(result.table.columns)

    compare = load_sparse_compare(out)
    assert (compare.metric.test, compare.metric.mode) == ("test_rmse", "min")
    report = make_report(out)
    assert {p.name for p in report.glob("*.png")} == {"sparse_test_rmse.png", "sparse_costs.png"}
    workbook = openpyxl.load_workbook(report / "report.xlsx", read_only=True)
    cells = [
        str(cell)
        for sheet in workbook.worksheets
        for row in sheet.iter_rows(values_only=True)
        for cell in row
        if cell is not None
    ]
    assert "test RMSE" in cells
    assert not [c for c in cells if "accuracy" in c or "test_acc" in c]
