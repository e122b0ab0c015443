"""Whole run reports: files written, PDF page count, workbook sheets, errors."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.report import make_report, plot_resources
from edgetrain.report import xlsx as xlsx_module
from edgetrain.report.textpages import Section, text_pages

SHEETS = [
    "key_figures",
    "totals",
    "metrics",
    "energy",
    "resources",
    "resource_summary",
    "controller",
    "decisions",
    "correlation",
    "strongest_pairs",
    "config",
    "environment",
]
# the figures of the synthetic runs with a controller (6 epochs: too few for correlations)
ALL_FIGURES = {
    "key_figures.png",
    "training_curves.png",
    "resources.png",
    "energy.png",
    "controller.png",
    "activation.png",
}


def pdf_pages(path: Path) -> int:
    """Page objects in a PDF written by matplotlib (their dictionaries are not compressed)."""
    return len(re.findall(rb"/Type\s*/Page\b", path.read_bytes()))


@pytest.fixture(scope="module")
def full_report(full_run: Path) -> Path:
    return make_report(full_run)


@pytest.fixture(scope="module")
def plain_report(plain_run: Path) -> Path:
    return make_report(plain_run)


@pytest.fixture(scope="module")
def interrupted_report(interrupted_run: Path) -> Path:
    return make_report(interrupted_run)


def test_full_report(full_run: Path, full_report: Path) -> None:
    assert full_report == full_run / "report"
    assert {p.name for p in full_report.glob("*.png")} == ALL_FIGURES
    # key figures + 5 figures + 2 landscape table pages + 1 appendix page
    assert pdf_pages(full_report / "report.pdf") == 9
    workbook = openpyxl.load_workbook(full_report / "report.xlsx", read_only=True)
    assert workbook.sheetnames == SHEETS
    rows = list(workbook["decisions"].iter_rows(values_only=True))
    assert len(rows) == 5 and rows[0][0] == "epoch"


def test_report_without_gpu_or_adaptation(plain_report: Path) -> None:
    # no controller nor activations; the learning rate is constant, so the learning curve
    # of page 1 shows every curve and there is no separate page of curves
    assert {p.name for p in plain_report.glob("*.png")} == ALL_FIGURES - {
        "controller.png",
        "activation.png",
        "training_curves.png",
    }
    # key figures + 2 figures + 1 table page + 1 appendix page
    assert pdf_pages(plain_report / "report.pdf") == 5
    workbook = openpyxl.load_workbook(plain_report / "report.xlsx", read_only=True)
    assert workbook.sheetnames == SHEETS
    resources_header = next(workbook["resources"].iter_rows(values_only=True))
    assert "gpu_util_pct" not in resources_header


def test_report_of_an_interrupted_run(interrupted_report: Path) -> None:
    assert {p.name for p in interrupted_report.glob("*.png")} == ALL_FIGURES
    # key figures + 5 figures + 2 table pages + 2 appendix pages (the notes on cut rows
    # push the configuration over)
    assert pdf_pages(interrupted_report / "report.pdf") == 10
    workbook = openpyxl.load_workbook(interrupted_report / "report.xlsx", read_only=True)
    totals = dict(row[:2] for row in workbook["totals"].iter_rows(values_only=True))
    assert totals["status"] == "interrupted"
    assert len(list(workbook["metrics"].iter_rows())) == 1 + 3


def test_report_of_a_run_that_never_finished_an_epoch(make_run: Callable[..., Path]) -> None:
    path = make_run("early", status="failed", adapt=False)
    (path / "metrics.csv").unlink()
    (path / "resources.csv").unlink()
    out = make_report(path)
    assert [p.name for p in out.glob("*.png")] == ["key_figures.png"]  # status, no curve
    assert pdf_pages(out / "report.pdf") == 2  # key figures + appendix; no empty tables


def test_missing_openpyxl_skips_only_the_workbook(
    make_run: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(xlsx_module, "xlsx_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        out = make_report(make_run("no-xlsx", epochs=2, gpu=False, adapt=False))
    assert (out / "report.pdf").exists()
    assert not (out / "report.xlsx").exists()
    assert 'pip install "edgetrain[xlsx]"' in caplog.text


def test_plot_resources(make_run: Callable[..., Path]) -> None:
    path = make_run("plot", epochs=2)
    png = plot_resources(path)
    assert png == path / "report" / "resources.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    (path / "resources.csv").unlink()
    with pytest.raises(EdgeTrainError, match="no resource samples"):
        plot_resources(path)


def test_long_config_continues_on_another_page() -> None:
    lines = [f"option_{i:03d}  {i}" for i in range(200)]
    pages = text_pages([Section("Configuration", lines)], "Training report: x")
    assert len(pages) >= 3
    continued = [t.get_text() for t in pages[1].texts]
    assert "Configuration (continued)" in continued
    assert "option_199  199" in [t.get_text() for t in pages[-1].texts]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(EdgeTrainError, match="does not exist"):
        make_report(tmp_path / "missing")
    with pytest.raises(EdgeTrainError) as error:
        make_report(tmp_path)
    message = str(error.value)
    assert "is not a run directory (no metrics.csv)" in message
    assert "\n" not in message
    for kind in ("run:", "sweep:", "bench:", "sparse-compare:", "compare:"):
        assert kind in message  # the known kinds are listed
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "space.yaml").write_text("lr: [0.1, 0.01]\n", encoding="utf-8")
    with pytest.raises(EdgeTrainError, match=r"run `edgetrain sweep analyze .*sweep` first"):
        make_report(sweep)


def test_long_resources_are_thinned_in_the_workbook(
    make_run: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgetrain.report import run_report

    monkeypatch.setattr(run_report, "MAX_SHEET_ROWS", 10)
    out = make_report(make_run("thin", epochs=2, gpu=False, adapt=False))
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    assert len(list(workbook["resources"].iter_rows())) == 1 + 10
    assert len(list(workbook["metrics"].iter_rows())) == 1 + 2
