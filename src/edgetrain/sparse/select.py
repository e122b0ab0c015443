"""Selection schemes: pure functions from observations (velocities, weight norms, a seed) to
the rows that are updated, never exceeding the budget.

A :class:`Selection` maps parameter names to boolean row masks (``True`` = updated); a
parameter that is absent is frozen. Selecting neuron ``i`` of a layer selects row ``i`` of
its weight and its bias. Parameters that are always trainable (``fixed``: the head, norm
layers, biases for ``bias_only``) are counted first; the schemes fill what is left:

- ``velocity``: rank neurons by |velocity| per unit of cost and fill greedily; with the
  memory cost model a closed layer is scored as a bundle (its best prefix of neurons by
  total velocity per byte, including the cost of opening it). Without a budget, plain
  NEq: every neuron with |velocity| > epsilon.
- ``random``: a random order from the generator, filled greedily (skips what does not fit).
- ``static``: fixed before training from the weights alone: among the last ``depth`` (a
  fraction, default 3/4) of the neuron layers, neurons by descending weight norm per
  parameter, each added if it still fits. Cheap neurons (depthwise channels, narrow
  layers) come first, so the budget spreads over many late layers instead of part of the
  widest one.
- ``last_k``, ``bias_only``, ``full``: the baselines (no budget).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.sparse.budget import CostModel, trainable_names
from edgetrain.sparse.layers import ModelUnits, NeuronLayer, row_count, row_size

__all__ = [
    "Selection",
    "check_budget",
    "fixed_rows",
    "select_bias_only",
    "select_full",
    "select_last_k",
    "select_random",
    "select_static",
    "select_velocity",
    "weight_norms",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """Boolean row masks per parameter name (absent = frozen)."""

    rows: Mapping[str, torch.Tensor]

    def neurons(self, layer: NeuronLayer) -> torch.Tensor:
        """Selected neurons of a layer (its selected weight rows)."""
        mask = self.rows.get(layer.weight)
        return mask if mask is not None else torch.zeros(layer.neurons, dtype=torch.bool)

    def updated_params(self, units: ModelUnits) -> int:
        """Number of updated parameters (selected rows times row size)."""
        shapes = units.param_shapes
        return sum(int(m.sum()) * row_size(shapes[p]) for p, m in self.rows.items())

    def trainable(self) -> frozenset[str]:
        return trainable_names(self.rows)

    def param_count(self, units: ModelUnits, name: str) -> int:
        mask = self.rows.get(name)
        return 0 if mask is None else int(mask.sum()) * row_size(units.param_shapes[name])


def _all_rows(units: ModelUnits, names: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {
        p: torch.ones(row_count(units.param_shapes[p]), dtype=torch.bool)
        for p in names
        if p in units.param_shapes
    }


def fixed_rows(
    units: ModelUnits, *, head: bool, norm: bool, biases: bool = False
) -> dict[str, torch.Tensor]:
    """The always-trainable rows: the head layer, norm layers, and biases (bias_only)."""
    names: list[str] = []
    if head:
        names += units.head.params
    if norm:
        names += units.norm_params
    if biases:
        names += [la.bias for la in units.layers if la.bias is not None]
        names += [p for p in units.norm_params if p.endswith("bias")]
    return _all_rows(units, names)


def select_full(units: ModelUnits) -> Selection:
    """Every trainable parameter."""
    return Selection(_all_rows(units, list(units.param_shapes)))


def select_last_k(units: ModelUnits, k: int, fixed: Mapping[str, torch.Tensor]) -> Selection:
    """The last ``k`` neuron layers in forward order (the head is one of them)."""
    rows = dict(fixed)
    for layer in units.layers[-k:]:
        rows.update(_all_rows(units, layer.params))
    return Selection(rows)


def select_bias_only(units: ModelUnits, fixed: Mapping[str, torch.Tensor]) -> Selection:
    """Only ``fixed`` (build it with ``biases=True``)."""
    return Selection(dict(fixed))


def weight_norms(model: nn.Module, units: ModelUnits) -> dict[str, torch.Tensor]:
    """L2 norm of each neuron's weight row, per layer (the static scheme's ranking)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        return {
            la.name: params[la.weight].detach().float().flatten(1).norm(dim=1).cpu()
            for la in units.layers
        }


