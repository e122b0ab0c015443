"""activations: <mode> inside training."""

from __future__ import annotations

import pandas as pd
import torch

import edgetrain

BASE = {
    "model": "cnn",
    "data": "digits",
    "epochs": 2,
    "batch_size": 64,
    "monitor": {"enabled": False},
}


def test_lossless_training_matches_uncompressed_and_logs_smaller_bytes(tmp_path):
    plain = edgetrain.train(
        {**BASE, "activations": "none", "out": str(tmp_path / "a")}, progress=False
    )
    packed = edgetrain.train(
        {**BASE, "activations": "lossless", "out": str(tmp_path / "b")}, progress=False
    )
    cols = ["train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(plain.history[cols], packed.history[cols], check_exact=True)
    a, b = plain.model.state_dict(), packed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (packed.history["activation_bytes"] < plain.history["activation_bytes"]).all()
    assert packed.summary["activations"]["mode"] == "lossless"


def test_activations_off_leaves_column_empty(tmp_path):
    res = edgetrain.train({**BASE, "epochs": 1, "out": str(tmp_path / "a")}, progress=False)
    assert res.history["activation_bytes"].isna().all()


def test_bare_off_in_yaml_means_off(tmp_path):
    from edgetrain.config import load_config

    assert load_config(overrides=["activations=off"]).activations == "off"
