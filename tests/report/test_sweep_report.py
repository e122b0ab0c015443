"""The sweep report: analysis tables read back, computed tables checked against known numbers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from matplotlib.figure import Figure

from edgetrain.errors import EdgeTrainError
from edgetrain.report import load_sweep, make_report
from edgetrain.report import sweep as sw
from edgetrain.report import sweep_figures as sfig
from edgetrain.report.correlation import correlation, correlation_text

SHEETS = [
    "overview",
    "trials",
    "top_accuracy",
    "top_energy",
    "top_efficiency",
    "pareto",
    "importance",
    "best_values",
    "pareto_points",
    "parameter_effects",
    "parameter_groups",
]
# the figures of the 5-trial sweep: too few trials for the Pareto scatter
FIGURES = {
    "sweep_importance.png",
    "sweep_energy_by_parameter.png",
    "sweep_accuracy_by_parameter.png",
    "best_trial_curves.png",
    "best_trial_energy.png",
}


def pdf_pages(path: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", path.read_bytes()))


@pytest.fixture(scope="module")
def sweep(sweep_dir: Path) -> sw.Sweep:
    return load_sweep(sweep_dir)


def test_load_reads_every_table(sweep: sw.Sweep, sweep_dir: Path) -> None:
    assert sweep.path == sweep_dir
    assert sweep.name == "toy"
    assert sweep.params == ["opt", "lr", "batch_size"]
    assert len(sweep.tables["trials"]) == 6
    assert sweep.tables["trials"]["param_batch_size"].tolist()[:2] == ["16", "32"]  # as written
    assert sweep.energy_sources == ["estimated:cpu-tdp"]
    assert sweep.problems == ()


def test_overview_labels_the_estimate(sweep: sw.Sweep) -> None:
    overview = dict(sw.sweep_overview(sweep).itertuples(index=False))
    assert overview["objectives"] == "accuracy, energy"
    assert overview["sampler"] == "random"
    assert overview["trials completed"] == "5"
    assert overview["trials failed"] == "1"
    assert overview["energy source"] == "estimated:cpu-tdp (an estimate, not a measurement)"
    assert overview["best efficiency"].startswith("trial 2: val acc 0.85, energy 50 J (est.)")
    assert "17 acc/kJ" in overview["best efficiency"]
    assert overview["Pareto knee"].startswith("trial 5:")


def test_pareto_points_flag_front_and_knee(sweep: sw.Sweep) -> None:
    points = sw.pareto_points(sweep)
    assert points["number"].tolist() == [2, 5, 0, 3, 1]  # by energy; failed trial 4 left out
    assert points["energy_j"].tolist() == [50.0, 60.0, 100.0, 200.0, 400.0]
    assert points.loc[points["on_front"], "number"].tolist() == [2, 5, 1]
    assert points.loc[points["knee"], "number"].tolist() == [5]


def test_pareto_front_computed_without_pareto_csv(sweep: sw.Sweep) -> None:
    tables = {**sweep.tables, "pareto": pd.DataFrame()}
    bare = sw.Sweep(sweep.path, sweep.analysis_dir, {}, {}, {}, tables)
    points = sw.pareto_points(bare)
    assert set(points.loc[points["on_front"], "number"]) == {2, 5, 1}
    assert not points["knee"].any()


def test_top_tables_keep_rank_and_parameters(sweep: sw.Sweep) -> None:
    top = sw.top_table(sweep, "top_efficiency")
    assert list(top.columns[:7]) == list(sw.TOP_DISPLAY)
    assert list(top.columns[7:]) == ["opt", "lr", "batch_size"]
    assert top["number"].tolist() == [2, 5, 0, 3, 1]
    assert top["efficiency_acc_per_kj"].iloc[0] == pytest.approx(17.0)
    assert top["avg_power_w"].tolist() == [10.0] * 5


def test_importance_bars_in_rank_order(sweep: sw.Sweep) -> None:
    energy = sw.importance_bars(sweep, "energy")
    assert energy["parameter"].tolist() == ["batch_size", "opt", "lr"]
    assert energy["fanova_importance"].tolist() == [0.6, 0.3, 0.1]
    assert np.isnan(energy["epsilon_sq"].iloc[2])
    assert sw.importance_bars(sweep, "accuracy")["parameter"].tolist()[0] == "opt"
    assert sw.importance_bars(sweep, "efficiency").empty


def test_parameter_kinds_follow_the_space(sweep: sw.Sweep) -> None:
    kinds = sw.parameter_kinds(sweep)
    assert kinds["opt"] == {"kind": "categorical", "log": False, "choices": ["sgd", "adam"]}
    assert kinds["lr"]["kind"] == "numeric" and kinds["lr"]["log"]
    assert kinds["batch_size"]["choices"] == ["16", "32", "64"]


def test_parameter_effects_and_groups(sweep: sw.Sweep) -> None:
    effects = sw.parameter_effects(sweep)
    assert len(effects) == 3 * 5  # 3 parameters x 5 completed trials
    lr = effects[effects["parameter"] == "lr"]
    assert lr["x"].tolist() == [0.001, 0.01, 0.1, 0.003, 0.02]
    groups = sw.parameter_groups(effects)
    opt = groups[groups["parameter"] == "opt"].set_index("value")
    assert opt.index.tolist() == ["sgd", "adam"]  # the space's choice order
    assert opt.loc["sgd", "trials"] == 2
    assert opt.loc["sgd", "energy_j_median"] == 150.0  # 100 and 200; failed trial 4 left out
    assert opt.loc["adam", "energy_j_median"] == 60.0  # 400, 50, 60
    assert opt.loc["adam", "val_acc_mean"] == pytest.approx((0.90 + 0.85 + 0.88) / 3)
    assert groups["parameter"].unique().tolist() == ["opt", "batch_size"]  # lr is numeric


def test_best_trial_is_the_most_efficient(sweep: sw.Sweep, sweep_dir: Path) -> None:
    assert sw.best_trial(sweep) == (2, sweep_dir / "trials" / "2")
    failed = sw.failed_trials(sweep)
    assert failed.to_dict("records") == [
        {"number": 4, "state": "failed", "fail_reason": "error", "error": "boom: out of memory"}
    ]


def test_sweep_report(sweep_dir: Path) -> None:
    out = make_report(sweep_dir)
    assert out == sweep_dir / "report"
    assert {p.name for p in out.glob("*.png")} == FIGURES
    # 1 title page + 5 figures + 1 page of top tables + 1 page of tables
    assert pdf_pages(out / "report.pdf") == 8
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    assert workbook.sheetnames == SHEETS
    rows = list(workbook["pareto_points"].iter_rows(values_only=True))
    assert [row[0] for row in rows[1:]] == [2, 5, 0, 3, 1]


def test_figures_label_estimates_and_scale(make_sweep: Callable[..., Path]) -> None:
    sweep = load_sweep(make_sweep("large", extra=7))
    points = sw.pareto_points(sweep)
    assert len(points) == 12
    figure = sfig.pareto_figure(points, "toy", ["estimated:cpu-tdp"])
    ax = figure.axes[0]
    assert ax.get_xlabel() == "energy per trial (J, estimated)"  # 50..400 J: linear
    assert ax.get_xscale() == "linear"
    low, high = ax.get_xlim()
    assert low < 50 and high > 400 and low >= 0
    wide = points.assign(energy_j=points["energy_j"] * np.array([1] * 11 + [100]))
    figure = sfig.pareto_figure(wide, "toy", ["measured:nvml"])
    assert figure.axes[0].get_xscale() == "log"
    assert figure.axes[0].get_xlabel() == "energy per trial (J), log scale"
    assert figure.axes[0].get_xlim()[1] > 40000
    assert sfig.pareto_figure(points.iloc[0:0], "toy", []) is None
    assert sfig.effects_figure(sw.parameter_effects(sweep).iloc[0:0], "energy_j", "t", []) is None
    assert sfig.importance_figure({"energy": pd.DataFrame()}, "toy") is None


def test_sweep_without_analysis(make_sweep: Callable[..., Path]) -> None:
    path = make_sweep(analysed=False)
    with pytest.raises(EdgeTrainError, match=r"run `edgetrain sweep analyze .*` first"):
        make_report(path)


def test_analysis_directory_given_directly(sweep_dir: Path) -> None:
    sweep = load_sweep(sweep_dir / "analysis")
    assert sweep.path == sweep_dir  # trial run directories are found from the sweep's root
    assert sweep.analysis_dir == sweep_dir / "analysis"
    assert sw.best_trial(sweep)[1] == sweep_dir / "trials" / "2"


def test_stale_analysis_is_noted(make_sweep: Callable[..., Path]) -> None:
    path = make_sweep()
    for number in range(7):
        (path / "trials" / str(number)).mkdir(exist_ok=True)
    sweep = load_sweep(path)
    assert any("7 trial directories but the analysis covers 6" in p for p in sweep.problems)
    summary = json.loads((path / "analysis" / "summary.json").read_text())
    assert summary["knee_trial"] == 5


def test_page_one_leads_with_the_best_trials(
    sweep_dir: Path, pdf_pages_saved: list[Figure]
) -> None:
    best = sw.best_trials(load_sweep(sweep_dir))
    assert best[["best_by", "number"]].values.tolist() == [
        ["best accuracy", 1],
        ["lowest energy", 2],
        ["best efficiency", 2],
        ["Pareto knee", 5],
    ]
    assert best["text"].iloc[1].endswith("; opt adam, lr 0.1, batch_size 16")
    names = sw.write_sweep_report(load_sweep(sweep_dir), sweep_dir / "report")
    assert names[0] == "title 1"
    first = [t.get_text() for t in pdf_pages_saved[0].texts]
    headings = [t.get_text() for t in pdf_pages_saved[0].texts if t.get_fontweight() == "bold"]
    assert headings[1].startswith(sw.ANSWER_HEADING)  # right under the page title
    assert headings[2].startswith("Pareto front")
    assert any(t.startswith("lowest energy = best efficiency") for t in first)
    assert any("trial 2: val acc 0.85, energy 50 J (est.)" in t for t in first)
    assert any(t.startswith("scatter plots") and "5 completed trials" in t for t in first)
    front = sw.pareto_front(load_sweep(sweep_dir))
    assert front["number"].tolist() == [2, 5, 1] and front["knee"].tolist() == ["", "knee", ""]
    assert list(front.columns[4:]) == ["opt", "lr", "batch_size"]


def test_scatter_plots_need_ten_trials(sweep: sw.Sweep, make_sweep: Callable[..., Path]) -> None:
    # 5 completed trials: no Pareto scatter, no scatter of the numeric parameter
    assert sfig.pareto_figure(sw.pareto_points(sweep), "toy", []) is None
    figure = sfig.effects_figure(sw.parameter_effects(sweep), "energy_j", "toy", [])
    titles = [ax.get_title() for ax in figure.axes if ax.get_visible()]
    assert titles == ["opt", "lr\nn = 5: too few trials for a scatter", "batch_size"]
    ticks = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert ticks == ["sgd\n(n=2)", "adam\n(n=3)"]
    # lr: the trials ranked by energy (50, 60, 100, 200, 400 J), labelled with their lr
    ranked = figure.axes[1]
    assert [t.get_text() for t in ranked.get_xticklabels()] == [
        "0.1",
        "0.02",
        "0.001",
        "0.003",
        "0.01",
    ]
    assert ranked.get_xlabel() == "value, trials ranked by energy"
    # 12 completed trials: both drawn, each with n and Spearman r, no fitted line
    large = load_sweep(make_sweep("large", extra=7))
    points = sw.pareto_points(large)
    pareto = sfig.pareto_figure(points, "toy", [])
    n, r = correlation(points["energy_j"], points["val_acc"], "spearman")
    assert n == 12 and r is not None
    assert pareto.axes[0].get_title().endswith(correlation_text(n, r, "spearman"))
    assert len(pareto.axes[0].lines) == 1  # the front, no fitted line
    figure = sfig.effects_figure(sw.parameter_effects(large), "val_acc", "toy", [])
    lr = next(ax for ax in figure.axes if ax.get_title().startswith("lr"))
    assert re.fullmatch(r"lr\nn = 12, Spearman r = [+-]\d\.\d\d", lr.get_title())
    assert len(lr.lines) == 0  # points only
