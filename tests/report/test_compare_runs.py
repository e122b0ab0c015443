"""Comparing runs side by side."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.report import compare_runs, compare_totals, config_differences, load_run, make_report
from edgetrain.report.compare import run_labels


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
    assert workbook.sheetnames == ["totals", "curves", "config_differences"]
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