def check_budget(cost: CostModel, limit: int | None, fixed: Mapping[str, torch.Tensor]) -> int:
    """The cost of the always-trainable rows; an error if it exceeds the budget."""
    current = cost.of_rows(fixed)
    if limit is not None and current > limit:
        raise EdgeTrainError(
            f"sparse_update.budget ({cost.describe(limit)}) is smaller than the least any "
            f"selection costs here ({cost.describe(current)}: {cost.minimum()}); "
            "raise the budget or set sparse_update.always_train_head / always_train_bn "
            "to false"
        )
    return current


class _Filler:
    """Adds neurons to a selection while keeping track of its cost."""

    def __init__(
        self,
        units: ModelUnits,
        cost: CostModel,
        limit: int | None,
        fixed: Mapping[str, torch.Tensor],
    ) -> None:
        self.units = units
        self.cost = cost
        self.limit = limit
        self.fixed = {p: m.clone() for p, m in fixed.items()}
        self.trainable = trainable_names(self.fixed)
        self.current = check_budget(cost, limit, self.fixed)
        self.masks = {
            la.name: torch.zeros(la.neurons, dtype=torch.bool) for la in self.candidates()
        }
        self._open_costs: dict[str, int] = {}

    def candidates(self) -> list[NeuronLayer]:
        """Neuron layers not already fully trainable through ``fixed``."""
        return [la for la in self.units.layers if not bool(self.fixed.get(la.weight, _NONE).all())]

    def is_open(self, layer: NeuronLayer) -> bool:
        return bool(self.masks[layer.name].any()) or layer.weight in self.trainable

    def open_cost(self, layer: NeuronLayer) -> int:
        if self.is_open(layer):
            return 0
        if layer.name not in self._open_costs:
            self._open_costs[layer.name] = self.cost.open_cost(layer, self.trainable)
        return self._open_costs[layer.name]

    def room(self) -> float:
        return math.inf if self.limit is None else self.limit - self.current

    def add(self, layer: NeuronLayer, indices: torch.Tensor) -> None:
        if len(indices) == 0:
            return
        opening = self.open_cost(layer)
        self.current += opening + len(indices) * self.cost.neuron_cost(layer)
        if not self.is_open(layer):
            self.trainable = self.trainable | frozenset(layer.params)
            self._open_costs.clear()  # opening a layer changes the others' opening costs
        self.masks[layer.name][indices] = True

    def try_add_one(self, layer: NeuronLayer, index: int) -> bool:
        marginal = self.open_cost(layer) + self.cost.neuron_cost(layer)
        if marginal > self.room():
            return False
        self.add(layer, torch.tensor([index]))
        return True

    def selection(self) -> Selection:
        rows = dict(self.fixed)
        for name, mask in self.masks.items():
            if mask.any():
                for p in self.units.layer(name).params:
                    rows[p] = rows[p] | mask if p in rows else mask.clone()
        return Selection(rows)


_NONE = torch.zeros(1, dtype=torch.bool)


def _budget_check(limit: int | None, scheme: str) -> int:
    if limit is None:
        raise EdgeTrainError(f"scheme '{scheme}' needs a budget")
    return limit


def select_random(
    units: ModelUnits,
    cost: CostModel,
    limit: int,
    generator: torch.Generator,
    fixed: Mapping[str, torch.Tensor],
) -> Selection:
    """Neurons in a random order from ``generator``, each added if it still fits."""
    filler = _Filler(units, cost, _budget_check(limit, "random"), fixed)
    layers = filler.candidates()
    owner = [i for i, la in enumerate(layers) for _ in range(la.neurons)]
    index = [n for la in layers for n in range(la.neurons)]
    for k in torch.randperm(len(owner), generator=generator).tolist():
        filler.try_add_one(layers[owner[k]], index[k])
    return filler.selection()


