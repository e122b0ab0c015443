"""optimizer_state: bf16: the state stored in bfloat16, each step computed as the optimizer
computes it, unbiased rounding, every caller of step(), the step in backward, resume."""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import Blobs, tiny_net
from test_optim_backward import _assert_same, _data, _state, _train_step

import edgetrain
from edgetrain.errors import EdgeTrainError
from edgetrain.memory.accounting import report
from edgetrain.memory.optimizer_state import LowPrecisionState, installed, stochastic_round
from edgetrain.train.features.optim_backward import OptimizerInBackward
from edgetrain.train.features.optim_state import OptimizerStateCallback

QUIET = {"monitor": {"enabled": False}}


def _moments(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [
        v
        for s in optimizer.state.values()
        for v in s.values()
        if isinstance(v, torch.Tensor) and v.numel() > 1
    ]


def test_stochastic_rounding_is_unbiased_and_lands_on_neighbours() -> None:
    gen = torch.Generator().manual_seed(0)
    # 1 + 1/512 lies a quarter of the way from 1 to the next bfloat16 (1 + 1/128)
    for value in (1.0 + 1 / 512, -(1.0 + 1 / 512), 3e-5, -7.25e3):
        x = torch.full((200_000,), value)
        r = stochastic_round(x, torch.bfloat16, gen)
        assert r.dtype == torch.bfloat16
        # the two bfloat16 values around x (within one of its steps, 2^-7 relative)
        assert len(r.unique()) == 2
        assert ((r.float() - x).abs() <= x.abs() * 2**-7).all()
        assert r.double().mean().item() == pytest.approx(value, rel=2e-4)
    # round-to-nearest would always give 1.0 here: the mean would be off by 1/512
    x = torch.full((100_000,), 1.0 + 1 / 512)
    assert x.to(torch.bfloat16).double().mean().item() == 1.0
    special = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0])
    assert torch.equal(stochastic_round(special, torch.bfloat16), special.bfloat16())
    assert stochastic_round(torch.tensor([float("nan")]), torch.bfloat16).isnan().all()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, amsgrad=True),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
    ],
    ids=["sgd", "adam", "adamw_amsgrad", "rmsprop"],
)
def test_state_is_bf16_half_the_bytes_and_training_follows_fp32(make: Any) -> None:
    plain_model = tiny_net()
    low_model = copy.deepcopy(plain_model)
    start = [p.detach().clone() for p in plain_model.parameters()]
    plain, low = make(plain_model.parameters()), make(low_model.parameters())
    lp = LowPrecisionState(low, seed=3)
    assert installed(low) is lp
    for x, y in _data(30):
        for model, opt in ((plain_model, plain), (low_model, low)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    assert all(v.dtype == torch.bfloat16 for v in _moments(low))
    assert all(v.dtype == torch.float32 for v in _moments(plain))
    full = sum(v.numel() * 4 for v in _moments(plain))
    assert sum(v.numel() * v.element_size() for v in _moments(low)) * 2 == full
    moved = torch.cat(
        [(a - s).flatten() for a, s in zip(plain_model.parameters(), start, strict=True)]
    )
    apart = torch.cat(
        [
            (b - a).flatten()
            for a, b in zip(plain_model.parameters(), low_model.parameters(), strict=True)
        ]
    )
    # the same training, a few percent apart after 30 steps (rounding, then chaos)
    assert 0 < apart.norm() < 0.1 * moved.norm()
    # gradients are given back after the step (the optimizer's own step skipped them)
    assert all(p.grad is not None for p in low_model.parameters())


def test_adam_second_moment_tracks_fp32_where_round_to_nearest_freezes() -> None:
    """beta2 = 0.999 moves v by 0.1% a step, below bfloat16's 0.4% resolution."""

    def run(mode: str) -> torch.Tensor:
        p = torch.nn.Parameter(torch.zeros(4096))
        opt = torch.optim.Adam([p], lr=1e-4)
        lp = LowPrecisionState(opt, seed=0) if mode == "stochastic" else None
        gen = torch.Generator().manual_seed(0)
        for i in range(400):
            scale = 1.0 if i < 100 else 2.0  # the gradients double: v must grow 4x
            p.grad = scale * (1 + 0.1 * torch.randn(4096, generator=gen))
            opt.step()
            if mode == "nearest":
                for s in opt.state.values():
                    for k in ("exp_avg", "exp_avg_sq"):
                        s[k] = s[k].bfloat16().float()
        if lp is not None:
            lp.remove()
        return opt.state[p]["exp_avg_sq"].float()

    exact, low, nearest = run("exact"), run("stochastic"), run("nearest")
    err_low = ((low.mean() - exact.mean()) / exact.mean()).abs().item()
    err_nearest = ((nearest.mean() - exact.mean()) / exact.mean()).abs().item()
    assert err_low < 0.01
    assert err_nearest > 0.05  # the control: plain rounding loses the growth


def test_every_caller_of_step_gets_it_and_schedulers_do_not_warn() -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)  # before the install
    LowPrecisionState(opt)
    x, y = _data(1)[0]
    # the memory accounting's real step counts the state as stored: half of fp32
    rep = report(model, opt, (x, y))
    params = sum(p.numel() * 4 for p in model.parameters())
    assert rep.optimizer_state_bytes == params // 2
    assert not opt.state  # report restored the optimizer
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert all(v.dtype == torch.bfloat16 for v in _moments(opt))


