"""Exact accounting on models small enough to count by hand; report() has no side effects."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.memory import (
    SavedTensorCounter,
    measure_saved_bytes,
    render_memory_report,
    report,
    unique_bytes,
)

F32 = 4


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


PARAM_BYTES = (6 * 8 + 8 + 8 * 3 + 3) * F32


def test_saved_bytes_by_hand_linear_relu_linear() -> None:
    model = _mlp()
    x = torch.randn(4, 6)
    with SavedTensorCounter(model) as counter:
        out = model(x)
    # Linear 1 saves x (the weight is not needed: x does not require grad);
    # ReLU saves its output; Linear 2 saves that same output (counted once) and
    # weight.t() (a parameter view, not counted)
    assert counter.total_bytes == 4 * 6 * F32 + 4 * 8 * F32
    assert counter.per_module == {"0": 4 * 6 * F32, "1": 4 * 8 * F32}
    assert counter.current_bytes == counter.peak_bytes == counter.total_bytes
    out.sum().backward()
    del out
    assert counter.current_bytes == 0
    assert counter.peak_bytes == counter.total_bytes


def test_linear_on_3d_input_counts_the_storage_once() -> None:
    lin = nn.Linear(6, 8)
    x = torch.randn(2, 5, 6)
    with SavedTensorCounter(lin) as counter:
        out = torch.relu(lin(torch.relu(x)))
    assert counter.total_bytes == 2 * 5 * 6 * F32 + 2 * 5 * 8 * F32
    out.sum().backward()


def test_measure_saved_bytes() -> None:
    model = _mlp()
    x = torch.randn(5, 6)
    assert measure_saved_bytes(lambda: model(x), model) == 5 * 6 * F32 + 5 * 8 * F32
    with torch.no_grad():
        assert measure_saved_bytes(lambda: model(x), model) == 0


def test_report_exact_with_sgd_momentum() -> None:
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    batch = (torch.randn(4, 6), torch.randint(0, 3, (4,)))
    rep = report(model, optimizer, batch, loss_fn=lambda out, _y: out.sum())
    assert rep.param_bytes == PARAM_BYTES
    assert rep.grad_bytes == PARAM_BYTES
    assert rep.optimizer_state_bytes == PARAM_BYTES  # one momentum buffer per parameter
    assert rep.buffer_bytes == 0
    assert rep.activation_bytes == 4 * 6 * F32 + 4 * 8 * F32  # out.sum() saves nothing
    assert rep.batch_size == 4
    assert rep.per_sample_activation_bytes == rep.activation_bytes / 4
    assert rep.total_bytes == 3 * PARAM_BYTES + rep.activation_bytes
    assert rep.static_bytes == 3 * PARAM_BYTES
    rows = {row.layer: row for row in rep.per_layer}
    assert rows["0"].activation_bytes == 4 * 6 * F32 and rows["0"].param_bytes == (48 + 8) * F32
    assert rows["1"].type == "ReLU" and rows["1"].param_bytes == 0
    assert rows["2"].activation_bytes == 0 and rows["2"].param_bytes == (24 + 3) * F32
    assert sum(r.activation_bytes for r in rep.per_layer) == rep.activation_bytes


def test_report_adam_state_and_loss_row() -> None:
    model = _mlp()
    optimizer = torch.optim.Adam(model.parameters())
    rep = report(model, optimizer, (torch.randn(4, 6), torch.randint(0, 3, (4,))))
    n_params = len(list(model.parameters()))
    # exp_avg and exp_avg_sq per parameter, plus a float32 0-d step count each
    assert rep.optimizer_state_bytes == 2 * PARAM_BYTES + n_params * F32
    frame = rep.per_layer_frame()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["layer", "type", "activation_bytes", "param_bytes"]
    loss_rows = frame[frame.layer == "(loss)"]
    assert len(loss_rows) == 1 and int(loss_rows.activation_bytes.iloc[0]) > 0  # log-softmax
    assert int(frame.activation_bytes.sum()) == rep.activation_bytes


def test_report_counts_tied_weights_once() -> None:
    emb = nn.Linear(8, 8, bias=False)
    model = nn.Sequential(emb, nn.ReLU(), emb)
    rep = report(model, None, torch.randn(2, 8))
    assert rep.param_bytes == 8 * 8 * F32
    assert rep.optimizer_state_bytes == 0


def _state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "opt_ids": {id(p): {k: id(v) for k, v in s.items()} for p, s in optimizer.state.items()},
        "opt": {
            id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for p, s in optimizer.state.items()
        },
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "rng": torch.get_rng_state(),
        "training": [m.training for m in model.modules()],
    }


def _assert_state_equal(a: dict, b: dict) -> None:
    for x, y in zip(a["params"], b["params"], strict=True):
        assert torch.equal(x, y)
    assert a["grad_ids"] == b["grad_ids"]
    for x, y in zip(a["grads"], b["grads"], strict=True):
        assert (x is None and y is None) or torch.equal(x, y)
    for x, y in zip(a["buffers"], b["buffers"], strict=True):
        assert torch.equal(x, y)
    assert a["opt_ids"] == b["opt_ids"]
    assert a["opt"].keys() == b["opt"].keys()
    for key, state in a["opt"].items():
        for name, value in state.items():
            other = b["opt"][key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other
    assert a["groups"] == b["groups"]
    assert torch.equal(a["rng"], b["rng"])
    assert a["training"] == b["training"]


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_report_has_no_side_effects(trained: bool, opt: str) -> None:
    model = _bn_model()
    optimizer = (
        torch.optim.Adam(model.parameters(), lr=0.01)
        if opt == "adam"
        else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    if trained:  # existing state and gradients
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()  # a flag that must survive
    before = _state(model, optimizer)
    rep = report(model, optimizer, (x, y))
    assert rep.optimizer_state_bytes > 0 and rep.activation_bytes > 0
    _assert_state_equal(before, _state(model, optimizer))
    if not trained:
        assert not optimizer.state  # lazily created state removed again
    # training continues exactly as without the report
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_report_training_identical_to_without() -> None:
    runs = []
    for with_report in (False, True):
        model = _bn_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
        torch.manual_seed(3)
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
        for step in range(3):
            if with_report and step == 1:
                report(model, optimizer, (x, y))
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()  # dropout draws from the RNG
            optimizer.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_report_bad_inputs() -> None:
    model = _mlp()
    with pytest.raises(EdgeTrainError, match="batch must be"):
        report(model, None, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(EdgeTrainError, match="one element"):
        report(model, None, torch.randn(2, 6), loss_fn=lambda out, _y: out)


def test_render_memory_report() -> None:
    model = _mlp()
    rep = report(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.randn(4, 6))
    table = render_memory_report(rep)
    assert isinstance(table, Table)
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "ReLU" in text and "optimizer state" in text and "per sample" in text


def test_unique_bytes_dedups_views() -> None:
    t = torch.zeros(10, 10)
    assert unique_bytes([t, t[1:], t.t(), None, torch.zeros(3)]) == 400 + 12
