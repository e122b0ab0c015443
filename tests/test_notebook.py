"""``edgetrain.fit`` in a Jupyter notebook, simulated: rich's notebook path, no kernel.

Rich draws a live progress bar in a notebook through an ``ipywidgets.Output`` widget and
prints everything else with ``IPython.display.display``. Neither package is needed here:
both are stood in for by small fakes that record what a notebook cell would show, so the
test runs rich's real notebook code.
"""

from __future__ import annotations

import builtins
import sys
import types
import warnings
from typing import Any

import pandas as pd
import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import TensorDataset

import edgetrain
from edgetrain.contract import metrics_columns
from edgetrain.train.features.progress import ProgressCallback


class _Notebook:
    """What a cell shows: outputs displayed in the cell, and each Output widget's."""

    def __init__(self) -> None:
        self.cell: list[Any] = []
        self.widgets: list[_Output] = []
        self.active: list[_Output] = []

    def display(self, *objs: Any, **kwargs: Any) -> None:
        if self.active:
            self.active[-1].shown.extend(objs)
            self.active[-1].seen.extend(objs)
        else:
            self.cell.extend(objs)

    def texts(self, shown: list[Any]) -> list[str]:
        # rich displays a JupyterRenderable: text/plain and text/html of what it printed
        bundles = [o._repr_mimebundle_([], []) for o in shown if not isinstance(o, _Output)]
        assert all("text/html" in b for b in bundles)
        return [b["text/plain"] for b in bundles]


class _Output:
    """ipywidgets.Output: a context manager that captures displays; clear, close."""

    notebook: _Notebook

    def __init__(self) -> None:
        self.shown: list[Any] = []  # what the widget shows now
        self.seen: list[Any] = []  # everything it ever showed
        self.cleared = 0
        self.closed = False
        self.notebook.widgets.append(self)

    def __enter__(self) -> _Output:
        self.notebook.active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.notebook.active.pop()

    def clear_output(self, wait: bool = False) -> None:
        self.cleared += 1
        self.shown.clear()

    def close(self) -> None:
        self.closed = True


class ZMQInteractiveShell:
    """The class name rich looks for to detect a notebook kernel."""


@pytest.fixture
def notebook(monkeypatch):
    """A simulated notebook: fake IPython.display and ipywidgets, and a kernel shell."""
    nb = _Notebook()
    display_mod = types.ModuleType("IPython.display")
    display_mod.display = nb.display  # type: ignore[attr-defined]
    ipython = types.ModuleType("IPython")
    ipython.display = display_mod  # type: ignore[attr-defined]
    widgets = types.ModuleType("ipywidgets")
    output = type("Output", (_Output,), {"notebook": nb})
    widgets.Output = output  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    monkeypatch.setitem(sys.modules, "ipywidgets", widgets)
    # what a kernel puts into builtins; rich's Console() detects Jupyter from it
    monkeypatch.setattr(builtins, "get_ipython", ZMQInteractiveShell, raising=False)
    return nb


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x.sum(dim=1) > 0).long())


def _fit(tmp_path, **kwargs: Any) -> edgetrain.FitResult:
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = edgetrain.fit(
            nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
            _data(96, 0),
            _data(32, 1),
            epochs=2,
            batch_size=16,
            lr=0.1,
            out=tmp_path / "run",
            monitor={"enabled": False},
            **kwargs,
        )
    # rich warns 'install "ipywidgets" for Jupyter support' when it cannot draw the bar
    assert not [w for w in caught if "Jupyter" in str(w.message)]
    return result


def _check_result(result: edgetrain.FitResult) -> None:
    assert isinstance(result.history, pd.DataFrame)
    assert list(result.history.columns) == list(metrics_columns(("acc",), ("acc",)))
    assert result.history.epoch.tolist() == [1, 2]
    assert result.history.val_acc.notna().all()
    assert result.summary["status"] == "completed"


def _check_shown(nb: _Notebook) -> None:
    cell = "\n".join(nb.texts(nb.cell))
    assert "epoch 1/2" in cell and "epoch 2/2" in cell  # each epoch's line stays in the cell
    assert "loss" in cell
    # the live bar lives in its own Output widget, redrawn in place and closed at the end
    assert len(nb.widgets) == 1
    bar = nb.widgets[0]
    assert bar in nb.cell and bar.cleared >= 1 and bar.closed
    frames = nb.texts(bar.seen)
    assert any("epoch 1/2" in f and "samples/s" in f for f in frames)


def test_fit_shows_progress_in_a_notebook_by_default(tmp_path, notebook):
    assert Console().is_jupyter  # the simulated kernel is detected as rich would detect it
    result = _fit(tmp_path)  # progress=True: edgetrain's own console, as a user gets it
    _check_result(result)
    _check_shown(notebook)


def test_fit_with_a_notebook_console_given_to_the_progress_callback(tmp_path, notebook):
    console = Console(force_jupyter=True, markup=False)
    result = _fit(tmp_path, progress=False, callbacks=[ProgressCallback(console=console)])
    _check_result(result)
    _check_shown(notebook)


def test_a_notebook_without_ipywidgets_still_trains(tmp_path, monkeypatch):
    """Without ipywidgets (nor IPython) rich shows no bar, with a warning; fit still works."""
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    monkeypatch.setitem(sys.modules, "IPython", None)
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    console = Console(force_jupyter=True, markup=False)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="ipywidgets"):
        result = edgetrain.fit(
            nn.Linear(8, 2),
            _data(64, 0),
            epochs=1,
            batch_size=16,
            out=tmp_path / "run",
            monitor={"enabled": False},
            progress=False,
            callbacks=[ProgressCallback(console=console)],
        )
    assert isinstance(result.history, pd.DataFrame) and len(result.history) == 1
