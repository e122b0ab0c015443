"""benchmarks/gpu_check.py runs end to end (on the CPU here; the GPU run is the same code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def test_gpu_check_reports_energy_per_epoch_and_the_readme_line(tmp_path):
    out = tmp_path / "numbers.json"
    args = ["--device", "cpu", "--model", "mlp", "--samples", "256", "--epochs", "2"]
    args += ["--out", str(tmp_path / "run"), "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    numbers = json.loads(out.read_text())
    epochs = numbers["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all(e["energy_j"] >= 0 and e["energy_source"] for e in epochs)
    assert "J per epoch" in numbers["line"] and "sampler at" in numbers["line"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr
