"""The run report leads with the answer: what each page shows, and which pages exist.

Page 1 is the key figures with the learning curve; the features that were off have no
pages or sections; correlation plots need ten epochs; the appendix (configuration and
environment) is last. The pages' texts are captured as the PDF is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.text import Text

from edgetrain.report import figures as fig
from edgetrain.report import load_run
from edgetrain.report import sparse_selection as sel
from edgetrain.report import tables as tab
from edgetrain.report.correlation import MIN_POINTS, correlation, correlation_text
from edgetrain.report.features import active_features
from edgetrain.report.keyfigures import KEY_FIGURES_TITLE, LEARNING_CURVE_TITLE, key_figures
from edgetrain.report.run_report import APPENDIX_TITLE, write_run_report


def texts(figure: Figure) -> list[str]:
    """Every visible text of a saved page (titles, lines, axis labels, tick labels)."""
    return [t.get_text() for t in figure.findobj(Text) if t.get_visible() and t.get_text()]


def report(path: Path, pages: list[Figure]) -> tuple[list[str], list[list[str]]]:
    """Write the report of a run; its page names and each page's texts."""
    names = write_run_report(load_run(path), path / "report")
    pdf = (path / "report" / "report.pdf").read_bytes()
    assert len(names) == len(pages) == len(re.findall(rb"/Type\s*/Page\b", pdf))
    return names, [texts(page) for page in pages]


def everything(page_texts: list[list[str]]) -> str:
    return "\n".join(t for page in page_texts for t in page)


def test_page_one_is_the_key_figures_and_the_learning_curve(
    full_run: Path, pdf_pages_saved: list[Figure]
) -> None:
    names, pages = report(full_run, pdf_pages_saved)
    assert names[0] == "key_figures"
    first = pages[0]
    assert "Training report: full" in first
    assert KEY_FIGURES_TITLE in first and LEARNING_CURVE_TITLE in first
    for item, value in [
        ("status", "completed"),
        ("best val accuracy", "0.97 at epoch 6"),  # summary.json best, with its epoch
        ("final val accuracy", "0.97"),
        ("test accuracy", "0.8"),
        ("energy source", "measured:nvml: measured"),
        ("micro-batch", "16 x 2 accumulated (batch 32)"),
    ]:
        assert item in first and value in first, item
    assert any(t.startswith("2,640.0 J") for t in first)  # 40 W for 66 s
    assert any(t.startswith("1m 07s") for t in first)  # 1 s set-up + 66 s
    # the learning curve: loss, then the task's metric, the best epoch marked
    curve_axes = [ax for ax in pdf_pages_saved[0].axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in curve_axes] == ["loss", "accuracy (fraction)"]
    legends = [t.get_text() for ax in curve_axes for t in ax.get_legend().get_texts()]
    assert "best epoch 6" in legends and "val accuracy" in legends
    # no raw key dumps up front
    assert not [t for t in first if "config.yaml" in t or t in ("Environment", "Sensors")]


def test_key_figures_follow_the_task_and_the_stop_reason(make_run: Callable[..., Path]) -> None:
    path = make_run("regression", epochs=3, gpu=False, adapt=False)
    summary = json.loads((path / "summary.json").read_text())
    summary.update(
        best={"epoch": 3, "val_acc": 0.61},
        stop_reason="early_stop: val_acc did not improve for 3 epochs (best 0.61 at epoch 3)",
        task={
            "best_metric": "val_acc",
            "best_mode": "max",
            "metrics": {"val_acc": "max", "val_loss": "min"},
        },
        adapt={"budget_bytes": 100 * 2**20, "measured_peak_bytes": 80 * 2**20,
               "budget_violations": 0, "micro_batch_size": 16, "accum_steps": 4,
               "memory_source": "cpu:rss-above-baseline"},
    )  # fmt: skip
    (path / "summary.json").write_text(json.dumps(summary))
    run = load_run(path)
    totals = tab.run_totals(run)
    items = dict(key_figures(run, totals, active_features(run)).itertuples(index=False))
    assert items["stopped because"].startswith("early_stop: val_acc did not improve")
    assert items["best val accuracy"] == "0.61 at epoch 3"
    assert items["peak memory"].startswith("80.0 MiB of the 100.0 MiB budget (80%), no step")
    assert items["micro-batch"] == "16 x 4 accumulated (batch 64)"
    assert items["energy source"] == "estimated:cpu-tdp: ESTIMATED, not measured"
    assert items["features on"] == "resource monitor, memory budget and adaptation"


