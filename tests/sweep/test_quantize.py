"""Post-training dynamic int8 quantisation (the "internal: quantize" knob)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.sweep.quantize import model_bytes, quantize_model, quantize_run
from edgetrain.sweep.trial import trial_metrics


def test_quantized_linear_layers_are_smaller_and_close():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    quantized, n = quantize_model(model)
    assert n == 2
    assert model_bytes(quantized) < 0.4 * model_bytes(model)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), quantized(x), atol=0.05)
    assert model[1].weight.dtype == torch.float32  # the original is untouched
    _, none = quantize_model(nn.Sequential(nn.Conv2d(1, 2, 3)))
    assert none == 0


def test_quantize_run_reports_val_accuracy_and_sizes(tmp_path, tiny_base):
    from edgetrain.train import train

    fit = train({**tiny_base, "out": str(tmp_path / "run")}, progress=False)
    result = quantize_run(tmp_path / "run", split="val")
    assert result.split == "val" and result.quantized_layers == 2
    assert result.float_acc == pytest.approx(fit.summary["final"]["val_acc"])
    assert abs(result.quantized_acc - result.float_acc) < 0.1
    assert result.quantized_bytes < result.float_bytes
    metrics = trial_metrics(fit.summary)
    assert metrics["val_acc"] == fit.summary["final"]["val_acc"]
    assert metrics["energy_j"] == fit.summary["total_energy_j"]
    assert "test_acc" not in metrics  # trials never report test metrics
    with pytest.raises(EdgeTrainError, match=r"no model\.pt"):
        quantize_run(tmp_path, split="val")
