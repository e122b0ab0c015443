"""The EdgeTrain entry point, its log and its plot; the adapt config section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from edgetrain.compat import (
    LOG_COLUMNS,
    arrays_to_dataset,
    dynamic_train,
    log_usage_plot,
    usage_plot_data,
)
from edgetrain.config import load_config
from edgetrain.errors import EdgeTrainError


def _arrays(n: int = 120, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    images = rng.integers(0, 80, (n, 8, 8, 1)).astype(np.uint8)
    images[labels == 1, :4] += 150  # learnable: bright top half
    images[labels == 2, :, :4] += 150  # bright left half
    return {"images": images, "labels": labels}


def test_arrays_become_channels_first_float_images():
    data = _arrays(4)
    ds = arrays_to_dataset(data)
    x, y = ds[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert int(y) == int(data["labels"][0])
    onehot = arrays_to_dataset({"images": data["images"], "labels": np.eye(3)[data["labels"]]})
    assert torch.equal(onehot.tensors[1], ds.tensors[1])
    first = arrays_to_dataset(
        {"images": np.moveaxis(data["images"], -1, 1), "labels": data["labels"]}
    )
    assert torch.equal(first.tensors[0], ds.tensors[0])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2], "mapping with 'images' and 'labels'"),
        ({"images": np.zeros((4, 8)), "labels": np.zeros(4)}, "shape"),
        ({"images": np.zeros((4, 8, 8, 1)), "labels": np.zeros(3)}, "labels"),
        ({"images": np.zeros((4, 8, 8, 1)), "labels": np.full(4, -1)}, ">= 0"),
    ],
)
def test_bad_arrays_are_clear_errors(data, match):
    with pytest.raises(EdgeTrainError, match=match):
        arrays_to_dataset(data)


def test_dynamic_train_trains_logs_and_plots(tmp_path):
    log_file = tmp_path / "logs/resource_log.csv"
    model, history = dynamic_train(
        _arrays(), epochs=3, batch_size=16, lr=1e-2, log_file=log_file, monitor={"enabled": False}
    )
    assert isinstance(model, torch.nn.Module)
    assert history.epoch.tolist() == [1, 2, 3]
    assert (tmp_path / "logs/resource_log_run/decisions.csv").exists()
    table = pd.read_csv(log_file)
    assert list(table.columns) == list(LOG_COLUMNS)
    assert table.epoch.tolist() == [1, 2, 3]
    assert table.lr.tolist() == history.lr.tolist()
    assert table.chosen.notna().all() and table.peak_memory_bytes.notna().all()
    png = log_usage_plot(log_file)
    assert png == log_file.with_suffix(".png") and png.stat().st_size > 1000


def test_dynamic_train_without_adjustments_changes_nothing(tmp_path):
    _, history = dynamic_train(
        _arrays(),
        epochs=2,
        batch_size=16,
        log_file=tmp_path / "log.csv",
        dynamic_adjustments=False,
        validation_split=0.0,
        monitor={"enabled": False},
    )
    assert history.lr.tolist() == [1e-3, 1e-3]
    assert pd.read_csv(tmp_path / "log.csv").changes.isna().all()


def test_dynamic_adjustments_need_validation(tmp_path):
    with pytest.raises(EdgeTrainError, match="validation"):
        dynamic_train(_arrays(), log_file=tmp_path / "log.csv", validation_split=0.0)


def test_plot_data_is_computed_apart_from_drawing():
    frame = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "peak_memory_bytes": [None, 2 * 2**20, 3 * 2**20],
            "memory_budget_bytes": [None, 4 * 2**20, 4 * 2**20],
            "batch_size": [None, 32, 32],
            "micro_batch_size": [None, 16, 8],
            "lr": [None, 0.1, 0.05],
            "train_acc": [None, 0.5, 0.6],
            "val_acc": [None, 0.4, 0.5],
            "changes": ["micro_batch_size 32->16", None, "lr 0.1->0.05"],
        }
    )
    data = usage_plot_data(frame)
    assert data["memory"].peak_mib.tolist() == [2.0, 3.0]
    assert data["memory"].budget_mib.tolist() == [4.0, 4.0]
    assert data["batch"].micro_batch_size.tolist() == [16, 8]
    assert data["changes"].epoch.tolist() == [0, 2]


def test_log_usage_plot_needs_a_log(tmp_path):
    with pytest.raises(EdgeTrainError, match="not found"):
        log_usage_plot(tmp_path / "missing.csv")


# -- the config section -------------------------------------------------------------------


def test_budget_memory_is_parsed_and_kept_as_given():
    cfg = load_config(overrides=["budget.memory=1.5GiB"])
    assert cfg.budget.memory == "1.5GiB" and cfg.budget.memory_bytes == int(1.5 * 2**30)
    assert load_config({"budget": {"memory": 1000}}).budget.memory_bytes == 1000
    assert load_config({}).budget.memory_bytes is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("budget.memory=lots", "budget.memory must be a size such as '1.5GiB'"),
        ("budget.memory=0", "budget.memory must be > 0 bytes"),
        ("adapt.memory_low_frac=0.9", "adapt.memory_low_frac must be < adapt.memory_high_frac"),
        ("adapt.lr_scaling=cubic", "adapt.lr_scaling must be one of"),
        ("adapt.margin=1", "adapt.margin must be < 1"),
        ("prune.ratio=1.5", "prune.ratio must be < 1"),
    ],
)
def test_config_errors_name_the_key_and_value(override, message):
    with pytest.raises(EdgeTrainError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(overrides=[override])


def test_weights_are_nested_keys():
    cfg = load_config(overrides=["adapt.weights.batch_size=0.7"])
    assert (cfg.adapt.weights.batch_size, cfg.adapt.weights.learning_rate) == (0.7, 0.6)
    with pytest.raises(EdgeTrainError, match="must not both be 0"):
        load_config(overrides=["adapt.weights.batch_size=0", "adapt.weights.learning_rate=0"])
