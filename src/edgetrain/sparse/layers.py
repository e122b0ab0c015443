"""Which neurons a model has: output channels of convolutions, output units of linear layers,
rows of embeddings.

A neuron owns one row of its layer's weight (``weight[i]``) and, when the layer has a
bias, one bias entry. Its parameter count is the row's size: ``in_channels / groups *
kernel_h * kernel_w`` for a convolution, so a depthwise neuron has ``kernel_h * kernel_w``
weights (+1 bias), not ``in_channels`` times that (the WACV code's over-count). An
embedding's neurons are its rows: selecting row ``i`` updates token ``i``'s vector
(``embedding_dim`` parameters).

The model is run on an example batch to learn the order of its modules; ``forward(model,
batch)`` says how (default ``model(batch)``; the training loop passes its task's forward,
so any batch structure works).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "EMBEDDING_TYPES",
    "Forward",
    "ModelUnits",
    "NeuronLayer",
    "call",
    "describe_model",
    "row_count",
    "row_size",
]

log = logging.getLogger(__name__)

EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_NEURON_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, *EMBEDDING_TYPES)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)

Forward = Callable[[nn.Module, Any], Any]
"""How to run a model on a batch: ``forward(model, batch) -> output`` (a task's forward)."""


def call(model: nn.Module, batch: Any) -> Any:
    """The default :data:`Forward`: ``model(batch)``."""
    return model(batch)


@dataclass(frozen=True)
class NeuronLayer:
    """A layer whose output units are neurons."""

    name: str  # module name
    kind: str  # "linear", "conv", "depthwise" or "embedding"
    weight: str  # parameter names
    bias: str | None
    neurons: int
    weight_per_neuron: int
    position: int  # order of the module's first call in a forward pass

    @property
    def params_per_neuron(self) -> int:
        return self.weight_per_neuron + (1 if self.bias is not None else 0)

    @property
    def params(self) -> tuple[str, ...]:
        return (self.weight,) if self.bias is None else (self.weight, self.bias)

    @property
    def total_params(self) -> int:
        return self.neurons * self.params_per_neuron


@dataclass(frozen=True)
class ModelUnits:
    """A model's trainable parameters grouped for neuron selection.

    ``param_shapes`` holds every parameter that was trainable when the model was described;
    ``norm_params`` those of normalisation layers and ``other_params`` those belonging to
    neither a neuron layer nor a norm layer (sparse schemes leave them frozen).
    """

    layers: tuple[NeuronLayer, ...]  # in forward order; the last one is the head
    param_shapes: dict[str, tuple[int, ...]]
    param_position: dict[str, int]  # forward position of the module owning each parameter
    norm_params: tuple[str, ...]
    other_params: tuple[str, ...]
    itemsize: int  # bytes per parameter element

    @property
    def head(self) -> NeuronLayer:
        return self.layers[-1]

    @property
    def total_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes.values())

    def layer(self, name: str) -> NeuronLayer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def param_layer(self) -> dict[str, NeuronLayer]:
        """Parameter name -> the neuron layer owning it."""
        return {p: layer for layer in self.layers for p in layer.params}


def row_count(shape: tuple[int, ...]) -> int:
    """Rows of a parameter (its first dimension; a scalar is one row)."""
    return shape[0] if shape else 1


def row_size(shape: tuple[int, ...]) -> int:
    """Elements per row of a parameter."""
    return math.prod(shape[1:]) if shape else 1


def forward_order(model: nn.Module, example: Any, forward: Forward = call) -> dict[str, int]:
    """Module name -> order of its first call in one forward pass (eval mode, no grad)."""
    order: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():

        def pre_hook(mod: nn.Module, args: object, name: str = name) -> None:
            order.setdefault(name, len(order))

        handles.append(module.register_forward_pre_hook(pre_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward(model, example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return order


def describe_model(model: nn.Module, example: Any, forward: Forward = call) -> ModelUnits:
    """Find the neuron layers of ``model`` and the forward order of its modules.

    Only parameters with ``requires_grad`` count. ``example`` is a small batch used for one
    forward pass in eval mode without gradients, run as ``forward(model, example)``.

    Raises:
        ValueError: if the model has no trainable Linear, Conv or Embedding layer.
    """
    order = forward_order(model, example, forward)
    unused = len(order) + 1
    layers: list[NeuronLayer] = []
    shapes: dict[str, tuple[int, ...]] = {}
    positions: dict[str, int] = {}
    norm: list[str] = []
    other: list[str] = []
    itemsize = 4
    for mod_name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        prefix = f"{mod_name}." if mod_name else ""
        position = order.get(mod_name, unused)
        for n, p in own:
            shapes[prefix + n] = tuple(p.shape)
            positions[prefix + n] = position
            itemsize = p.element_size()
        weight = getattr(module, "weight", None)
        if (
            isinstance(module, _NEURON_TYPES)
            and isinstance(weight, nn.Parameter)
            and weight.requires_grad
            and mod_name in order
        ):
            bias = getattr(module, "bias", None)
            has_bias = isinstance(bias, nn.Parameter) and bias.requires_grad
            groups = getattr(module, "groups", 1)
            depthwise = groups > 1 and groups == getattr(module, "in_channels", 0)
            if isinstance(module, EMBEDDING_TYPES):
                kind = "embedding"
            elif isinstance(module, nn.Linear):
                kind = "linear"
            else:
                kind = "depthwise" if depthwise else "conv"
            layers.append(
                NeuronLayer(
                    name=mod_name,
                    kind=kind,
                    weight=prefix + "weight",
                    bias=prefix + "bias" if has_bias else None,
                    neurons=int(weight.shape[0]),
                    weight_per_neuron=row_size(tuple(weight.shape)),
                    position=position,
                )
            )
            owned = {prefix + "weight", prefix + "bias"}
            other += [prefix + n for n, _ in own if prefix + n not in owned]
        elif isinstance(module, _NORM_TYPES):
            norm += [prefix + n for n, _ in own]
        else:
            other += [prefix + n for n, _ in own]
    if not layers:
        raise ValueError(
            "the model has no trainable Linear, Conv or Embedding layer to select neurons from"
        )
    if other:
        log.info("parameters outside neuron and norm layers (frozen by sparse schemes): %s", other)
    layers.sort(key=lambda layer: layer.position)
    return ModelUnits(
        layers=tuple(layers),
        param_shapes=shapes,
        param_position=positions,
        norm_params=tuple(norm),
        other_params=tuple(other),
        itemsize=itemsize,
    )
