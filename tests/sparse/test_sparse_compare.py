"""sparse-compare: one command runs the grid and writes the table and the workbook."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from edgetrain.cli import main
from edgetrain.compare import parse_budgets, parse_schemes, summarize_runs
from edgetrain.errors import EdgeTrainError

CONFIG = {
    "model": "cnn",
    "model_args": {"channels": [4, 8]},
    "data": "digits",
    "epochs": 2,
    "batch_size": 32,
    "max_batches_per_epoch": 3,
    "monitor": {"enabled": False},
}


def run_cli(capsys, *args):
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sparse_compare_writes_table_and_workbook(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "cmp"
    args = ["sparse-compare", str(config), "--schemes", "velocity,static,full"]
    code, stdout, stderr = run_cli(
        capsys, *args, "--budgets", "0.6", "--seeds", "2", "--out", str(out)
    )
    assert code == 0, stderr
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6
    assert sorted(runs["seed"].unique().tolist()) == [0, 1]
    assert runs["test_acc"].between(0, 1).all()
    assert (runs["peak_train_bytes"] > 0).all() and (runs["step_time_s"] > 0).all()
    full = runs[runs["scheme"] == "full"]
    assert (full["trainable_frac"] == 1.0).all()
    assert (runs[runs["scheme"] != "full"]["trainable_frac"] <= 0.6).all()
    table = pd.read_csv(out / "results.csv")
    assert table["scheme"].tolist() == ["velocity", "static", "full"]
    assert {"test_acc_mean", "test_acc_std", "updated_params_mean", "peak_train_bytes_mean"} <= set(
        table.columns
    )
    sheets = pd.read_excel(out / "results.xlsx", sheet_name=None)
    assert set(sheets) == {"results", "runs"} and len(sheets["runs"]) == 6
    assert (out / "runs" / "velocity-b0.6-s1" / "sparse_update.csv").exists()
    assert "results.csv" in stdout


def test_bad_scheme_is_a_one_line_error(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    code, _, err = run_cli(capsys, "sparse-compare", str(config), "--schemes", "velocty")
    assert code == 2
    assert "did you mean 'velocity'" in err and len(err.strip().splitlines()) == 1


def test_parsers():
    assert parse_schemes("velocity, full") == ["velocity", "full"]
    assert parse_budgets("0.1,5000,300MiB") == [0.1, 5000, "300MiB"]
    with pytest.raises(EdgeTrainError, match="not a budget"):
        parse_budgets("2.5")


def test_summary_takes_mean_and_std_over_seeds():
    runs = pd.DataFrame(
        {
            "scheme": ["velocity", "velocity", "full"],
            "budget": [0.1, 0.1, None],
            "test_acc": [0.8, 0.9, 0.95],
            "best_val_acc": [0.8, 0.9, 0.95],
            "updated_params": [10, 12, 100],
            "trainable_frac": [0.1, 0.12, 1.0],
            "peak_train_bytes": [1, 3, 10],
            "step_time_s": [0.1, 0.3, 1.0],
            "train_time_s": [1.0, 1.0, 2.0],
        }
    )
    table = summarize_runs(runs)
    assert table["test_acc_mean"].tolist() == pytest.approx([0.85, 0.95])
    assert table["test_acc_std"].iloc[0] == pytest.approx(0.0707107, rel=1e-5)
    assert pd.isna(table["test_acc_std"].iloc[1])
