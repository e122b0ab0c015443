"""A short training run on a real NVIDIA GPU records NVML energy per epoch (skipped without)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from edgetrain.train import train

pynvml = pytest.importorskip("pynvml", reason="needs nvidia-ml-py (pip install edgetrain[gpu])")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_cuda_run_records_nvml_energy_per_epoch(tmp_path):
    result = train(
        overrides=[
            "model=resnet18",
            "data=synthetic",
            "data_args.num_samples=4096",
            "device=cuda",
            "epochs=2",
            "batch_size=128",
            "monitor.interval_s=0.1",
            f"out={tmp_path / 'run'}",
        ],
        progress=False,
    )
    run = result.run_dir
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 2
    assert metrics["energy_source"].str.contains("measured:nvml").all()
    assert (metrics["energy_j"] > 0).all()
    assert (metrics["avg_power_w"] > 0).all()
    assert (metrics["peak_device_mem_bytes"] > 0).all()
    resources = pd.read_csv(run / "resources.csv")
    assert {"gpu_util_pct", "gpu_mem_bytes", "gpu_power_w"} <= set(resources.columns)
    assert resources["gpu_mem_bytes"].max() > 0
    env = json.loads((run / "env.json").read_text())
    nvml = [s for s in env["sensors"] if s["name"] == "nvml"]
    assert nvml and nvml[0]["available"]
