"""The sparse-update selection of one run: which neurons of which layer were updated, per epoch.

``RUN/sparse_update.csv`` (written by ``edgetrain.train.features.sparse``) has one row per
epoch and neuron layer: ``epoch, scheme, layer, kind, neurons, selected, params,
selected_params, ...``. The report draws it as a heat map (layers down, epochs across, the
share of each layer's neurons selected as the colour) beside the share of all parameters
updated per epoch (``trainable_frac`` in metrics.csv).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from edgetrain.report.labels import format_value
from edgetrain.report.plotting import add_note, epoch_axis, new_figure, set_unit_ylim
from edgetrain.report.rundir import Run

__all__ = ["selection_figure", "selection_layers", "selection_matrix", "selection_table"]

_ANNOTATE_CELLS = 400  # cells labelled with their count up to this many
_MAX_LAYER_LABEL = 28


def selection_table(run: Run) -> pd.DataFrame:
    """The selection per epoch and layer: ``epoch, layer, kind, neurons, selected,
    selected_frac`` (the last row of an epoch and layer wins: a resumed run); empty
    without sparse_update.csv."""
    columns = ["epoch", "layer", "kind", "neurons", "selected", "selected_frac"]
    table = run.sparse_update
    if table.empty or not {"epoch", "layer", "selected"} <= set(table.columns):
        return pd.DataFrame(columns=columns)
    table = table[table["epoch"].notna() & table["layer"].notna()].copy()
    table["layer"] = table["layer"].astype(str)
    table = table.drop_duplicates(["epoch", "layer"], keep="last")
    for name in ("kind", "neurons"):
        if name not in table.columns:
            table[name] = np.nan
    neurons = pd.to_numeric(table["neurons"], errors="coerce")
    table["selected_frac"] = table["selected"] / neurons.where(neurons > 0)
    return table[columns].reset_index(drop=True)


def selection_matrix(selection: pd.DataFrame) -> pd.DataFrame:
    """Layers (rows, in the model's order) by epochs (columns): the share of the layer's
    neurons selected (0..1; NaN where the layer's size is unknown)."""
    if selection.empty:
        return pd.DataFrame()
    order = list(dict.fromkeys(selection["layer"]))
    matrix = selection.pivot(index="layer", columns="epoch", values="selected_frac")
    matrix = matrix.reindex(order)
    return matrix.reindex(sorted(matrix.columns), axis=1)


def selection_layers(selection: pd.DataFrame) -> pd.DataFrame:
    """One row per layer: ``layer, kind, neurons, mean_selected, mean_selected_frac,
    epochs_updated`` (epochs with any neuron selected), in the model's order."""
    columns = ["layer", "kind", "neurons", "mean_selected", "mean_selected_frac", "epochs_updated"]
    if selection.empty:
        return pd.DataFrame(columns=columns)
    grouped = selection.groupby("layer", sort=False)
    table = grouped.agg(
        kind=("kind", "last"),
        neurons=("neurons", "last"),
        mean_selected=("selected", "mean"),
        mean_selected_frac=("selected_frac", "mean"),
        epochs_updated=("selected", lambda s: int((s > 0).sum())),
    ).reset_index()
    return table[columns]


def _short(name: str) -> str:
    return name if len(name) <= _MAX_LAYER_LABEL else "…" + name[-(_MAX_LAYER_LABEL - 1) :]


def selection_figure(
    selection: pd.DataFrame, trainable: pd.DataFrame, title: str, note: str = ""
) -> Figure | None:
    """Heat map of the share of each layer's neurons updated per epoch; beside it the share
    of all trainable parameters updated per epoch (when metrics.csv has it).

    Args:
        selection: :func:`selection_table`.
        trainable: ``epoch, trainable_frac`` (may be empty).
        title: The figure title's start.
        note: A line under the figure (scheme and budget).
    """
    matrix = selection_matrix(selection)
    if matrix.empty:
        return None
    figure = new_figure(f"{title}: sparse updates, neurons selected per layer and epoch")
    if note:
        add_note(figure, note)
    has_frac = "trainable_frac" in trainable.columns and trainable["trainable_frac"].notna().any()
    if has_frac:
        heat, line = figure.subplots(1, 2, width_ratios=[3.0, 1.2])
    else:
        heat, line = figure.subplots(), None
    values = matrix.to_numpy(dtype=float)
    epochs = [int(e) for e in matrix.columns]
    layers = [str(name) for name in matrix.index]
    image = heat.imshow(
        values, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    size = 9 if len(layers) <= 16 else 7 if len(layers) <= 32 else 5
    sizes = selection.drop_duplicates("layer", keep="last").set_index("layer")["neurons"]
    names = [
        f"{_short(n)} ({sizes[n]:.0f})" if pd.notna(sizes.get(n)) else _short(n) for n in layers
    ]
    heat.set_yticks(range(len(layers)), labels=names, fontsize=size)
    heat.set_ylabel("layer (neurons), input side at the top")
    every = max(1, int(np.ceil(len(epochs) / 20)))
    shown = list(range(0, len(epochs), every))
    heat.set_xticks(shown, labels=[str(epochs[j]) for j in shown])
    heat.set_xlabel("epoch")
    counts = selection.pivot(index="layer", columns="epoch", values="selected")
    counts = counts.reindex(index=matrix.index, columns=matrix.columns).to_numpy(dtype=float)
    if values.size <= _ANNOTATE_CELLS:
        for (i, j), value in np.ndenumerate(values):
            if not np.isfinite(value) or not np.isfinite(counts[i, j]):
                continue
            heat.text(
                j,
                i,
                format_value("", counts[i, j]),
                ha="center",
                va="center",
                fontsize=10 if values.size <= 60 else 7 if len(epochs) <= 12 else 6,
                color="white" if value < 0.55 else "black",
            )
    heat.set_title("share of each layer's neurons updated (numbers: neurons)", fontsize=10)
    figure.colorbar(image, ax=heat, label="neurons selected (fraction of the layer, 0..1)")
    if line is not None:
        frac = trainable["trainable_frac"].to_numpy(dtype=float)
        line.plot(trainable["epoch"], frac, marker="o", ms=4, color="tab:green")
        set_unit_ylim(line, frac)
        line.set_ylabel("parameters updated (fraction of all, 0..1)")
        line.set_title("share of all parameters updated", fontsize=10)
        epoch_axis(line)
    return figure
