"""Optimizer in backward: the same parameters as the plain step, gradients freed, resume."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_net
from torch import nn

from edgetrain.config import TrainConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.train.callbacks import TrainState
from edgetrain.train.features.optim_backward import OptimizerInBackward

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    # the multi-tensor path (CUDA's default) against one tensor per optimizer
    "adam_foreach": lambda p: torch.optim.Adam(p, lr=1e-2, foreach=True),
    "sgd_foreach": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, foreach=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
}


def _data(count: int, n: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(n, 2, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
        for _ in range(count)
    ]


def _state(model: nn.Module, optimizer: torch.optim.Optimizer, **config: Any) -> TrainState:
    cfg = TrainConfig(**config)
    return TrainState(
        config=cfg,
        model=model,
        optimizer=optimizer,
        device=torch.device("cpu"),
        run=None,
        train_size=0,
        task=None,  # type: ignore[arg-type]  # the test's step computes the loss itself
        batch_size=cfg.batch_size,
        micro_batch_size=cfg.micro_batch_size or cfg.batch_size,
    )


def _train_step(state: TrainState, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """loop.train_step with the wiring: the hooks step only a batch without accumulation."""
    x, y = batch
    n = len(y)
    micro = max(1, min(state.micro_batch_size, n))
    in_backward = getattr(state, "step_in_backward", False) and micro >= n
    state.optimizer.zero_grad(set_to_none=True)
    for lo in range(0, n, micro):
        loss = F.cross_entropy(state.model(x[lo : lo + micro]), y[lo : lo + micro], reduction="sum")
        state.in_optimizer_step = in_backward  # the hooks step parameters during backward
        (loss / n).backward()
        state.in_optimizer_step = False
    if in_backward:
        return
    state.in_optimizer_step = True
    state.optimizer.step()
    state.in_optimizer_step = False


def _pair(make: Callable[[Any], torch.optim.Optimizer], **config: Any) -> tuple[TrainState, ...]:
    """A plain state and one with OptimizerInBackward started, from identical models."""
    plain_model = tiny_net()
    fused_model = copy.deepcopy(plain_model)
    plain = _state(plain_model, make(plain_model.parameters()), **config)
    fused = _state(fused_model, make(fused_model.parameters()), **config)
    return plain, fused


def _assert_same(a: nn.Module, b: nn.Module) -> None:
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_same_parameters_as_the_plain_step(name: str) -> None:
    plain, fused = _pair(OPTIMIZERS[name], batch_size=16)
    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    for i, batch in enumerate(_data(6)):
        if i == 3:  # the schedule changes the rate between epochs
            for st in (plain, fused):
                for group in st.optimizer.param_groups:
                    group["lr"] *= 0.5
        _train_step(plain, batch)
        cb.on_batch_start(fused)
        _train_step(fused, batch)
        cb.on_batch_end(fused)
        _assert_same(plain.model, fused.model)
    assert cb.steps_in_backward == 6 and cb.steps_plain == 0
    # the moments live in the optimizer itself, as with the plain step
    sp, sf = plain.optimizer.state_dict()["state"], fused.optimizer.state_dict()["state"]
    assert sp.keys() == sf.keys()
    for k in sp:
        for key, value in sp[k].items():
            assert torch.equal(value, sf[k][key]), (k, key)


def test_param_groups_keep_their_settings() -> None:
    def make(params: Any) -> torch.optim.Optimizer:
        params = list(params)
        return torch.optim.SGD(
            [{"params": params[:2], "lr": 0.2, "weight_decay": 0.01}, {"params": params[2:]}],
            lr=0.05,
            momentum=0.9,
        )

    plain, fused = _pair(make, batch_size=16)
    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    for batch in _data(4):
        _train_step(plain, batch)
        cb.on_batch_start(fused)
        _train_step(fused, batch)
    _assert_same(plain.model, fused.model)


def test_at_most_one_gradient_alive_during_backward() -> None:
    _, fused = _pair(OPTIMIZERS["sgd_momentum"], batch_size=16)
    params = list(fused.model.parameters())
    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    alive: list[int] = []
    for p in params:  # runs after the callback's hook: the others' gradients are freed
        p.register_post_accumulate_grad_hook(
            lambda _p: alive.append(sum(q.grad is not None for q in params))
        )
    _train_step(fused, _data(1)[0])
    assert alive and max(alive) == 0  # each gradient is freed as soon as its step is done
    assert all(p.grad is None for p in params)


def test_inactive_with_accumulation_and_outside_the_step() -> None:
    plain, fused = _pair(OPTIMIZERS["adam"], batch_size=16, micro_batch_size=4)
    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    before = [p.detach().clone() for p in fused.model.parameters()]
    # a backward outside the loop's step (a probe) leaves parameters and gradients alone
    x, y = _data(1)[0]
    F.cross_entropy(fused.model(x), y).backward()
    assert all(torch.equal(a, b) for a, b in zip(before, fused.model.parameters(), strict=True))
    assert all(p.grad is not None for p in fused.model.parameters())
    for batch in _data(3):
        _train_step(plain, batch)
        cb.on_batch_start(fused)
        _train_step(fused, batch)
        cb.on_batch_end(fused)
    _assert_same(plain.model, fused.model)
    assert cb.steps_in_backward == 0 and cb.steps_plain == 3


def test_switching_between_accumulation_and_backward_steps() -> None:
    """A budget controller changes the micro-batch: both paths continue one state."""
    plain, fused = _pair(OPTIMIZERS["adamw"], batch_size=16)
    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    for i, batch in enumerate(_data(6)):
        micro = 8 if i in (1, 2, 4) else 16
        plain.micro_batch_size = fused.micro_batch_size = micro
        _train_step(plain, batch)
        cb.on_batch_start(fused)
        _train_step(fused, batch)
        cb.on_batch_end(fused)
        _assert_same(plain.model, fused.model)
    assert (cb.steps_in_backward, cb.steps_plain) == (3, 3)


def test_checkpoint_round_trip_resumes_exactly() -> None:
    data = _data(6)
    plain, fused = _pair(OPTIMIZERS["adam"], batch_size=16)
    for batch in data:
        _train_step(plain, batch)

    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    for batch in data[:3]:
        cb.on_batch_start(fused)
        _train_step(fused, batch)
        cb.on_batch_end(fused)
    buf = io.BytesIO()
    torch.save(
        {
            "model": fused.model.state_dict(),
            "optimizer": fused.optimizer.state_dict(),
            "callbacks": {cb.key: cb.state_dict()},
        },
        buf,
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    # a fresh run, restored as api._restore does (before on_fit_start)
    model = tiny_net(seed=5)
    resumed = _state(model, OPTIMIZERS["adam"](model.parameters()), batch_size=16)
    resumed.model.load_state_dict(ckpt["model"])
    resumed.optimizer.load_state_dict(ckpt["optimizer"])
    cb2 = OptimizerInBackward()
    cb2.load_state_dict(ckpt["callbacks"][cb2.key])
    assert cb2.steps_in_backward == 3
    cb2.on_fit_start(resumed)
    for batch in data[3:]:
        cb2.on_batch_start(resumed)
        _train_step(resumed, batch)
        cb2.on_batch_end(resumed)
    _assert_same(plain.model, resumed.model)
    assert cb2.summary() == {
        "optimizer_in_backward": {"steps_in_backward": 6, "steps_folded": 0, "steps_plain": 0}
    }


def test_optimizer_state_loaded_mid_run_is_followed() -> None:
    plain, fused = _pair(OPTIMIZERS["sgd_momentum"], batch_size=16)
    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    data = _data(4)
    for batch in data[:2]:
        _train_step(plain, batch)
        cb.on_batch_start(fused)
        _train_step(fused, batch)
    fused.optimizer.load_state_dict(copy.deepcopy(fused.optimizer.state_dict()))
    for group in (*plain.optimizer.param_groups, *fused.optimizer.param_groups):
        group["lr"] = 0.01  # set on the new groups: the callback must follow them
    for batch in data[2:]:
        _train_step(plain, batch)
        cb.on_batch_start(fused)
        _train_step(fused, batch)
    _assert_same(plain.model, fused.model)


def test_fit_end_removes_the_hooks() -> None:
    _, fused = _pair(OPTIMIZERS["sgd_momentum"], batch_size=16)
    cb = OptimizerInBackward()
    cb.on_fit_start(fused)
    assert fused.step_in_backward
    cb.on_fit_end(fused)
    assert not fused.step_in_backward
    fused.in_optimizer_step = True
    x, y = _data(1)[0]
    F.cross_entropy(fused.model(x), y).backward()
    assert all(p.grad is not None for p in fused.model.parameters())


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"grad_clip_norm": 1.0}, "grad_clip_norm"),
        ({"precision": "fp16"}, "fp16"),
        ({"on_nonfinite": "skip"}, "on_nonfinite"),
        ({"sparse_update": {"scheme": "velocity"}}, "sparse_update"),
    ],
)
def test_refuses_what_needs_every_gradient(config: dict[str, Any], words: str) -> None:
    model = tiny_net()
    state = _state(model, torch.optim.SGD(model.parameters(), lr=0.1), **config)
    with pytest.raises(EdgeTrainError, match=words) as info:
        OptimizerInBackward().on_fit_start(state)
    assert "\n" not in str(info.value)


def test_refuses_step_hooks_and_closures() -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.register_step_pre_hook(lambda *a: None)
    with pytest.raises(EdgeTrainError, match="step hooks"):
        OptimizerInBackward().on_fit_start(_state(model, opt))
    lbfgs = torch.optim.LBFGS(model.parameters())
    with pytest.raises(EdgeTrainError, match="LBFGS"):
        OptimizerInBackward().on_fit_start(_state(model, lbfgs))
