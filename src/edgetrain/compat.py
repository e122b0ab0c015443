"""EdgeTrain-compatible entry points: :func:`dynamic_train` and :func:`log_usage_plot`.

A thin layer over :func:`edgetrain.fit` for EdgeTrain users: the same call shape,
EdgeTrain's ``{"images": ..., "labels": ...}`` NumPy arrays (channels-last images), the
``edgetrain`` policy (EdgeTrain's score-and-priority scheme, with its defects fixed), a
per-epoch resource and decision log at ``log_file`` and a plot of it. Everything else
(the run directory, the budget, pruning) is edgetrain's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from edgetrain.errors import EdgeTrainError
from edgetrain.train.rundir import METRICS_COLUMNS

__all__ = [
    "LOG_COLUMNS",
    "arrays_to_dataset",
    "dynamic_train",
    "log_usage_plot",
    "usage_log",
    "usage_plot_data",
]

log = logging.getLogger(__name__)

# the first eleven metrics.csv columns, then memory, cost and the controller's view
LOG_COLUMNS: tuple[str, ...] = (
    *METRICS_COLUMNS[: METRICS_COLUMNS.index("samples_per_s") + 1],
    "peak_memory_bytes",
    "memory_budget_bytes",
    "peak_rss_bytes",
    "energy_j",
    "avg_power_w",
    "param_sparsity",
    "memory_score",
    "accuracy_score",
    "priority_batch_size",
    "priority_learning_rate",
    "chosen",
    "changes",
    "reason",
)
_CHANNELS = (1, 2, 3, 4)


def arrays_to_dataset(data: Mapping[str, Any], *, name: str = "train_dataset") -> TensorDataset:
    """EdgeTrain's ``{"images": (N, H, W[, C]), "labels": (N,) or one-hot (N, K)}`` as a Dataset.

    Images are channels-last as EdgeTrain (Keras) used them; (N, C, H, W) is accepted
    too when the channels are unambiguous. uint8 images are scaled to [0, 1].

    Raises:
        EdgeTrainError: missing keys, mismatched lengths, or shapes that are not images.
    """
    if not isinstance(data, Mapping) or "images" not in data or "labels" not in data:
        raise EdgeTrainError(
            f"{name} must be a mapping with 'images' and 'labels' arrays (EdgeTrain's format), "
            f"got {type(data).__name__}"
        )
    images, labels = np.asarray(data["images"]), np.asarray(data["labels"])
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise EdgeTrainError(
            f"{name}['images'] must have shape (N, H, W, C) or (N, H, W), got {images.shape}"
        )
    if images.shape[-1] not in _CHANNELS and images.shape[1] in _CHANNELS:
        images = np.moveaxis(images, 1, -1)  # channels-first given: accept it
    if images.shape[-1] not in _CHANNELS:
        raise EdgeTrainError(
            f"{name}['images'] must be channels-last (N, H, W, C) with C in 1..4, "
            f"got {images.shape}"
        )
    if labels.ndim == 2:
        labels = labels.argmax(axis=1)  # one-hot, as Keras' categorical cross-entropy used
    if labels.ndim != 1 or len(labels) != len(images):
        raise EdgeTrainError(
            f"{name}['labels'] must be (N,) class indices or (N, K) one-hot with N = "
            f"{len(images)} images, got {labels.shape}"
        )
    if len(images) == 0:
        raise EdgeTrainError(f"{name} is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.equal(np.mod(labels, 1), 0)):
            raise EdgeTrainError(f"{name}['labels'] must be integer class indices")
        labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise EdgeTrainError(f"{name}['labels'] must be >= 0, got {int(labels.min())}")
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(images, -1, 1)))
    x = x.float() / 255.0 if images.dtype == np.uint8 else x.float()
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def dynamic_train(
    train_dataset: Mapping[str, Any],
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    log_file: str | Path = "resource_log.csv",
    dynamic_adjustments: bool = True,
    model: nn.Module | None = None,
    *,
    val_dataset: Mapping[str, Any] | None = None,
    validation_split: float = 0.1,
    budget: str | int | None = None,
    weights: Mapping[str, float] | None = None,
    optimizer: str = "adam",
    prune_ratio: float = 0.0,
    out: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    **config: Any,
) -> tuple[nn.Module, pd.DataFrame]:
    """Train like EdgeTrain's ``dynamic_train``, with edgetrain's loop and controller.

    Args:
        train_dataset: ``{"images": (N, H, W, C), "labels": (N,)}`` NumPy arrays.
        epochs, batch_size, lr: as in EdgeTrain (Adam, lr 1e-3 by default).
        log_file: the per-epoch resource and decision log (CSV); the run directory goes
            next to it (``<log_file stem>_run/``) unless ``out`` is given.
        dynamic_adjustments: use ``adapt.policy: edgetrain`` (else no adaptation).
        model: a PyTorch model for (N, C, H, W) inputs; default a small CNN.
        val_dataset: validation arrays; default ``validation_split`` of the training
            arrays, split by ``seed`` (the policy decides on validation accuracy).
        budget: ``budget.memory`` ('1.5GiB'); None = scores relative to the device.
        weights: ``{"batch_size": 0.4, "learning_rate": 0.6}`` priorities.
        optimizer: sgd, adam, adamw or rmsprop.
        prune_ratio: ``prune.ratio`` (EdgeTrain's constant-sparsity pruning).
        out: the run directory (replaced if it exists).
        seed: seeds the split, the model and the data order.
        progress: show progress.
        **config: any other config key (``adapt={"lr_scaling": "linear"}``, ...).

    Returns:
        (the trained model, the per-epoch metrics as a DataFrame).
    """
    from edgetrain.config import load_config
    from edgetrain.train import fit
    from edgetrain.train.features.budget import adapt_callbacks

    train_set = arrays_to_dataset(train_dataset)
    x0, _ = train_set[0]
    labels = train_set.tensors[1]
    if val_dataset is not None:
        val_set: Any = arrays_to_dataset(val_dataset, name="val_dataset")
        num_classes = int(max(int(labels.max()), int(val_set.tensors[1].max()))) + 1
    else:
        num_classes = int(labels.max()) + 1
        if not 0 <= validation_split < 1:
            raise EdgeTrainError(f"validation_split must be in [0, 1), got {validation_split}")
        n = len(train_set)
        n_val = math.ceil(validation_split * n) if validation_split > 0 else 0
        if n_val >= n:
            raise EdgeTrainError(f"validation_split {validation_split} leaves no training samples")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        val_set = Subset(train_set, order[:n_val].tolist()) if n_val else None
        train_set = Subset(train_set, order[n_val:].tolist())  # type: ignore[assignment]
    if dynamic_adjustments and val_set is None:
        raise EdgeTrainError(
            "dynamic_adjustments decide on validation accuracy: give val_dataset or a "
            "validation_split > 0"
        )
    if model is None:
        from edgetrain.zoo import build_model

        torch.manual_seed(seed)
        model = build_model(
            "cnn",
            num_classes=num_classes,
            in_channels=int(x0.shape[0]),
            input_size=(int(x0.shape[1]), int(x0.shape[2])),
        )
    log_path = Path(log_file)
    run_dir = Path(out) if out is not None else log_path.with_name(f"{log_path.stem}_run")
    adapt: dict[str, Any] = {"policy": "edgetrain" if dynamic_adjustments else "none"}
    if optimizer != "sgd":
        adapt["lr_scaling"] = "sqrt"  # square-root scaling suits adaptive optimizers
    if weights is not None:
        adapt["weights"] = dict(weights)
    settings: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": min(batch_size, len(train_set)),  # type: ignore[arg-type]
        "lr": lr,
        "optimizer": optimizer,
        "seed": seed,
        "out": str(run_dir),
        "model": type(model).__name__,
        "preprocessing": "none",
        "split": [1.0, 0.0, 0.0],
        "adapt": adapt,
        "budget": {"memory": budget},
        "prune": {"ratio": prune_ratio},
    }
    settings = _merge(settings, config)
    cfg = load_config(settings)
    callbacks = adapt_callbacks(cfg, train_set, val_set)
    fit_settings = {k: v for k, v in settings.items() if k != "model"}
    result = fit(
        model,
        train_set,
        val_set,
        callbacks=callbacks,
        overwrite=True,
        progress=progress,
        **fit_settings,
    )
    table = usage_log(run_dir)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(log_path, index=False)
    log.info("resource and decision log: %s (run directory %s)", log_path, run_dir)
    return result.model, result.history


def _read(path: Path) -> pd.DataFrame:
    if not path.exists() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_csv(path)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def usage_log(run_dir: str | Path) -> pd.DataFrame:
    """One row per epoch (and an epoch-0 row for decisions before training) from a run
    directory: metrics, the controller's own memory, and the epoch's decisions."""
    run = Path(run_dir)
    metrics = _read(run / "metrics.csv")
    decisions = _read(run / "decisions.csv")
    memory = _read(run / "adapt.csv")
    epochs = sorted(
        {int(e) for e in metrics.get("epoch", pd.Series(dtype=float)).dropna()}
        | {int(e) for e in decisions.get("epoch", pd.Series(dtype=float)).dropna()}
    )
    rows: list[dict[str, Any]] = []
    for epoch in epochs:
        row: dict[str, Any] = {"epoch": epoch}
        if not metrics.empty:
            match = metrics[metrics["epoch"] == epoch]
            if len(match):
                row.update({k: v for k, v in match.iloc[-1].items() if k in LOG_COLUMNS})
        if not memory.empty:
            match = memory[memory["epoch"] == epoch]
            if len(match):
                row["peak_memory_bytes"] = match.iloc[-1]["peak_bytes"]
                row["memory_budget_bytes"] = match.iloc[-1]["budget_bytes"]
        if not decisions.empty:
            match = decisions[decisions["epoch"] == epoch]
            if len(match):
                last = match.iloc[-1]
                for key in (
                    "memory_score",
                    "accuracy_score",
                    "priority_batch_size",
                    "priority_learning_rate",
                    "chosen",
                ):
                    row[key] = last[key]
                changed = match[match["parameter"].notna() & (match["parameter"] != "")]
                row["changes"] = "; ".join(
                    f"{r.parameter} {_fmt(r.old)}->{_fmt(r.new)}" for r in changed.itertuples()
                )
                row["reason"] = " | ".join(str(r) for r in match["reason"].dropna())
        rows.append(row)
    return pd.DataFrame(rows, columns=list(LOG_COLUMNS))


def usage_plot_data(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The series :func:`log_usage_plot` draws (computed apart from drawing).

    Keys: ``memory`` (epoch, peak_mib, budget_mib), ``batch`` (epoch, batch_size,
    micro_batch_size), ``lr`` (epoch, lr), ``accuracy`` (epoch, train_acc, val_acc) and
    ``changes`` (epoch, label) for the epochs where a decision changed something.
    """
    trained = frame[frame["epoch"] >= 1] if "epoch" in frame else frame
    mib = 2.0**20

    def cols(*names: str) -> pd.DataFrame:
        return pd.DataFrame(
            {n: pd.to_numeric(trained.get(n), errors="coerce") for n in ("epoch", *names)}
        ).reset_index(drop=True)

    memory = cols("peak_memory_bytes", "memory_budget_bytes")
    memory = pd.DataFrame(
        {
            "epoch": memory["epoch"],
            "peak_mib": memory["peak_memory_bytes"] / mib,
            "budget_mib": memory["memory_budget_bytes"] / mib,
        }
    )
    changes = frame[frame.get("changes", pd.Series(dtype=str)).fillna("").astype(str) != ""]
    return {
        "memory": memory,
        "batch": cols("batch_size", "micro_batch_size"),
        "lr": cols("lr"),
        "accuracy": cols("train_acc", "val_acc"),
        "changes": pd.DataFrame(
            {"epoch": changes["epoch"].astype(int), "label": changes["changes"].astype(str)}
        ).reset_index(drop=True),
    }


def log_usage_plot(log_file: str | Path) -> Path:
    """Plot a :func:`dynamic_train` log: memory vs budget, batch and micro-batch, learning
    rate, accuracy, with the epochs where a parameter changed marked. Writes a PNG next to
    the log (same name, ``.png``) and returns its path.

    Raises:
        EdgeTrainError: the log does not exist or is not a dynamic_train log.
    """
    path = Path(log_file)
    if not path.exists():
        raise EdgeTrainError(f"log file not found: {path}")
    frame = pd.read_csv(path)
    if "epoch" not in frame:
        raise EdgeTrainError(f"{path} is not a dynamic_train log (no 'epoch' column)")
    data = usage_plot_data(frame)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    panels = [
        (axes[0][0], "memory", ["peak_mib", "budget_mib"], "memory (MiB)"),
        (axes[0][1], "batch", ["batch_size", "micro_batch_size"], "samples"),
        (axes[1][0], "lr", ["lr"], "learning rate"),
        (axes[1][1], "accuracy", ["train_acc", "val_acc"], "accuracy"),
    ]
    for ax, key, columns, ylabel in panels:
        table = data[key]
        for column in columns:
            series = table[column]
            if series.notna().any():
                style = "--" if column == "budget_mib" else "-"
                ax.plot(table["epoch"], series, style, marker="o", markersize=3, label=column)
        for epoch in data["changes"]["epoch"]:
            ax.axvline(epoch, color="grey", alpha=0.3, linewidth=1)
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    fig.suptitle(f"{path.name}: grey lines mark epochs where the controller changed a value")
    target = path.with_suffix(".png")
    fig.savefig(target, dpi=100)
    return target
