"""Exact memory accounting of one training step: parameters, gradients, optimizer state
and the activations saved for backward, in total and per layer.

``report(model, optimizer, batch)`` runs one real forward and backward (and an
optimizer step when the optimizer creates its state lazily, as Adam does) and
then restores the model, the gradients, the optimizer and the RNG, so that
calling it does not change training. Every byte count is of unique storages:
tied weights, views and a tensor saved by two operations count once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from rich.table import Table
from torch import nn

from edgetrain.errors import EdgeTrainError
from edgetrain.memory.hooks import SavedTensorCounter
from edgetrain.units import format_bytes

if TYPE_CHECKING:
    from edgetrain.tasks import Task

__all__ = ["LayerMemory", "MemoryReport", "render_memory_report", "report", "unique_bytes"]

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
_LOSS_SCOPE = "(loss)"


@dataclass(frozen=True)
class LayerMemory:
    """One row of the per-layer table: activations saved while its forward ran, own parameters."""

    layer: str
    type: str
    activation_bytes: int
    param_bytes: int


@dataclass(frozen=True)
class MemoryReport:
    """Bytes one training step needs, measured on a real step.

    Attributes:
        param_bytes: parameters.
        buffer_bytes: buffers (batch-norm running statistics and the like).
        grad_bytes: gradients after backward.
        optimizer_state_bytes: optimizer state (momentum, Adam moments, step counts).
        activation_bytes: tensors saved for backward (unique storages, parameters
            excluded, the loss included); the input batch counts if a layer saves it.
        total_bytes: the sum of the above.
        batch_size: samples in the batch.
        per_sample_activation_bytes: ``activation_bytes / batch_size``.
        per_layer: rows per module (own parameters only; activations attributed to
            the innermost module whose forward saved them first; "(loss)" for the loss).
    """

    param_bytes: int
    buffer_bytes: int
    grad_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int
    total_bytes: int
    batch_size: int
    per_sample_activation_bytes: float
    per_layer: tuple[LayerMemory, ...]

    @property
    def static_bytes(self) -> int:
        """Bytes that do not grow with the batch: parameters, buffers, gradients, state."""
        return self.param_bytes + self.buffer_bytes + self.grad_bytes + self.optimizer_state_bytes

    def per_layer_frame(self) -> pd.DataFrame:
        """``per_layer`` as a DataFrame with columns layer, type, activation_bytes, param_bytes."""
        columns = ["layer", "type", "activation_bytes", "param_bytes"]
        return pd.DataFrame([vars(row) for row in self.per_layer], columns=columns)


def unique_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages under ``tensors`` (a shared storage counts once)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if storage.nbytes() and key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def _state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                found.append(value)
    return found


def _split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, list | tuple) and len(batch) == 2 and isinstance(batch[0], torch.Tensor):
        return batch[0], batch[1]
    raise EdgeTrainError(
        f"batch must be a tensor of inputs or a pair (inputs, targets), got {type(batch).__name__}"
    )


def _loss(output: Any, targets: torch.Tensor | None, loss_fn: LossFn | None) -> torch.Tensor:
    if loss_fn is not None:
        loss = loss_fn(output, targets)
    elif targets is not None:
        loss = nn.functional.cross_entropy(output, targets)
    else:
        loss = output.sum()
    return _checked(loss)


def _checked(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise EdgeTrainError(f"the loss must be a tensor with one element, got {shape}")
    return loss


class _Snapshot:
    """Everything one training step changes, to put back afterwards."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.model, self.optimizer = model, optimizer
        self.params = list(model.parameters())
        self.grads = [p.grad for p in self.params]  # the objects: backward makes new ones
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.training = [(m, m.training) for m in model.modules()]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.param_values: list[torch.Tensor] | None = None
        self.state: dict[Any, dict[str, tuple[Any, Any]]] = {}
        self.groups: list[dict[str, Any]] = []
        if optimizer is not None:
            for p, state in optimizer.state.items():
                self.state[p] = {
                    k: (v, v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v))
                    for k, v in state.items()
                }
            self.groups = [
                {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
                for g in optimizer.param_groups
            ]

    def before_step(self) -> None:
        """Copy the parameter values: the optimizer step changes them in place."""
        self.param_values = [p.detach().clone() for p in self.params]

    def restore(self) -> None:
        with torch.no_grad():
            if self.param_values is not None:  # only after a step: a copy bumps versions
                for p, value in zip(self.params, self.param_values, strict=True):
                    p.copy_(value)
            for b, value in self.buffers:
                b.copy_(value)
        for p, grad in zip(self.params, self.grads, strict=True):
            p.grad = grad
        for m, flag in self.training:
            m.training = flag
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        if self.optimizer is not None:
            restored: dict[Any, dict[str, Any]] = {}
            for p, state in self.state.items():
                restored[p] = {}
                for k, (obj, saved) in state.items():
                    if isinstance(obj, torch.Tensor):
                        obj.copy_(saved)  # keep the objects: others may hold them
                        restored[p][k] = obj
                    else:
                        restored[p][k] = saved
            self.optimizer.state.clear()
            self.optimizer.state.update(restored)
            for group, saved in zip(self.optimizer.param_groups, self.groups, strict=True):
                group.update(saved)


def _needs_step(optimizer: torch.optim.Optimizer) -> bool:
    """True if some parameter with a gradient has no optimizer state yet (lazy state)."""
    return any(
        p.grad is not None and not optimizer.state.get(p)
        for group in optimizer.param_groups
        for p in group["params"]
    )


def _rows(model: nn.Module, per_module: dict[str, int]) -> tuple[LayerMemory, ...]:
    rows: list[LayerMemory] = []
    for name, module in model.named_modules():
        label = name or "(model)"
        params = unique_bytes(module.parameters(recurse=False))
        activations = per_module.pop(label, 0)
        if params or activations:
            rows.append(LayerMemory(label, type(module).__name__, activations, params))
    for label, activations in per_module.items():  # the loss, code outside the model
        rows.append(LayerMemory(label, "-", activations, 0))
    return tuple(rows)


class _Step:
    """How one step runs on a batch: the forward, the loss, the batch's size."""

    def __init__(
        self, model: nn.Module, batch: Any, loss_fn: LossFn | None, task: Task | None
    ) -> None:
        self.model, self.batch, self.loss_fn, self.task = model, batch, loss_fn, task
        if task is None:
            self.inputs, self.targets = _split_batch(batch)
            self.size = int(self.inputs.shape[0]) if self.inputs.dim() else 1
            self.count: int | torch.Tensor = 1
        else:
            if loss_fn is not None:
                raise EdgeTrainError("report() takes a task or a loss_fn, not both")
            self.size = task.size(batch)
            count = task.count(batch)  # the loop's mean: a sum over the batch's count
            self.count = count.clamp(min=1) if isinstance(count, torch.Tensor) else count

    def forward(self) -> Any:
        if self.task is None:
            return self.model(self.inputs)
        return self.task.forward(self.model, self.batch)

    def loss(self, output: Any) -> torch.Tensor:
        if self.task is None:
            return _loss(output, self.targets, self.loss_fn)
        return _checked(self.task.loss_sum(output, self.batch) / self.count)


def report(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    batch: Any,
    loss_fn: LossFn | None = None,
    *,
    task: Task | None = None,
) -> MemoryReport:
    """Measure the memory of one training step on ``batch``, without changing training.

    Runs one forward (in training mode) and backward, and ``optimizer.step()`` if a
    parameter has no optimizer state yet, then restores parameters, buffers,
    gradients (the same objects), optimizer state (the same tensors, values copied
    back), training flags and the CPU/CUDA RNG. Call it between steps, not while a
    graph built before it still waits for backward (restoring values in place
    bumps the tensors' versions).

    Args:
        model: the model.
        optimizer: its optimizer, or None (no gradients' optimizer state counted).
        batch: on the model's device: with a ``task``, any batch it reads; without,
            inputs or (inputs, targets).
        loss_fn: ``loss_fn(output, targets) -> scalar``; default cross-entropy with
            targets, ``output.sum()`` without (not with ``task``).
        task: what the batch means (:class:`~edgetrain.tasks.Task`): the model runs as
            ``task.forward`` and the loss is ``task.loss_sum / task.count``, as the loop
            computes it. Default: classification on (inputs, targets), as above.

    Raises:
        EdgeTrainError: a batch or loss of the wrong kind.
    """
    step = _Step(model, batch, loss_fn, task)
    snapshot = _Snapshot(model, optimizer)
    try:
        for p in snapshot.params:
            p.grad = None
        model.train()
        with SavedTensorCounter(model) as counter:
            output = step.forward()
            with counter.scope(_LOSS_SCOPE):
                loss = step.loss(output)
        activation_bytes = counter.total_bytes
        per_module = counter.per_module
        loss.backward()
        del loss, output
        grad_bytes = unique_bytes(p.grad for p in snapshot.params)
        state_bytes = 0
        if optimizer is not None:
            if _needs_step(optimizer):
                snapshot.before_step()
                optimizer.step()
            state_bytes = unique_bytes(_state_tensors(optimizer))
    finally:
        snapshot.restore()
    param_bytes = unique_bytes(snapshot.params)
    buffer_bytes = unique_bytes(b for b, _ in snapshot.buffers)
    batch_size = step.size
    total = param_bytes + buffer_bytes + grad_bytes + state_bytes + activation_bytes
    logger.debug("memory report: %s total, %s activations", total, activation_bytes)
    return MemoryReport(
        param_bytes=param_bytes,
        buffer_bytes=buffer_bytes,
        grad_bytes=grad_bytes,
        optimizer_state_bytes=state_bytes,
        activation_bytes=activation_bytes,
        total_bytes=total,
        batch_size=batch_size,
        per_sample_activation_bytes=activation_bytes / max(batch_size, 1),
        per_layer=_rows(model, per_module),
    )


def render_memory_report(
    rep: MemoryReport, *, title: str | None = "Memory of one training step"
) -> Table:
    """A rich table: one row per layer, then the totals."""
    table = Table(title=title)
    table.add_column("layer")
    table.add_column("type")
    table.add_column("activations", justify="right")
    table.add_column("params", justify="right")
    for row in rep.per_layer:
        table.add_row(
            row.layer, row.type, format_bytes(row.activation_bytes), format_bytes(row.param_bytes)
        )
    table.add_section()
    per_sample = format_bytes(rep.per_sample_activation_bytes)
    table.add_row("activations", f"batch {rep.batch_size}", format_bytes(rep.activation_bytes), "")
    table.add_row("  per sample", "", per_sample, "")
    table.add_row("parameters", "", "", format_bytes(rep.param_bytes))
    table.add_row("buffers", "", "", format_bytes(rep.buffer_bytes))
    table.add_row("gradients", "", "", format_bytes(rep.grad_bytes))
    table.add_row("optimizer state", "", "", format_bytes(rep.optimizer_state_bytes))
    table.add_row("total", "", format_bytes(rep.total_bytes), "", style="bold")
    return table