def test_the_appendix_is_last_and_holds_configuration_and_environment(
    full_run: Path, pdf_pages_saved: list[Figure]
) -> None:
    names, pages = report(full_run, pdf_pages_saved)
    appendix = [i for i, name in enumerate(names) if name.startswith("appendix")]
    assert appendix and appendix == list(range(appendix[0], len(names)))  # the last pages
    assert any(t.startswith(APPENDIX_TITLE) for t in pages[appendix[0]])
    text = everything([pages[i] for i in appendix])
    for heading in ("All totals", "Environment", "Sensors", "Configuration (config.yaml)"):
        assert heading in text
    before = everything(pages[: appendix[0]])
    assert "Configuration (config.yaml)" not in before and "Environment" not in before


def test_inactive_features_have_no_pages_nor_sections(
    plain_run: Path, pdf_pages_saved: list[Figure]
) -> None:
    assert active_features(load_run(plain_run)) == ["monitor"]
    names, pages = report(plain_run, pdf_pages_saved)
    for name in ("controller", "activation", "sparse_update", "pruning"):
        assert name not in names
    text = everything(pages)
    for heading in (
        "Controller per epoch",
        "Controller decisions",
        "Memory against the budget",
        "Sparse updates per layer",
        "Pruning steps",
        "Memory budget and adaptation (summary.json",
    ):
        assert heading not in text
    assert "(no data)" not in text  # no empty section anywhere


def test_active_features_have_their_pages_and_sections(
    make_run: Callable[..., Path], pdf_pages_saved: list[Figure], sparse_csv: SimpleNamespace
) -> None:
    path = sparse_csv.write(make_run("features", epochs=4), epochs=4)
    summary = json.loads((path / "summary.json").read_text())
    summary["prune"] = {"ratio": 0.5, "schedule": "gradual", "param_sparsity": 0.5}
    summary["activations"] = {"mode": "int8", "peak_raw_bytes": 4e6, "peak_stored_bytes": 1e6}
    (path / "summary.json").write_text(json.dumps(summary))
    metrics = pd.read_csv(path / "metrics.csv")
    metrics["param_sparsity"] = [0.0, 0.2, 0.4, 0.5]
    metrics.to_csv(path / "metrics.csv", index=False)
    run = load_run(path)
    assert active_features(run) == ["monitor", "adapt", "activations", "sparse_update", "prune"]
    names, pages = report(path, pdf_pages_saved)
    assert names[:1] == ["key_figures"]
    for name in ("resources", "controller", "activation", "sparse_update", "pruning"):
        assert name in names
    text = everything(pages)
    for heading in (
        "Controller per epoch",
        "Sparse updates per layer (sparse_update.csv)",
        "Sparse updates (summary.json: sparse_update)",
        "Pruning (summary.json: prune)",
        "Activation compression (summary.json: activations)",
    ):
        assert heading in text
    activation = pages[names.index("activation")]
    assert any("int8" in t and "25%" in t for t in activation)  # stored of raw


