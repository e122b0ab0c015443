"""The ready transfer-learning configs validate and run from the CLI (shrunk to seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from edgetrain.cli import main
from edgetrain.config import load_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = [
    "--set",
    "epochs=1",
    "--set",
    "max_batches_per_epoch=1",
    "--set",
    "image_size=8",
    "--set",
    "model_args={width_mult: 0.25}",
    "--set",
    "monitor.enabled=false",
    "-q",
]


def test_transfer_configs_validate():
    pre = load_config(EXAMPLES / "transfer_pretrain.yaml")
    fine = load_config(EXAMPLES / "transfer_finetune.yaml")
    assert pre.data_args["classes"] == [0, 1, 2, 3, 4]
    assert fine.data_args["classes"] == [5, 6, 7, 8, 9]
    assert fine.init_from == pre.out
    assert fine.sparse_update.scheme == "velocity" and fine.sparse_update.budget == 0.1


def test_pretrain_then_finetune_from_the_cli(tmp_path):
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    main(["train", str(EXAMPLES / "transfer_pretrain.yaml"), "--out", str(pre), *TINY])
    assert (pre / "model.pt").exists()
    args = [str(EXAMPLES / "transfer_finetune.yaml"), "--out", str(fine), *TINY]
    main(["train", *args, "--set", f"init_from={pre}"])
    summary = json.loads((fine / "summary.json").read_text())
    assert summary["status"] == "completed"
    log = fine / "sparse_update.csv"
    assert set(pd.read_csv(log)["epoch"]) == {1}
    assert pd.read_csv(fine / "metrics.csv")["trainable_frac"].notna().all()


def test_finetune_without_pretrained_weights_is_a_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["train", str(EXAMPLES / "transfer_finetune.yaml"), "--set", "init_from=nowhere"])
    assert info.value.code == 2
    assert "init_from" in capsys.readouterr().err
