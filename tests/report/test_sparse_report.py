"""The sparse-update comparison report: budgets, means over seeds, energy from the runs."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import openpyxl
import pytest

from edgetrain.report import load_sparse_compare, make_report
from edgetrain.report import sparse as sp
from edgetrain.report import sparse_figures as spfig


@pytest.fixture(scope="module")
def compare(sparse_dir: Path) -> sp.SparseCompare:
    return load_sparse_compare(sparse_dir)


def test_parse_budget() -> None:
    assert sp.parse_budget("0.25") == (0.25, "fraction")
    assert sp.parse_budget("1.0") == (1.0, "fraction")
    assert sp.parse_budget("50000") == (50000.0, "params")
    assert sp.parse_budget("50000.0") == (50000.0, "params")
    assert sp.parse_budget("300MiB") == (300 * 1024**2, "bytes")
    value, kind = sp.parse_budget(None)
    assert math.isnan(value) and kind is None


def test_results_with_energy_from_the_runs(compare: sp.SparseCompare) -> None:
    assert compare.results_source == "results.csv"
    results = sp.sparse_results(compare)
    assert results["scheme"].tolist() == ["velocity", "velocity", "full"]
    assert results["budget"].tolist()[:2] == ["0.1", "0.5"]
    assert results["budget_kind"].tolist()[:2] == ["fraction", "fraction"]
    assert results["test_acc_mean"].tolist() == pytest.approx([0.82, 0.89, 0.93])
    assert results["test_acc_std"].iloc[0] == pytest.approx(0.04 / math.sqrt(2))
    # energy is not in results.csv: it comes from each run's summary.json
    assert results["energy_j_mean"].tolist() == pytest.approx([12.0, 21.0, 32.0])
    assert results["energy_j_std"].iloc[0] == pytest.approx(4 / math.sqrt(2))
    assert compare.energy_sources == ["measured:nvml"]


def test_means_from_runs_csv_match_results_csv(
    compare: sp.SparseCompare, make_sparse_compare: Callable[..., Path]
) -> None:
    path = make_sparse_compare("stopped", results=False)
    stopped = load_sparse_compare(path)
    assert stopped.results_source == "runs.csv"
    assert any("means computed from runs.csv" in p for p in stopped.problems)
    for column in ("test_acc_mean", "test_acc_std", "peak_train_bytes_mean", "energy_j_mean"):
        assert stopped.results[column].tolist() == pytest.approx(compare.results[column].tolist())


def test_budget_axis(compare: sp.SparseCompare) -> None:
    results = sp.sparse_results(compare)
    axis = sp.budget_axis(results)
    assert axis.kind == "fraction"
    positions = axis.positions(results)
    assert positions[:2].tolist() == [0.1, 0.5] and math.isnan(positions[2])
    mixed = results.assign(budget=["0.1", "300MiB", None])
    mixed = sp.sparse_results(sp.SparseCompare(compare.path, mixed, compare.runs, "results.csv"))
    axis = sp.budget_axis(mixed)
    assert axis.kind == "category" and axis.order == ("0.1", "300MiB")
    bytes_only = sp.budget_axis(mixed.iloc[1:2])
    assert bytes_only.kind == "bytes" and bytes_only.positions(mixed.iloc[1:2])[0] == 300.0


def test_sparse_report(sparse_dir: Path, compare: sp.SparseCompare) -> None:
    out = make_report(sparse_dir)
    assert out == sparse_dir / "report"
    assert {p.name for p in out.glob("*.png")} == {"sparse_accuracy.png", "sparse_costs.png"}
    # 1 title page + 2 figures + 1 page of tables
    pdf = (out / "report.pdf").read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 4
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    assert workbook.sheetnames == ["overview", "results", "runs"]
    overview = dict(sp.sparse_overview(compare).itertuples(index=False))
    assert overview["schemes"] == "velocity, full"
    assert overview["budgets"] == "0.1, 0.5"
    assert overview["seeds per configuration"] == "2"


def test_figures(compare: sp.SparseCompare) -> None:
    results = sp.sparse_results(compare)
    axis = sp.budget_axis(results)
    figure = spfig.accuracy_figure(results, compare.runs, axis, "s")
    left, right = figure.axes
    assert left.get_xlabel() == "budget (fraction of the parameters)"
    assert left.get_ylabel() == "test accuracy (fraction)"
    low, high = left.get_ylim()
    assert low < 0.80 and high > 0.94  # every run and the full scheme's band are inside
    assert right.get_xlim()[0] < 0 and right.get_xlim()[1] > 1.0
    figure = spfig.costs_figure(results, axis, "s", ["estimated:cpu-tdp"])
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == [
        "peak training memory (MiB)",
        "step compute time (ms)",
        "training time per run (s)",
        "energy per run (J, estimated)",
    ]
    assert spfig.accuracy_figure(results.iloc[0:0], compare.runs, axis, "s") is None
