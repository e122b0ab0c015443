"""Real CUDA out-of-memory recovery and the CUDA budget (skipped without a GPU)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

from edgetrain.train import fit
from edgetrain.train.features.budget import AdaptiveCallback
from edgetrain.zoo import build_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

MiB = 2**20


def _data(n: int = 512) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    )


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    # about 1.5 MiB of saved activations per sample: batch 256 needs about 400 MiB
    return build_model("cnn", num_classes=10, in_channels=3, input_size=32, channels=[64, 128])


def test_cuda_oom_shrinks_the_micro_batch_and_retries(tmp_path):
    data = _data()
    device = torch.device("cuda")
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    total = torch.cuda.get_device_properties(device).total_memory
    # cap this process's allocator at what it holds now + 128 MiB: batch 256 cannot fit
    torch.cuda.set_per_process_memory_fraction(min(1.0, (base + 128 * MiB) / total), device)
    try:
        result = fit(
            _model(),
            data,
            data,
            out=tmp_path / "r",
            callbacks=[AdaptiveCallback()],
            device="cuda",
            epochs=1,
            batch_size=256,
            adapt={"policy": "budget"},
            progress=False,
            monitor={"enabled": False},
        )
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    oom = decisions[decisions.reason.str.contains("out of memory")]
    assert len(oom) >= 1 and (oom.new < oom.old).all()
    assert result.history.batch_size.tolist() == [256]
    assert result.history.micro_batch_size.iloc[0] < 256
    assert result.history.accum_steps.iloc[0] > 1
    assert result.summary["adapt"]["oom_retries"] == len(oom)


def test_cuda_budget_is_measured_with_the_allocator(tmp_path):
    data = _data()
    result = fit(
        _model(),
        data,
        data,
        out=tmp_path / "r",
        callbacks=[AdaptiveCallback(probe_data=data)],
        device="cuda",
        epochs=1,
        batch_size=256,
        budget={"memory": "160MiB"},
        adapt={"policy": "budget"},
        progress=False,
        monitor={"enabled": False},
    )
    adapt = result.summary["adapt"]
    assert adapt["memory_source"] == "cuda:max-allocated"
    assert adapt["within_budget"] is True and adapt["budget_violations"] == 0
    assert result.history.micro_batch_size.iloc[0] < 256


def test_bf16_optimizer_state_on_cuda_saves_allocated_memory():
    """optimizer_state: bf16 on the GPU: the state is stored in bfloat16 on the device
    and max_memory_allocated over a step falls by about the bytes saved."""
    from edgetrain.memory.optimizer_state import LowPrecisionState

    device = torch.device("cuda")
    peaks = {}
    for state in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = torch.nn.Linear(2048, 2048, bias=False).to(device)  # 16 MiB of weights
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        if state == "bf16":
            LowPrecisionState(opt)
        x = torch.randn(64, 2048, device=device)
        for _ in range(2):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        peaks[state] = torch.cuda.max_memory_allocated(device)
        moments = [v for s in opt.state.values() for v in s.values() if v.numel() > 1]
        assert all(v.is_cuda for v in moments)
        assert {v.dtype for v in moments} == {torch.float32 if state == "fp32" else torch.bfloat16}
        del model, opt, moments
        torch.cuda.empty_cache()
    saved = peaks["fp32"] - peaks["bf16"]
    assert saved >= 12 * MiB  # 16 MiB of the two moments' 32, less the slices' transients