def test_step_in_backward_with_bf16_state() -> None:
    """Both levers together: the hooks in backward step through the low-precision path."""
    data = _data(8)
    models = [tiny_net(), tiny_net()]
    states = [_state(m, torch.optim.Adam(m.parameters(), lr=1e-2), batch_size=16) for m in models]
    LowPrecisionState(states[0].optimizer, seed=1)
    LowPrecisionState(states[1].optimizer, seed=1)
    cb = OptimizerInBackward()
    cb.on_fit_start(states[1])  # not refused for the low-precision hooks
    for batch in data:
        _train_step(states[0], batch)
        cb.on_batch_start(states[1])
        _train_step(states[1], batch)
        cb.on_batch_end(states[1])
    assert cb.steps_in_backward == len(data)
    assert all(v.dtype == torch.bfloat16 for v in _moments(states[1].optimizer))
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        # the same updates; the rounding draws come in another order (backward's)
        assert torch.allclose(a, b, rtol=0.02, atol=2e-3)


def test_refuses_closures_and_a_second_install() -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    LowPrecisionState(opt)
    with pytest.raises(EdgeTrainError, match="already"):
        LowPrecisionState(opt)
    x, y = _data(1)[0]

    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(EdgeTrainError, match="closure"):
        opt.step(closure)
    with pytest.raises(EdgeTrainError, match="LBFGS"):
        LowPrecisionState(torch.optim.LBFGS(model.parameters()))
    with pytest.raises(EdgeTrainError, match="optimizer_state must be one of"):
        OptimizerStateCallback("int3")


