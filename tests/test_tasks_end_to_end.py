"""Every task end to end: train, then report; a sweep that minimises a regression metric.

The reports' text is what the PDF pages draw (every visible text of every page, tick
labels included, captured as the pages are saved), the workbook's cells and sheet names,
and the PNG file names: a regression report must not say "accuracy" anywhere, a language
model's names its perplexity and only its token accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.text import Text

from edgetrain.report import make_report
from edgetrain.train import train

SMALL = {"epochs": 2, "max_batches_per_epoch": 3, "batch_size": 32}
CLASSIFICATION = {"data": "digits", "model": "mlp", "model_args": {"hidden": [16]}}
REGRESSION = {"data": "diabetes", "model": "mlp", "model_args": {"hidden": [16]}}
LANGUAGE_MODEL = {
    "data": "pycorpus",
    "data_args": {"max_bytes": 100_000, "seq_len": 32},
    "model": "gpt",
    "model_args": {"d_model": 32, "n_layers": 1, "n_heads": 2},
    "optimizer": "adam",
    "lr": 0.003,
}
# "acc" as a word or a column's last part (val_acc, acc/kJ), not inside "accum_steps"
ACCURACY = re.compile(r"accuracy|(?<![a-z])acc(?![a-z])", re.IGNORECASE)
OTHER_THAN_TOKEN_ACCURACY = re.compile(
    r"(?<!token )accuracy|(?<![a-z_])acc(?![a-z])|(?<!token)_acc(?![a-z])", re.IGNORECASE
)


@pytest.fixture
def page_texts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every visible text of every PDF page saved while the test runs."""
    texts: list[str] = []
    save = PdfPages.savefig

    def savefig(self: PdfPages, figure: Any = None, **kwargs: Any) -> None:
        save(self, figure, **kwargs)  # drawn: tick labels exist now
        texts.extend(t.get_text() for t in figure.findobj(Text) if t.get_visible())

    monkeypatch.setattr(PdfPages, "savefig", savefig)
    yield texts


def report_text(out: Path, pages: list[str]) -> str:
    """The PDF pages' texts, the workbook's sheet names and cells, and the PNG names."""
    parts = list(pages)
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    for sheet in workbook.worksheets:
        parts.append(sheet.title)
        for row in sheet.iter_rows(values_only=True):
            parts += [str(cell) for cell in row if cell is not None]
    parts += [p.name for p in out.glob("*.png")]
    return "\n".join(parts)


def run(tmp_path: Path, name: str, task: dict[str, Any], monitor: bool = True) -> Path:
    config = {
        **task,
        **SMALL,
        "monitor": {"enabled": monitor, "interval_s": 0.1},
        "out": str(tmp_path / name),
    }
    return train(config, progress=False).run_dir


def test_classification_report_keeps_its_accuracy(tmp_path: Path, page_texts: list[str]) -> None:
    out = make_report(run(tmp_path, "cls", CLASSIFICATION, monitor=False))
    assert (out / "report.pdf").stat().st_size > 0
    text = report_text(out, page_texts)
    for expected in ("best val accuracy", "test accuracy", "val accuracy", "accuracy (fraction)"):
        assert expected in text


def test_regression_report_says_nothing_of_accuracy(tmp_path: Path, page_texts: list[str]) -> None:
    path = run(tmp_path, "reg", REGRESSION)
    out = make_report(path)
    assert (out / "report.pdf").stat().st_size > 0
    text = report_text(out, page_texts)
    assert not ACCURACY.findall(text), sorted(set(ACCURACY.findall(text)))
    for expected in ("best val RMSE (lowest)", "test RMSE", "val MAE", "val R²", "RMSE"):
        assert expected in text, expected
    totals = pd.read_excel(out / "report.xlsx", sheet_name="totals").set_index("quantity")
    metrics = pd.read_csv(path / "metrics.csv")
    assert totals.loc["best val RMSE (lowest)", "value"] == pytest.approx(metrics["val_rmse"].min())


def test_language_model_report_shows_perplexity(tmp_path: Path, page_texts: list[str]) -> None:
    out = make_report(run(tmp_path, "lm", LANGUAGE_MODEL, monitor=False))
    assert (out / "report.pdf").stat().st_size > 0
    text = report_text(out, page_texts)
    assert "val perplexity" in text and "test perplexity" in text
    assert "best val loss (lowest)" in text  # the task decides by the validation loss
    found = OTHER_THAN_TOKEN_ACCURACY.findall(text)
    assert not found, sorted(set(found))  # only "token accuracy", never plain accuracy


def test_comparison_of_regression_runs(tmp_path: Path, page_texts: list[str]) -> None:
    for name in ("a", "b"):
        run(tmp_path / "runs", name, REGRESSION, monitor=False)
    out = make_report(tmp_path / "runs")
    assert out == tmp_path / "runs" / "comparison" and (out / "report.pdf").exists()
    text = report_text(out, page_texts)
    assert not ACCURACY.findall(text), sorted(set(ACCURACY.findall(text)))
    assert "Comparison: val RMSE and loss per epoch" in text


@pytest.mark.slow
@pytest.mark.keep
def test_sweep_minimising_val_rmse(tmp_path: Path, page_texts: list[str]) -> None:
    from edgetrain.sweep.analysis import analyze
    from edgetrain.sweep.final import final_training
    from edgetrain.sweep.runner import run_sweep
    from edgetrain.sweep.space import load_space

    space = load_space(
        {
            "base": {**REGRESSION, **SMALL, "monitor": {"interval_s": 0.1}},
            "params": {"lr": {"low": 0.001, "high": 0.1, "log": True}},
            "objectives": ["val_rmse:min", "energy"],
        }
    )
    assert space.objectives == ("val_rmse:min", "energy")
    sweep = tmp_path / "sw"
    result = run_sweep(space, 3, out=sweep, progress=False)
    assert result.counts.complete == 3
    assert (sweep / "study.journal").exists()

    analysis = analyze(sweep)
    assert (analysis.metric.column, analysis.metric.mode) == ("val_rmse", "min")
    top = analysis.tables["top_val_rmse"]
    assert top["val_rmse"].is_monotonic_increasing and len(top) == 3
    assert analysis.summary["best_val_rmse_trial"] == int(top["number"].iloc[0])
    assert "top_accuracy" not in analysis.tables and "top_efficiency" not in analysis.tables
    trials = pd.read_csv(sweep / "analysis" / "trials.csv")
    assert {"val_rmse", "val_mae", "val_r2"} <= set(trials.columns)
    assert not [c for c in trials.columns if ACCURACY.search(c)]
    front = analysis.tables["pareto"]
    assert front["energy_j"].is_monotonic_increasing
    assert front["val_rmse"].is_monotonic_decreasing  # more energy buys a lower RMSE

    out = make_report(sweep)
    text = report_text(out, page_texts)
    assert not ACCURACY.findall(text), sorted(set(ACCURACY.findall(text)))
    assert "Top 3 trials: lowest val RMSE" in text
    assert (out / "sweep_val_rmse_by_parameter.png").exists()

    final = final_training(sweep, pick="metric", epochs=1, progress=False)
    assert final.trial == int(top["number"].iloc[0])
    assert {"test_rmse", "test_mae", "test_r2", "test_loss"} <= set(final.report)
    assert not [k for k in final.report if ACCURACY.search(k)]
