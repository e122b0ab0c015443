"""Parameter counting, budgets and the memory cost model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.config import load_config
from edgetrain.errors import EdgeTrainError
from edgetrain.sparse import (
    MemoryCost,
    ParamCost,
    RowFreezer,
    describe_model,
    fixed_rows,
    optimizer_state_slots,
    profile_activations,
    resolve_budget,
    select_full,
    select_random,
    select_static,
    weight_norms,
)


def test_neuron_layers_and_depthwise_parameter_count(tiny_net):
    model = tiny_net()
    units = describe_model(model, torch.randn(2, 2, 6, 6))
    by_name = {la.name: la for la in units.layers}
    assert [la.name for la in units.layers] == ["conv1", "dw", "pw", "fc", "head"]
    assert units.head.name == "head"
    dw = by_name["dw"]
    assert dw.kind == "depthwise"
    assert dw.params_per_neuron == 3 * 3 + 1  # not in_channels * 9 (the WACV over-count)
    assert by_name["conv1"].params_per_neuron == 2 * 9  # no bias
    assert by_name["pw"].params_per_neuron == 8 + 1
    assert by_name["fc"].kind == "linear" and by_name["fc"].params_per_neuron == 25
    assert units.norm_params == ("bn1.weight", "bn1.bias")
    assert units.total_params == sum(p.numel() for p in model.parameters())
    assert sum(la.total_params for la in units.layers) + 16 == units.total_params


def test_user_frozen_parameters_do_not_count(tiny_net):
    model = tiny_net()
    model.conv1.weight.requires_grad_(False)
    units = describe_model(model, torch.randn(2, 2, 6, 6))
    assert "conv1" not in [la.name for la in units.layers]
    assert units.total_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("value", "kind", "limit"),
    [(500, "params", 500), (0.25, "params", 250), (1.0, "params", 1000), ("2KiB", "bytes", 2048)],
)
def test_resolve_budget(value, kind, limit):
    budget = resolve_budget(value, total_params=1000)
    assert (budget.kind, budget.limit) == (kind, limit)


@pytest.mark.parametrize(
    ("budget", "fragment"),
    [
        (0, "must be >= 1"),
        (1.5, "(0, 1]"),
        ("lots", "300MiB"),
        (True, "number or a size"),
    ],
)
def test_config_rejects_bad_budgets(budget, fragment):
    with pytest.raises(EdgeTrainError, match=r"sparse_update\.budget") as info:
        load_config({"sparse_update": {"scheme": "velocity", "budget": budget}})
    assert fragment in str(info.value)


def test_config_needs_a_budget_for_random_and_static():
    with pytest.raises(EdgeTrainError, match=r"needs sparse_update\.budget"):
        load_config({"sparse_update": {"scheme": "static"}})
    cfg = load_config(overrides=["sparse_update.scheme=velocity", "sparse_update.budget=300MiB"])
    assert cfg.sparse_update.budget_kind == "bytes"
    assert cfg.sparse_update.first_epoch_scheme == "static"
    assert (
        load_config({"sparse_update": {"scheme": "velocity"}}).sparse_update.first_epoch_scheme
        == "full"
    )


@pytest.mark.parametrize("depth", [0, -0.5, 1.5])
def test_config_rejects_a_static_depth_outside_0_1(depth):
    with pytest.raises(EdgeTrainError, match=r"sparse_update\.static_depth"):
        load_config({"sparse_update": {"scheme": "static", "budget": 0.1, "static_depth": depth}})


def test_optimizer_state_slots(tiny_net):
    params = list(tiny_net().parameters())
    assert optimizer_state_slots(torch.optim.SGD(params, lr=0.1)) == 0
    assert optimizer_state_slots(torch.optim.SGD(params, lr=0.1, momentum=0.9)) == 1
    assert optimizer_state_slots(torch.optim.Adam(params)) == 2


def _measured_bytes(model, optimizer, x, y) -> int:
    """Weights + gradients + optimizer state + saved activations of one real step."""
    saved: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    skip = params | {x.untyped_storage().data_ptr()}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            saved[s.data_ptr()] = s.nbytes()
        return t

    optimizer.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    F.cross_entropy(out, y).backward()
    optimizer.step()
    weights = sum(p.numel() * 4 for p in model.parameters())
    grads = sum(p.grad.numel() * 4 for p in model.parameters() if p.grad is not None)
    state = sum(
        v.numel() * 4 for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
    )
    return weights + grads + state + sum(saved.values())


def test_memory_cost_bounds_what_a_step_really_keeps(tiny_net):
    model = tiny_net()
    x, y = torch.randn(16, 2, 6, 6), torch.randint(0, 3, (16,))
    units = describe_model(model, x[:2])
    profile = profile_activations(model, x[:4], ["fc", "head"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    cost = MemoryCost(units, profile, batch_size=16, state_slots=optimizer_state_slots(opt))
    freezer = RowFreezer(model, opt)
    fixed = fixed_rows(units, head=True, norm=False)
    norms = weight_norms(model, units)
    full = cost.of_rows(select_full(units).rows)
    selections = [select_full(units), select_static(units, ParamCost(units), 300, norms, fixed)]
    selections += [
        select_random(units, ParamCost(units), 200, torch.Generator().manual_seed(s), fixed)
        for s in range(3)
    ]
    for selection in selections:
        freezer.apply(selection.rows)
        opt.state.clear()
        measured = _measured_bytes(model, opt, x, y)
        estimate = cost.of_rows(selection.rows)
        assert measured <= estimate <= 1.1 * measured
        assert estimate <= full


def test_layers_before_the_first_trainable_one_cost_nothing(tiny_net):
    model = tiny_net()
    x = torch.randn(8, 2, 6, 6)
    units = describe_model(model, x[:2])
    profile = profile_activations(model, x, ["fc", "head"])
    cost = MemoryCost(units, profile, batch_size=8, state_slots=0)
    head_only = cost.activation_bytes(frozenset({"head.weight", "head.bias"}))
    assert head_only == 8 * 10 * 4  # only the head's input (ReLU output saved once)
    with_conv1 = cost.activation_bytes(frozenset({"conv1.weight"}))
    assert with_conv1 > 10 * head_only
    # a frozen linear layer after the first trainable one keeps no input for itself
    assert cost.activation_bytes(frozenset({"conv1.weight", "fc.weight"})) > with_conv1


def test_profile_leaves_the_model_as_it_was(tiny_net):
    model = tiny_net()
    model.conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 2, 6, 6)
    rng = torch.get_rng_state()
    profile_activations(model, x)
    assert not model.conv1.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())


def test_memory_model_counts_a_module_called_by_functional_code():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            return self.b(torch.tanh(self.a(x)))  # tanh saves its output, in no submodule

    model = Functional()
    x = torch.randn(3, 4)
    units = describe_model(model, x)
    cost = MemoryCost(units, profile_activations(model, x, ["a", "b"]), 3, 0)
    # training a: a's input (ignored: it is the batch) + tanh output + b's input (same storage)
    assert cost.activation_bytes(frozenset({"a.weight"})) == 3 * 4 * 4