def select_static(
    units: ModelUnits,
    cost: CostModel,
    limit: int,
    norms: Mapping[str, torch.Tensor],
    fixed: Mapping[str, torch.Tensor],
    *,
    depth: float = 0.75,
) -> Selection:
    """Among the last ``depth`` of the candidate layers, neurons by weight norm per
    parameter (ties: later layers first), each added if it still fits.

    ``benchmarks/sparse_update.py --quick`` (10% of the parameters, 3 seeds): test accuracy
    -5.2 (mobilenetv2) and -4.1 (resnet18) points from full fine-tuning at 0.48x and 0.50x
    its training memory; depth 0.5: -8.9 and -10.4 at 0.28x and 0.33x; the earlier rule
    (the last layers' channels by plain norm, which filled half of mobilenetv2's final 1x1
    convolution and nothing else): -24 to -30 points.
    """
    if not 0 < depth <= 1:
        raise EdgeTrainError(f"static depth must be in (0, 1], got {depth}")
    filler = _Filler(units, cost, _budget_check(limit, "static"), fixed)
    layers = filler.candidates()
    region = layers[len(layers) - max(1, math.ceil(depth * len(layers))) :]
    ranked = sorted(
        (
            (float(norm) / layer.params_per_neuron, position, n)
            for position, layer in enumerate(region)
            for n, norm in enumerate(norms[layer.name].tolist())
        ),
        key=lambda item: (-item[0], -item[1], item[2]),
    )
    for _, position, n in ranked:
        filler.try_add_one(region[position], n)
    return filler.selection()


def select_velocity(
    units: ModelUnits,
    cost: CostModel,
    limit: int | None,
    velocity: Mapping[str, torch.Tensor],
    fixed: Mapping[str, torch.Tensor],
    *,
    epsilon: float = 1e-3,
) -> Selection:
    """Neurons by |velocity| per unit of cost under a budget; without one, |v| > epsilon."""
    filler = _Filler(units, cost, limit, fixed)
    layers = filler.candidates()
    scores = {la.name: velocity[la.name].abs().double() for la in layers}
    if limit is None:
        for layer in layers:
            filler.add(layer, torch.nonzero(scores[layer.name] > epsilon).flatten())
    elif not cost.has_open_costs:
        _fill_by_ratio(filler, layers, scores)
    else:
        _fill_by_bundles(filler, layers, scores)
    return filler.selection()


def _fill_by_ratio(
    filler: _Filler, layers: list[NeuronLayer], scores: Mapping[str, torch.Tensor]
) -> None:
    """Additive costs: one global ranking by score per cost, skipping what does not fit."""
    if not layers:
        return
    costs = [filler.cost.neuron_cost(la) for la in layers]
    ratio = torch.cat([scores[la.name] / max(c, 1) for la, c in zip(layers, costs, strict=True)])
    owner = torch.cat([torch.full((la.neurons,), i) for i, la in enumerate(layers)]).tolist()
    index = torch.cat([torch.arange(la.neurons) for la in layers]).tolist()
    smallest = min(costs)
    for k in torch.argsort(ratio, descending=True, stable=True).tolist():
        if filler.room() < smallest:
            break
        filler.try_add_one(layers[owner[k]], index[k])


def _fill_by_bundles(
    filler: _Filler, layers: list[NeuronLayer], scores: Mapping[str, torch.Tensor]
) -> None:
    """Opening costs: repeatedly take the best (layer, top-j neurons) by score per cost."""
    remaining = {
        la.name: torch.argsort(scores[la.name], descending=True, stable=True) for la in layers
    }
    by_name = {la.name: la for la in layers}
    while remaining:
        best: tuple[float, int, str] | None = None
        for name, order in remaining.items():
            layer = by_name[name]
            opening, per = filler.open_cost(layer), filler.cost.neuron_cost(layer)
            room = filler.room() - opening
            if room < 0 or (per > 0 and room < per):
                continue  # may fit later: opening an earlier layer can lower its opening cost
            top = len(order) if per == 0 else min(len(order), int(room // per))
            gain = torch.cumsum(scores[name][order[:top]], 0)
            spent = opening + per * torch.arange(1, top + 1, dtype=torch.float64)
            ratio = torch.where(spent > 0, gain / spent.clamp_min(1e-12), math.inf)
            # the largest j among the best ratios: more neurons for the same price per unit
            j = top - int(torch.argmax(ratio.flip(0)))
            candidate = (float(ratio[j - 1]), j, name)
            if best is None or candidate[0] > best[0]:
                best = candidate
        if best is None:
            break
        _, j, name = best
        order = remaining.pop(name)
        filler.add(by_name[name], order[:j])
        if j < len(order):
            remaining[name] = order[j:]
