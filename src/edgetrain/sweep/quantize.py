"""Post-training dynamic int8 quantisation (greenscreen's "internal: quantize" knob).

The Linear layers of a trained model get int8 weights (activations are quantised on the
fly); convolutions stay in float. The result runs on the CPU only.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrain.errors import EdgeTrainError

__all__ = ["QuantizedResult", "evaluate_accuracy", "model_bytes", "quantize_model", "quantize_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizedResult:
    """Accuracy and size of a model before and after dynamic int8 quantisation."""

    split: str
    float_acc: float
    quantized_acc: float
    float_bytes: int
    quantized_bytes: int
    quantized_layers: int


def model_bytes(model: nn.Module) -> int:
    """Size of the serialised state dict in bytes (what ``model.pt`` would take)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def quantize_model(model: nn.Module) -> tuple[nn.Module, int]:
    """A CPU copy of ``model`` with dynamic int8 Linear layers, and how many were quantised."""
    float_model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    n_linear = sum(isinstance(m, nn.Linear) for m in float_model.modules())
    if n_linear == 0:
        return float_model, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(float_model, {nn.Linear}, dtype=torch.qint8)
    return quantized, n_linear


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Any, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on a whole split, on the CPU in float32."""
    from edgetrain.train.data import eval_loader

    model.eval()
    correct, total = 0, 0
    for x, y in eval_loader(dataset, batch_size=batch_size):
        out = model(x.float())
        correct += int((out.argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total if total else math.nan


def quantize_run(run_dir: str | Path, split: str = "val") -> QuantizedResult:
    """Quantise a finished run's ``model.pt`` and evaluate both models on one split.

    Args:
        run_dir: a run directory with config.yaml and model.pt.
        split: ``val`` (sweep trials) or ``test`` (the final report only).

    Raises:
        EdgeTrainError: no model.pt, or the split is empty.
    """
    from edgetrain.config import load_config
    from edgetrain.train import prepare_data
    from edgetrain.zoo import build_model

    run = Path(run_dir)
    weights = run / "model.pt"
    if not weights.exists():
        raise EdgeTrainError(f"cannot quantise {run}: no model.pt (did the run complete?)")
    cfg = load_config(run / "config.yaml")
    data, info = prepare_data(cfg)
    dataset = {"val": data.val, "test": data.test}.get(split)
    if dataset is None:
        raise EdgeTrainError(f"cannot evaluate the quantised model: the {split} split is empty")
    model = build_model(
        cfg.model,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_size,
        **cfg.model_args,
    )
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = model.float().eval()
    quantized, n = quantize_model(model)
    if n == 0:
        log.warning("%s has no Linear layer: dynamic quantisation leaves it unchanged", cfg.model)
    return QuantizedResult(
        split=split,
        float_acc=evaluate_accuracy(model, dataset),
        quantized_acc=evaluate_accuracy(quantized, dataset),
        float_bytes=model_bytes(model),
        quantized_bytes=model_bytes(quantized),
        quantized_layers=n,
    )
