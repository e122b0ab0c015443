"""Figures: drawn only when their data exist, with units and limits that show all data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from edgetrain.report import figures as fig
from edgetrain.report import load_run
from edgetrain.report import tables as tab

EMPTY = pd.DataFrame(columns=["epoch"])


def test_absent_data_draw_nothing() -> None:
    assert fig.training_curves_figure(EMPTY, "r") is None
    assert fig.resources_figure(pd.DataFrame(columns=["t_s", "epoch"]), EMPTY, "r") is None
    assert fig.energy_figure(EMPTY, "r") is None
    assert fig.controller_figure(EMPTY, EMPTY, "r") is None
    assert fig.correlation_figure(pd.DataFrame(), "r") is None
    assert fig.pairs_figure(EMPTY, pd.DataFrame(columns=["cost", "performance", "r"]), "r") is None
    assert fig.activation_figure(EMPTY, "r") is None


def test_accuracy_axis_shows_zero_to_one_and_the_data() -> None:
    curves = pd.DataFrame(
        {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.2], "val_acc": [0.5, 0.9, 1.0]}
    )
    figure = fig.training_curves_figure(curves, "r")
    loss_ax, acc_ax = figure.axes
    low, high = acc_ax.get_ylim()
    assert low < 0.0 and high > 1.0  # 1.0 sits inside the frame, not on it
    assert acc_ax.get_ylabel() == "accuracy (fraction)"
    assert loss_ax.get_ylim()[1] > 1.0
    percent = curves.assign(val_acc=[50.0, 90.0, 100.0])
    assert fig.training_curves_figure(percent, "r").axes[1].get_ylim()[1] > 100.0


def test_resources_figure_panels_follow_the_sensors(full_run: Path, plain_run: Path) -> None:
    for path, expected in ((full_run, 3), (plain_run, 2)):
        run = load_run(path)
        figure = fig.resources_figure(tab.resource_usage(run), tab.epoch_boundaries(run), "r")
        labels = [ax.get_ylabel() for ax in figure.axes if ax.get_ylabel()]
        assert len(labels) == expected
        assert labels[:2] == ["utilisation (%)", "memory (GiB)"]
        assert figure.axes[expected - 1].get_xlabel() == "time since start (s)"
        # one dotted line per epoch start on every panel
        assert sum(len(ax.lines) for ax in figure.axes[:expected]) > 6 * expected


def test_energy_figure_labels_estimates(plain_run: Path) -> None:
    figure = fig.energy_figure(tab.energy_per_epoch(load_run(plain_run)), "r")
    labels = [ax.get_ylabel() for ax in figure.axes]
    assert labels == ["energy (J, estimated)", "time (s)", "energy per sample (mJ, estimated)"]


def test_controller_figure_marks_each_change(full_run: Path) -> None:
    run = load_run(full_run)
    figure = fig.controller_figure(tab.controller_table(run), tab.decisions_table(run), "r")
    marks = [text.get_text() for text in figure.axes[0].texts]
    assert [m for m in marks if m.isdigit()] == ["1", "2"]
    assert "x2 accumulated" in marks  # the accumulation where it starts
    assert any("batch_size 64→32" in text.get_text() for text in figure.texts)


def test_controller_scores_above_one_stay_fractions() -> None:
    controller = pd.DataFrame(
        {"epoch": [1, 2], "batch_size": [64, 64], "micro_batch_size": [32, 16], "changes": [0, 1]}
    )
    decisions = pd.DataFrame({"epoch": [1, 2], "step": [5, 9], "memory_score": [0.95, 1.04]})
    figure = fig.controller_figure(controller, decisions, "r")
    scores = next(ax for ax in figure.axes if ax.get_ylabel() == "score (0..1)")
    low, high = scores.get_ylim()
    assert low < 0.0 and 1.04 < high < 1.5  # a memory score over the budget, not a percentage
    assert any(line.get_label().startswith("memory = budget") for line in scores.lines)