def test_callback_checkpoint_round_trip_resumes_exactly() -> None:
    data = _data(6)

    def fresh() -> Any:
        m = tiny_net()
        return _state(m, torch.optim.Adam(m.parameters(), lr=1e-2), batch_size=16)

    whole = fresh()
    cb = OptimizerStateCallback("bf16", seed=4)
    cb.on_fit_start(whole)
    for batch in data:
        cb.on_batch_start(whole)
        _train_step(whole, batch)

    first = fresh()
    cb1 = OptimizerStateCallback("bf16", seed=4)
    cb1.on_fit_start(first)
    for batch in data[:3]:
        cb1.on_batch_start(first)
        _train_step(first, batch)
    buf = io.BytesIO()
    torch.save(
        {
            "model": first.model.state_dict(),
            "optimizer": first.optimizer.state_dict(),
            "cb": cb1.state_dict(),
        },
        buf,
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = fresh()
    resumed.model.load_state_dict(ckpt["model"])
    resumed.optimizer.load_state_dict(ckpt["optimizer"])  # casts the state to fp32
    cb2 = OptimizerStateCallback("bf16", seed=4)
    cb2.load_state_dict(ckpt["cb"])
    cb2.on_fit_start(resumed)
    assert all(v.dtype == torch.bfloat16 for v in _moments(resumed.optimizer))
    for batch in data[3:]:
        cb2.on_batch_start(resumed)
        _train_step(resumed, batch)
    _assert_same(whole.model, resumed.model)
    cb2.on_fit_end(resumed)
    assert installed(resumed.optimizer) is None
    assert cb2.summary()["optimizer_state"]["dtype"] == "bf16"


def test_training_run_keeps_bf16_state_and_resumes(tmp_path: Any) -> None:
    settings = {"out": str(tmp_path / "r"), "progress": False, "optimizer": "sgd", **QUIET}
    settings["optimizer_state"] = "bf16"
    res = edgetrain.fit(tiny_net(), Blobs(96), Blobs(48, seed=1), epochs=1, **settings)
    info = res.summary["optimizer_state"]
    params = sum(p.numel() * 4 for p in tiny_net().parameters())
    assert info == {"dtype": "bf16", "state_bytes": params // 2}
    ckpt = torch.load(res.run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert all(
        v.dtype == torch.bfloat16
        for s in ckpt["optimizer"]["state"].values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    env = (res.run_dir / "env.json").read_text()
    assert '"release"' in env  # a memory lever: the allocator releases on CPU
    resumed = edgetrain.fit(
        tiny_net(), Blobs(96), Blobs(48, seed=1), epochs=2, resume=True, **settings
    )
    assert len(resumed.history) == 2
    assert resumed.summary["optimizer_state"]["state_bytes"] == params // 2


def test_config_rejects_unknown_state_dtype(tmp_path: Any) -> None:
    with pytest.raises(EdgeTrainError, match="optimizer_state"):
        edgetrain.train(
            {"model": "cnn", "data": "digits", "optimizer_state": "int8", "out": str(tmp_path)},
            progress=False,
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, amsgrad=True),
        lambda p: torch.optim.Adagrad(p, lr=0.05),
    ],
    ids=["sgd", "adam", "adamw_amsgrad", "adagrad"],
)
def test_large_parameters_step_in_slices_exactly(
    make: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slices of 16 elements (the tiny net's weights have 72 and 192): the first step, from
    no state, updates every weight exactly as fp32 does (the state is rounded only after
    it was used); later steps follow fp32 and the step count is the optimizer's."""
    import edgetrain.memory.optimizer_state as ost

    monkeypatch.setattr(ost, "_CHUNK", 16)
    plain_model = tiny_net()
    low_model = copy.deepcopy(plain_model)
    plain, low = make(plain_model.parameters()), make(low_model.parameters())
    lp = LowPrecisionState(low, seed=0)
    weight = next(low_model.parameters())
    stepped: list[int] = []
    original = lp._step_slices
    monkeypatch.setattr(
        lp, "_step_slices", lambda p, g: (stepped.append(p.numel()), original(p, g))
    )
    data = _data(12)
    for i, (x, y) in enumerate(data):
        for model, opt in ((plain_model, plain), (low_model, low)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        if i == 0:
            _assert_same(plain_model, low_model)
    assert 72 in stepped and 192 in stepped and 3 not in stepped  # the biases whole
    assert all(v.dtype == torch.bfloat16 for v in _moments(low))
    for p_plain, p_low in zip(plain.state, low.state, strict=True):
        a, b = plain.state[p_plain], low.state[p_low]
        assert a.keys() == b.keys()
        for key in a:
            if key == "step":
                assert float(b[key]) == float(a[key]) == len(data)
            else:  # within the rounding (and what it changed since)
                assert torch.allclose(a[key], b[key].float(), rtol=0.05, atol=1e-3), key
    assert weight.grad is not None  # the gradients are given back
