"""What a selection costs: parameters, or bytes of training memory.

Two cost models share one interface, so every selection scheme works with both:

- :class:`ParamCost`: the number of updated parameters (selected rows times row size).
- :class:`MemoryCost`: bytes of training memory for one step. Weights are always there;
  a parameter tensor with any selected row adds its gradient and optimizer state (whole
  tensor: autograd computes the whole weight gradient); saved activations are what
  autograd keeps from the first trainable module (in forward order) onwards, since
  nothing before it is differentiated, plus a Linear layer's input (an embedding's ids)
  only while its weight is trainable (a frozen Linear does not keep it; a frozen
  convolution still does when gradients flow through it, so that is counted too).

Activation bytes come from :func:`profile_activations`: one training-mode forward pass
with saved-tensor hooks, each storage counted once and tagged with the forward position
of the module running when it was saved, scaled linearly to the batch size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.sparse.layers import Forward, ModelUnits, NeuronLayer, call, row_size
from edgetrain.units import format_bytes, parse_bytes

__all__ = [
    "WEIGHT_ONLY_SAVES",
    "ActivationProfile",
    "Budget",
    "CostModel",
    "MemoryCost",
    "ParamCost",
    "optimizer_state_slots",
    "profile_activations",
    "resolve_budget",
    "trainable_names",
]

log = logging.getLogger(__name__)

#: Neuron layer kinds whose saved tensors serve only their weight's gradient (a Linear's
#: input, an embedding's ids): a frozen one keeps nothing.
WEIGHT_ONLY_SAVES = ("linear", "embedding")


@dataclass(frozen=True)
class Budget:
    """A resolved budget: a limit in parameters or in bytes."""

    kind: Literal["params", "bytes"]
    limit: int

    def describe(self) -> str:
        return format_bytes(self.limit) if self.kind == "bytes" else f"{self.limit} parameters"


def resolve_budget(value: int | float | str, total_params: int) -> Budget:
    """An int is parameters, a float in (0, 1] a fraction of ``total_params``, a str bytes."""
    if isinstance(value, bool):
        raise EdgeTrainError(f"sparse_update.budget must be a number or a size, got {value!r}")
    if isinstance(value, int):
        return Budget("params", value)
    if isinstance(value, float):
        if not 0 < value <= 1:
            raise EdgeTrainError(f"sparse_update.budget fraction must be in (0, 1], got {value}")
        return Budget("params", int(value * total_params))
    return Budget("bytes", parse_bytes(value, name="sparse_update.budget"))


def optimizer_state_slots(optimizer: torch.optim.Optimizer | None) -> int:
    """Parameter-sized state tensors the optimizer keeps per parameter (SGD momentum: 1)."""
    if optimizer is None:
        return 0
    d = optimizer.defaults
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return 2 + int(bool(d.get("amsgrad")))
    if isinstance(optimizer, torch.optim.SGD):
        return int(d.get("momentum", 0) > 0)
    if isinstance(optimizer, torch.optim.RMSprop):
        return 1 + int(d.get("momentum", 0) > 0) + int(bool(d.get("centered")))
    return 2  # unknown optimizer: assume Adam-like


@dataclass(frozen=True)
class ActivationProfile:
    """Saved-for-backward storages of one forward pass, by forward position.

    ``saves`` holds ``(position, owner, key, nbytes)``: the forward position of the module
    running when the storage was saved, the Linear layer owning it (or ``""``), a storage
    identity and its size for ``batch_size`` samples.
    """

    saves: tuple[tuple[int, str, int, int], ...]
    batch_size: int

    def saved_bytes(self, first_position: int, trainable_linears: Iterable[str]) -> int:
        """Bytes kept for backward when nothing before ``first_position`` is trainable."""
        linears = set(trainable_linears)
        seen: dict[int, int] = {}
        for position, owner, key, nbytes in self.saves:
            if position >= first_position and (not owner or owner in linears):
                seen[key] = nbytes
        return sum(seen.values())


def profile_activations(
    model: nn.Module,
    batch: Any,
    linear_layers: Iterable[str] = (),
    forward: Forward = call,
    *,
    size: int | None = None,
) -> ActivationProfile:
    """Record what autograd saves in one training-mode forward with every parameter trainable.

    Buffers (batch-norm statistics), ``requires_grad`` flags and the global RNG are restored.
    ``linear_layers`` are module names whose saves are only needed for their weight
    gradient (Linear layers' inputs, embeddings' ids: tagged so the cost model can drop
    them while frozen). The model runs as ``forward(model, batch)``; the tensors of
    ``batch`` are not counted (they exist anyway) and ``size`` is its number of samples
    (default: the leading dimension of its first tensor).
    """
    from edgetrain.tasks.batch import apply_tensors, batch_size  # lazy: tasks loads torchmetrics

    names = dict(model.named_modules())
    linears = set(linear_layers)
    order: dict[str, int] = {}
    stack: list[str] = []
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    inputs: set[int] = set()
    apply_tensors(batch, lambda t: inputs.add(t.untyped_storage().data_ptr()))
    saves: list[tuple[int, str, int, int]] = []
    current = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in params and key not in inputs:
            owner = stack[-1] if stack and stack[-1] in linears else ""
            saves.append((current[0], owner, key, storage.nbytes()))
        return t

    handles = []
    for name, module in names.items():

        def pre(mod: nn.Module, args: object, name: str = name) -> None:
            order.setdefault(name, len(order))
            current[0] = order[name]
            stack.append(name)

        def post(mod: nn.Module, args: object, output: object) -> None:
            stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(True)
        model.train()
        with (
            torch.random.fork_rng(devices=[]),
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        ):
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        model.train(was_training)
    samples = batch_size(batch) if size is None else int(size)
    return ActivationProfile(saves=tuple(saves), batch_size=samples)


class CostModel:
    """The cost of a selection; greedy schemes ask it for marginal costs.

    A neuron layer costs ``open_cost`` for its first selected neuron (given the parameters
    already trainable) plus ``neuron_cost`` per selected neuron.
    """

    has_open_costs = False  # True when opening a layer costs more than its neurons

    def __init__(self, units: ModelUnits) -> None:
        self.units = units

    def of_rows(self, rows: Mapping[str, torch.Tensor]) -> int:
        """Cost of a selection given as boolean row masks per parameter name."""
        raise NotImplementedError

    def describe(self, value: int) -> str:
        """A cost in words: '1200 parameters', '3.5 MiB'."""
        return f"{value} parameters"

    def minimum(self) -> str:
        """What every selection pays, in words (for error messages)."""
        return "the always-trainable head and/or norm layers"

    def neuron_cost(self, layer: NeuronLayer) -> int:
        raise NotImplementedError

    def open_cost(self, layer: NeuronLayer, trainable: frozenset[str]) -> int:
        raise NotImplementedError


def _owner(param: str) -> str:
    """Module name of a parameter name ('' for the root module)."""
    return param.rsplit(".", 1)[0] if "." in param else ""


def trainable_names(rows: Mapping[str, torch.Tensor]) -> frozenset[str]:
    """Parameters with at least one selected row."""
    return frozenset(p for p, mask in rows.items() if bool(mask.any()))


class ParamCost(CostModel):
    """Cost = number of updated parameters (selected rows times row size)."""

    def of_rows(self, rows: Mapping[str, torch.Tensor]) -> int:
        shapes = self.units.param_shapes
        return sum(int(mask.sum()) * row_size(shapes[p]) for p, mask in rows.items())

    def neuron_cost(self, layer: NeuronLayer) -> int:
        return layer.params_per_neuron

    def open_cost(self, layer: NeuronLayer, trainable: frozenset[str]) -> int:
        return 0


class MemoryCost(CostModel):
    """Cost = bytes of training memory for one step of ``batch_size`` samples.

    weights + (gradient + ``state_slots`` optimizer states) of every trainable parameter
    tensor + saved activations (see :class:`ActivationProfile`).
    """

    has_open_costs = True

    def __init__(
        self, units: ModelUnits, profile: ActivationProfile, batch_size: int, state_slots: int
    ) -> None:
        super().__init__(units)
        self.profile = profile
        self.batch_size = batch_size
        self.state_slots = state_slots
        self._linears = frozenset(la.name for la in units.layers if la.kind in WEIGHT_ONLY_SAVES)
        self._cache: dict[tuple[int, frozenset[str]], int] = {}

    def weights_bytes(self) -> int:
        return self.units.total_params * self.units.itemsize

    def param_bytes(self, name: str) -> int:
        """Gradient plus optimizer state of one whole parameter tensor."""
        elements = math.prod(self.units.param_shapes[name])
        return elements * self.units.itemsize * (1 + self.state_slots)

    def activation_bytes(self, trainable: frozenset[str]) -> int:
        """Saved activations for ``batch_size`` samples with ``trainable`` parameters."""
        if not trainable:
            return 0
        first = min(self.units.param_position[p] for p in trainable)
        owners = frozenset(_owner(p) for p in trainable) & self._linears
        key = (first, owners)
        if key not in self._cache:
            self._cache[key] = self.profile.saved_bytes(first, owners)
        return math.ceil(self._cache[key] * self.batch_size / self.profile.batch_size)

    def total(self, trainable: frozenset[str]) -> int:
        grads = sum(self.param_bytes(p) for p in trainable)
        return self.weights_bytes() + grads + self.activation_bytes(trainable)

    def of_rows(self, rows: Mapping[str, torch.Tensor]) -> int:
        return self.total(trainable_names(rows))

    def describe(self, value: int) -> str:
        return format_bytes(value)

    def minimum(self) -> str:
        return (
            f"the weights ({format_bytes(self.weights_bytes())}) plus gradients, optimizer "
            "state and activations of the always-trainable head and/or norm layers"
        )

    def neuron_cost(self, layer: NeuronLayer) -> int:
        return 0  # the whole weight gradient is paid when the layer opens

    def open_cost(self, layer: NeuronLayer, trainable: frozenset[str]) -> int:
        new = frozenset(layer.params) - trainable
        if not new:
            return 0
        grads = sum(self.param_bytes(p) for p in new)
        return grads + self.activation_bytes(trainable | new) - self.activation_bytes(trainable)
