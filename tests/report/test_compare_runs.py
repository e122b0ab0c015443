"""Comparing runs side by side."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest
from matplotlib.figure import Figure

from edgetrain.errors import EdgeTrainError
from edgetrain.report import compare_runs, compare_totals, config_differences, load_run, make_report
from edgetrain.report.compare import ANSWER_HEADING, best_runs, run_labels


def test_compare_two_runs(make_run: Callable[..., Path], tmp_path: Path) -> None:
    gpu = make_run("gpu")
    cpu = make_run("cpu", epochs=4, gpu=False, adapt=False)
    out = compare_runs([gpu, cpu])
    assert out == tmp_path / "comparison"
    assert {p.name for p in out.glob("*.png")} == {
        "comparison_curves.png",
        "comparison_energy.png",
        "comparison_totals.png",
    }
    # 1 title page + 3 figures + 1 table page
    assert len(re.findall(rb"/Type\s*/Page\b", (out / "report.pdf").read_bytes())) == 5
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    assert workbook.sheetnames == ["best", "totals", "curves", "config_differences"]
    totals = list(workbook["totals"].iter_rows(values_only=True))
    assert [row[0] for row in totals[1:]] == ["gpu", "cpu"]


def test_totals_and_config_differences(full_run: Path, plain_run: Path) -> None:
    runs = [load_run(full_run), load_run(plain_run)]
    totals = compare_totals(runs, ["full", "plain"])
    assert totals["run"].tolist() == ["full", "plain"]
    assert totals["energy_source"].tolist() == ["measured:nvml", "estimated:cpu-tdp"]
    differences = config_differences(runs, ["full", "plain"])
    assert differences.to_dict("records") == [
        {"key": "adapt.enabled", "full": "true", "plain": "false"}
    ]


def test_duplicate_names_are_disambiguated() -> None:
    labels = run_labels([Path("a/run"), Path("b/run"), Path("c/other"), Path("x/a/run")])
    assert labels == ["a/run", "b/run", "other", "a/run (2)"]


def test_make_report_on_a_directory_of_runs(make_run: Callable[..., Path], tmp_path: Path) -> None:
    make_run("one", epochs=3, gpu=False, adapt=False)
    make_run("two", epochs=3, gpu=False, adapt=False)
    assert make_report(tmp_path) == tmp_path / "comparison"
    assert (tmp_path / "comparison" / "report.pdf").exists()


def test_compare_errors(full_run: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgeTrainError, match="at least 2"):
        compare_runs([full_run])
    with pytest.raises(EdgeTrainError, match="not a run directory"):
        compare_runs([full_run, tmp_path], out=tmp_path / "out")


def test_page_one_says_which_run_is_best(
    make_run: Callable[..., Path], pdf_pages_saved: list[Figure]
) -> None:
    gpu = make_run("gpu")  # 6 epochs, best val accuracy 0.97, 40 W: 2,640 J
    cpu = make_run("cpu", epochs=4, gpu=False, adapt=False)  # 0.73, 5 W for 43 s: 215 J
    runs = [load_run(gpu), load_run(cpu)]
    best = best_runs(compare_totals(runs, ["gpu", "cpu"]), "val_acc", "max")
    by = dict(zip(best["best_by"], best["run"], strict=True))
    assert by == {
        "best val accuracy": "gpu",
        "test accuracy": "gpu",  # a tie (0.8 both): the first run
        "lowest energy": "cpu",
        "shortest wall time": "cpu",
        "energy caution": "",  # measured against estimated
    }
    text = dict(zip(best["best_by"], best["text"], strict=True))
    assert text["best val accuracy"] == "gpu: 0.97 at epoch 6; then cpu 0.73 at epoch 4"
    assert text["lowest energy"] == "cpu: 215.0 J (est.); then gpu 2,640.0 J"
    compare_runs([gpu, cpu])
    first = [t.get_text() for t in pdf_pages_saved[0].texts]
    headings = [t.get_text() for t in pdf_pages_saved[0].texts if t.get_fontweight() == "bold"]
    assert headings[:3] == ["Comparison of 2 runs", ANSWER_HEADING, "Totals"]
    assert any(t.startswith("lowest energy") and "cpu: 215.0 J (est.)" in t for t in first)
    # the totals figure comes first among the figures, its best bars labelled
    totals = pdf_pages_saved[1]
    labels = [t.get_text() for ax in totals.axes for t in ax.texts]
    assert "best: 215" in labels and "best: 0.97" in labels
