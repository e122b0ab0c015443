"""The examples in examples/ load, validate and train (briefly: one short epoch)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from edgetrain.config import load_config
from edgetrain.train import train

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHORT = ("epochs=1", "max_batches_per_epoch=3", "monitor.enabled=false")

YAML_EXAMPLES = {
    # file: (task, metrics.csv columns the run must fill)
    "regression.yaml": ("regression", ("val_loss", "val_mae", "val_rmse", "val_r2")),
    "char_lm.yaml": ("language_modeling", ("val_loss", "val_perplexity", "val_token_acc")),
}


@pytest.mark.parametrize("name", sorted(YAML_EXAMPLES))
def test_yaml_example_loads_and_validates(name):
    config = load_config(EXAMPLES / name)
    assert config.monitor.enabled  # the examples record resources and energy
    if name == "char_lm.yaml":  # the model's positions cover the data's windows
        assert config.model_args["seq_len"] == config.data_args["seq_len"]


@pytest.mark.parametrize("name", sorted(YAML_EXAMPLES))
def test_yaml_example_trains_one_short_epoch(name, tmp_path):
    task, columns = YAML_EXAMPLES[name]
    result = train(EXAMPLES / name, overrides=[*SHORT, f"out={tmp_path / 'run'}"], progress=False)
    assert result.summary["status"] == "completed"
    assert result.summary["task"]["name"] == task
    assert result.summary["steps"] == 3
    row = result.history.iloc[-1]
    for column in ("train_loss", *columns):
        assert math.isfinite(float(row[column])), column
    assert (tmp_path / "run" / "model.pt").exists()


def _load_hf_tiny() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hf_tiny_example", EXAMPLES / "hf_tiny.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_tiny_without_transformers_says_so_and_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    assert _load_hf_tiny().main(["--smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "transformers" in err and "edgetrain[hf]" in err


def test_hf_tiny_smoke_fine_tunes_a_gpt2_built_from_a_config(tmp_path, capsys):
    pytest.importorskip("transformers")
    run = tmp_path / "run"
    assert _load_hf_tiny().main(["--smoke", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert '"task": "model_loss"' in out  # chosen by fit: dict batches, the model's own loss
    assert '"status": "completed"' in out
    assert (run / "model.pt").exists()
