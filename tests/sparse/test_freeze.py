"""Frozen rows do not move (weights and optimizer state bit-identical), and frozen layers
are not differentiated at all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgetrain.sparse import (
    ParamCost,
    RowFreezer,
    describe_model,
    fixed_rows,
    select_full,
    select_random,
)

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.05),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05
    ),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.05),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, weight_decay=0.05),
}


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _rows_frozen(selection_rows, name, param):
    mask = selection_rows.get(name)
    if mask is None:
        return torch.ones(param.shape[0], dtype=torch.bool)
    return ~mask


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_frozen_rows_are_bit_identical(tiny_net, blobs, name):
    model = tiny_net()
    data = blobs(n=32)
    opt = OPTIMIZERS[name](model.parameters())
    units = describe_model(model, data.x[:2])
    freezer = RowFreezer(model, opt)
    params = dict(model.named_parameters())
    limit = int(0.3 * units.total_params)
    fixed = fixed_rows(units, head=False, norm=False)
    moved = 0
    for epoch in range(4):  # a new selection each epoch: rows freeze after having momentum
        gen = torch.Generator().manual_seed(epoch)
        sel = select_random(units, ParamCost(units), limit, gen, fixed)
        freezer.apply(sel.rows)
        weights = {n: p.detach().clone() for n, p in params.items()}
        states = {
            n: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)}
            for n, p in params.items()
        }
        for b in range(3):
            _step(model, opt, data.x[b * 8 : b * 8 + 8], data.y[b * 8 : b * 8 + 8])
        for n, p in params.items():
            frozen = _rows_frozen(sel.rows, n, p)
            assert torch.equal(p[frozen], weights[n][frozen]), (n, epoch)
            moved += int((~torch.eq(p, weights[n]))[~frozen].any())
            for k, v in opt.state[p].items():
                if not (torch.is_tensor(v) and v.shape == p.shape):
                    continue
                before = states[n].get(k)
                expected = before[frozen] if before is not None else torch.zeros_like(v[frozen])
                assert torch.equal(v[frozen], expected), (n, k, epoch)
    assert moved > 0  # the selected rows did train


def test_empty_layers_lose_requires_grad_and_get_it_back(tiny_net, blobs):
    model = tiny_net()
    data = blobs(n=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    units = describe_model(model, data.x[:2])
    freezer = RowFreezer(model, opt)
    only_head = fixed_rows(units, head=True, norm=False)
    stats = freezer.apply(only_head)
    assert stats.trainable == 2 and stats.released == len(units.param_shapes) - 2
    assert not model.conv1.weight.requires_grad and not model.bn1.weight.requires_grad
    conv_before = model.conv1.weight.detach().clone()
    _step(model, opt, data.x, data.y)
    assert model.conv1.weight.grad is None  # autograd did not compute it
    assert torch.equal(model.conv1.weight, conv_before)

    rows = dict(only_head)
    rows["conv1.weight"] = torch.zeros(8, dtype=torch.bool)
    rows["conv1.weight"][3] = True
    stats = freezer.apply(rows)
    assert model.conv1.weight.requires_grad and stats.partial == 1
    _step(model, opt, data.x, data.y)
    changed = (model.conv1.weight != conv_before).flatten(1).any(dim=1)
    assert changed.tolist() == [i == 3 for i in range(8)]

    freezer.remove()
    assert all(p.requires_grad for p in model.parameters())


def test_a_parameter_frozen_by_the_user_stays_frozen(tiny_net):
    model = tiny_net()
    model.dw.bias.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    units = describe_model(model, torch.randn(2, 2, 6, 6))
    freezer = RowFreezer(model, opt)
    freezer.apply(select_full(units).rows)
    assert not model.dw.bias.requires_grad
    freezer.remove()
    assert not model.dw.bias.requires_grad


def test_mask_only_keeps_gradients_flowing_but_rows_still_do_not_move(tiny_net, blobs):
    model = tiny_net()
    data = blobs(n=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    units = describe_model(model, data.x[:2])
    freezer = RowFreezer(model, opt, mask_only=True)
    stats = freezer.apply(fixed_rows(units, head=True, norm=False))
    assert stats.masked == len(units.param_shapes) - 2 and stats.released == 0
    assert model.conv1.weight.requires_grad
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):
        _step(model, opt, data.x, data.y)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (not n.startswith("head")), n
    assert opt.state[model.conv1.weight] == {}  # never stepped: no momentum buffer