def test_sparse_selection_heat_map_from_a_synthetic_csv(
    make_run: Callable[..., Path], pdf_pages_saved: list[Figure], sparse_csv: SimpleNamespace
) -> None:
    path = sparse_csv.write(make_run("sparse", epochs=5, gpu=False, adapt=False), epochs=5)
    layers, sparse_selected = sparse_csv.layers, sparse_csv.selected
    run = load_run(path)
    selection = sel.selection_table(run)
    assert len(selection) == 5 * len(layers)
    matrix = sel.selection_matrix(selection)
    assert list(matrix.index) == [name for name, _, _ in layers]  # the model's order
    assert list(matrix.columns) == [1, 2, 3, 4, 5]
    expected = [
        [sparse_selected(e, i) / n for e in range(1, 6)] for i, (_, _, n) in enumerate(layers)
    ]
    np.testing.assert_allclose(matrix.to_numpy(), expected)
    figure = sel.selection_figure(selection, run.metrics[["epoch", "trainable_frac"]], "r")
    image = next(a for a in figure.axes[0].get_children() if isinstance(a, AxesImage))
    np.testing.assert_allclose(image.get_array(), expected)
    assert image.get_clim() == (0.0, 1.0)
    ticks = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert ticks == ["features.0 (16)", "features.4 (32)", "head.1 (10)"]
    layers = sel.selection_layers(selection).set_index("layer")
    assert layers.loc["head.1", "epochs_updated"] == sum(
        sparse_selected(e, 2) > 0 for e in range(1, 6)
    )
    none = sel.selection_table(load_run(make_run("none")))
    assert none.empty and sel.selection_figure(none, pd.DataFrame(), "r") is None
    names, pages = report(path, pdf_pages_saved)
    assert "sparse_update" in names
    heat = pages[names.index("sparse_update")]
    assert any("neurons selected per layer and epoch" in t for t in heat)
    assert any(t.startswith("scheme velocity; budget 156 parameters") for t in heat)


def test_correlation_plots_need_ten_epochs(
    make_run: Callable[..., Path], pdf_pages_saved: list[Figure]
) -> None:
    short, _ = report(make_run("short", epochs=MIN_POINTS - 1), pdf_pages_saved)
    assert "correlation" not in short and "correlation_pairs" not in short
    pdf_pages_saved.clear()
    names, pages = report(make_run("long", epochs=12), pdf_pages_saved)
    assert "correlation" in names and "correlation_pairs" in names
    heat = pages[names.index("correlation")]
    assert any("(Pearson r, n = 12 epochs)" in t for t in heat)
    scatter = pdf_pages_saved[names.index("correlation_pairs")]
    titles = [ax.get_title() for ax in scatter.axes if ax.get_title()]
    assert titles and all(re.search(r"n = 12, Pearson r = [+-]\d\.\d\d$", t) for t in titles)
    assert all(len(ax.lines) == 0 for ax in scatter.axes)  # points only, no fitted line
    assert "Strongest cost/performance correlations (Pearson r, n = 12 epochs)" in everything(pages)


def test_pairs_figure_leaves_out_pairs_with_fewer_than_ten_points() -> None:
    epochs = np.arange(1, 13, dtype=float)
    per_epoch = pd.DataFrame({"epoch": epochs, "time_s": epochs, "val_loss": 1 / epochs})
    pairs = pd.DataFrame({"cost": ["time_s"], "performance": ["val_loss"], "r": [-0.9]})
    assert fig.pairs_figure(per_epoch, pairs, "r") is not None
    nine = per_epoch.assign(val_loss=[*list(1 / epochs[:9]), None, None, None])
    assert fig.pairs_figure(nine, pairs, "r") is None
    corr = per_epoch.drop(columns="epoch").corr()
    assert fig.correlation_figure(corr, "r", n=MIN_POINTS - 1) is None
    assert fig.correlation_figure(corr, "r", n=MIN_POINTS) is not None


def test_correlation_coefficients_and_their_label() -> None:
    x = np.arange(12, dtype=float)
    assert correlation(x, x**3, "spearman") == (12, pytest.approx(1.0))
    n, r = correlation(x, x**3, "pearson")
    assert n == 12 and 0.9 < r < 1.0
    assert correlation([1, 2, None, 4], [2, 4, 6, None]) == (2, None)  # pairs with both only
    assert correlation(x, np.ones(12)) == (12, None)  # a constant side
    assert correlation_text(12, -0.4567, "spearman") == "n = 12, Spearman r = -0.46"
    assert correlation_text(3, None, "pearson") == "n = 3, Pearson r undefined"
