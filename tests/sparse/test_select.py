"""Selection schemes: budgets are never exceeded, choices follow the observations."""

from __future__ import annotations

import pytest
import torch

from edgetrain.config import SparseUpdateConfig
from edgetrain.errors import EdgeTrainError
from edgetrain.sparse import (
    MemoryCost,
    ParamCost,
    SelectionPlanner,
    describe_model,
    fixed_rows,
    profile_activations,
    select_bias_only,
    select_full,
    select_last_k,
    select_random,
    select_static,
    select_velocity,
    weight_norms,
)


@pytest.fixture
def setup(tiny_net):
    model = tiny_net()
    x = torch.randn(4, 2, 6, 6)
    units = describe_model(model, x)
    profile = profile_activations(model, x, ["fc", "head"])
    memory = MemoryCost(units, profile, batch_size=32, state_slots=1)
    return model, units, memory


def _velocity(units, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {la.name: torch.randn(la.neurons, generator=g) for la in units.layers}


def test_budget_is_never_exceeded(setup):
    model, units, memory = setup
    params = ParamCost(units)
    norms = weight_norms(model, units)
    for head in (True, False):
        fixed = fixed_rows(units, head=head, norm=False)
        base_params = params.of_rows(fixed)
        base_bytes = memory.of_rows(fixed)
        full_bytes = memory.of_rows(select_full(units).rows)
        for cost, lows, high in (
            (params, base_params, units.total_params),
            (memory, base_bytes, full_bytes),
        ):
            for frac in (0.0, 0.03, 0.1, 0.25, 0.5, 0.9, 1.0):
                limit = int(lows + frac * (high - lows))
                for seed in range(3):
                    choices = [
                        select_velocity(units, cost, limit, _velocity(units, seed), fixed),
                        select_random(
                            units, cost, limit, torch.Generator().manual_seed(seed), fixed
                        ),
                        select_static(units, cost, limit, norms, fixed),
                    ]
                    for sel in choices:
                        assert cost.of_rows(sel.rows) <= limit
                        if cost is params:
                            assert sel.updated_params(units) <= limit
                        for p, mask in fixed.items():  # always-trainable rows stay in
                            assert bool(sel.rows[p][mask].all())


def test_full_budget_selects_everything(setup):
    _, units, _ = setup
    params = ParamCost(units)
    fixed = fixed_rows(units, head=True, norm=True)
    sel = select_velocity(units, params, units.total_params, _velocity(units), fixed)
    assert sel.updated_params(units) == units.total_params


def test_budget_below_the_always_trainable_part_is_an_error(setup):
    _, units, _ = setup
    fixed = fixed_rows(units, head=True, norm=False)
    with pytest.raises(EdgeTrainError, match="smaller than the least any selection costs"):
        select_static(units, ParamCost(units), 5, {}, fixed)


def test_velocity_ranks_by_velocity_per_parameter(setup):
    _, units, _ = setup
    v = {la.name: torch.zeros(la.neurons) for la in units.layers}
    v["pw"][2] = 0.5  # 9 parameters: 0.056 per parameter
    v["fc"][4] = 1.0  # 25 parameters: 0.04 per parameter
    v["conv1"][1] = -0.9  # 18 parameters: 0.05 per parameter (the magnitude counts)
    sel = select_velocity(units, ParamCost(units), 9 + 18, v, {})
    assert torch.nonzero(sel.neurons(units.layer("pw"))).flatten().tolist() == [2]
    assert torch.nonzero(sel.neurons(units.layer("conv1"))).flatten().tolist() == [1]
    assert not sel.neurons(units.layer("fc")).any()  # would not fit any more
    assert sel.updated_params(units) == 27


def test_velocity_without_budget_is_neq(setup):
    _, units, _ = setup
    v = {la.name: torch.full((la.neurons,), 1e-4) for la in units.layers}
    v["dw"][[0, 3]] = torch.tensor([0.01, -0.02])
    sel = select_velocity(units, ParamCost(units), None, v, {}, epsilon=1e-3)
    assert torch.nonzero(sel.neurons(units.layer("dw"))).flatten().tolist() == [0, 3]
    assert sel.trainable() == {"dw.weight", "dw.bias"}


def test_memory_velocity_prefers_layers_that_are_cheap_to_open(setup):
    _, units, memory = setup
    v = {la.name: torch.full((la.neurons,), 0.1) for la in units.layers}
    fixed = fixed_rows(units, head=True, norm=False)
    base = memory.of_rows(fixed)
    opening_fc = memory.open_cost(units.layer("fc"), frozenset(fixed))
    sel = select_velocity(units, memory, base + opening_fc, v, fixed)
    assert sel.neurons(units.layer("fc")).all()  # a whole layer: its rows cost nothing more
    assert not sel.neurons(units.layer("conv1")).any()


def test_static_takes_the_last_layer_by_weight_norm_at_a_small_depth(setup):
    model, units, _ = setup
    assert [la.name for la in units.layers] == ["conv1", "dw", "pw", "fc", "head"]
    norms = weight_norms(model, units)
    fc, head = units.layer("fc"), units.layer("head")
    fixed = fixed_rows(units, head=True, norm=False)
    limit = head.total_params + 3 * fc.params_per_neuron + 5
    # a quarter of the 4 candidate layers (the head is always trained): fc alone
    sel = select_static(units, ParamCost(units), limit, norms, fixed, depth=0.25)
    chosen = torch.nonzero(sel.neurons(fc)).flatten()
    assert chosen.tolist() == sorted(torch.argsort(norms["fc"], descending=True)[:3].tolist())
    assert sel.trainable() == {"fc.weight", "fc.bias", "head.weight", "head.bias"}


def test_static_ranks_the_late_half_by_weight_norm_per_parameter(setup):
    model, units, _ = setup
    norms = weight_norms(model, units)
    head = units.layer("head")
    late = [units.layer("pw"), units.layer("fc")]  # half of conv1, dw, pw, fc
    ranked = sorted(
        (
            (float(norms[la.name][n]) / la.params_per_neuron, la.name, n)
            for la in late
            for n in range(la.neurons)
        ),
        reverse=True,
    )
    top = ranked[:4]
    limit = head.total_params + sum(units.layer(name).params_per_neuron for _, name, _ in top)
    fixed = fixed_rows(units, head=True, norm=False)
    sel = select_static(units, ParamCost(units), limit, norms, fixed, depth=0.5)
    chosen = {(la.name, int(n)) for la in late for n in torch.nonzero(sel.neurons(la)).flatten()}
    assert chosen == {(name, n) for _, name, n in top}
    assert not sel.neurons(units.layer("conv1")).any() and not sel.neurons(units.layer("dw")).any()


def test_static_depth_must_be_a_fraction(setup):
    model, units, _ = setup
    with pytest.raises(EdgeTrainError, match=r"static depth must be in \(0, 1\], got 0"):
        select_static(units, ParamCost(units), 10**6, weight_norms(model, units), {}, depth=0)


def test_random_is_deterministic_given_a_seed(setup):
    _, units, memory = setup
    half = memory.of_rows(select_full(units).rows) // 2
    for cost, limit in ((ParamCost(units), 400), (memory, half)):

        def draw(seed, cost=cost, limit=limit):
            sel = select_random(units, cost, limit, torch.Generator().manual_seed(seed), {})
            return {p: m.tolist() for p, m in sel.rows.items()}

        assert draw(1) == draw(1)
        if cost is not memory:  # with memory costs the feasible layer sets are few
            assert draw(1) != draw(2)


def test_planner_redraws_random_each_epoch_and_keeps_static(setup):
    model, units, _ = setup
    cfg = SparseUpdateConfig(scheme="random", budget=0.3, seed=7)
    limit = int(0.3 * units.total_params)
    planner = SelectionPlanner(cfg, units, ParamCost(units), limit, 7, weight_norms(model, units))
    a0, _ = planner.select(0, None)
    a1, _ = planner.select(1, None)
    again = SelectionPlanner(cfg, units, ParamCost(units), limit, 7, weight_norms(model, units))
    b1, _ = again.select(1, None)
    assert any(not torch.equal(a0.rows[p], a1.rows[p]) for p in a0.rows)
    assert all(torch.equal(a1.rows[p], b1.rows[p]) for p in a1.rows)

    static = SparseUpdateConfig(scheme="static", budget=0.3)
    planner = SelectionPlanner(
        static, units, ParamCost(units), limit, 0, weight_norms(model, units)
    )
    s0, _ = planner.select(0, None)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2)
    assert planner.select(5, None)[0] is s0


def test_planner_first_epoch_then_velocity(setup):
    model, units, _ = setup
    cfg = SparseUpdateConfig(scheme="velocity", budget=0.2)
    planner = SelectionPlanner(
        cfg, units, ParamCost(units), int(0.2 * units.total_params), 0, weight_norms(model, units)
    )
    assert planner.select(0, None)[1] == "static"
    assert planner.select(1, _velocity(units))[1] == "velocity"
    cfg = SparseUpdateConfig(scheme="velocity")
    planner = SelectionPlanner(cfg, units, ParamCost(units), None, 0, {})
    first, used = planner.select(0, None)
    assert used == "full" and first.updated_params(units) == units.total_params


def test_baselines(setup):
    _, units, _ = setup
    last = select_last_k(units, 2, {})
    assert last.trainable() == {"fc.weight", "fc.bias", "head.weight", "head.bias"}
    bias = select_bias_only(units, fixed_rows(units, head=False, norm=False, biases=True))
    assert bias.trainable() == {"dw.bias", "pw.bias", "fc.bias", "head.bias", "bn1.bias"}
    assert select_full(units).updated_params(units) == units.total_params


def test_nothing_left_to_choose(setup):
    _, units, memory = setup
    everything = select_full(units).rows
    for cost in (ParamCost(units), memory):
        sel = select_velocity(units, cost, cost.of_rows(everything), _velocity(units), everything)
        assert sel.updated_params(units) == units.total_params
