"""Neuron velocity (NEq): how much each neuron's output still changes between epochs.

Forward hooks record every neuron's output on a fixed probe set (eval mode, no gradient)
before training and after each epoch. With ``y_t[n, c]`` the output of neuron ``c`` on
probe sample ``n`` after epoch ``t`` (flattened over spatial positions):

    phi_t[c]       = mean_n cos(y_t[n, c], y_{t-1}[n, c])
    delta_phi_t[c] = phi_t[c] - phi_{t-1}[c]
    v_t[c]         = delta_phi_t[c] - mu * v_{t-1}[c]          (mu = 0.5 by default)

with ``phi_0 = 1`` (before training a neuron's output is identical to itself) and
``v_0 = 0``, so after the first epoch ``v_1 = phi_1 - 1``: minus how far the output turned.
A neuron without spatial extent (a Linear unit) has one number per sample; its cosine is
taken across the probe samples instead. A Linear layer on sequences (``[N, T, features]``)
has one number per sample and position: its positions play the part of spatial ones. An
embedding's neurons are its rows, and its output for a token is that token's row: its
phi is the cosine between each row's vector before and after (all rows, not only the
tokens of the probe). Two zero vectors have similarity 1, one zero vector 0. NEq freezes a
neuron when ``|v_t| <= epsilon``; budgeted schemes rank by ``|v_t|``.

The probe set is the first ``probe_size`` samples of the training split, in order and
without augmentation, collated as training collates them (see :func:`probe_batch`); a
task (:class:`edgetrain.tasks.Task`) says how to run the model on it, so any batch
structure works (token ids, dicts, a model computing its own loss).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.errors import EdgeTrainError
from edgetrain.sparse.layers import EMBEDDING_TYPES
from edgetrain.tasks.batch import sample_batch

if TYPE_CHECKING:
    from edgetrain.tasks import Task

__all__ = ["VelocityTracker", "neuron_similarity", "probe_batch", "velocity_step"]

log = logging.getLogger(__name__)


def probe_batch(
    data: Dataset | DataLoader,
    size: int,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    *,
    repeat: bool = False,
) -> Any:
    """The first ``size`` samples of ``data`` in order, collated into one CPU batch (fewer
    if the data set is smaller, unless ``repeat``: then samples repeat to reach ``size``).

    Args:
        data: a map-style Dataset, or a DataLoader (its ``dataset`` and ``collate_fn``).
        size: samples in the batch.
        collate_fn: builds the batch from a Dataset's samples (None: ``default_collate``);
            a DataLoader brings its own.
        repeat: repeat samples when the data set has fewer than ``size``.

    Raises:
        ValueError: an empty data set, one without a length, or a DataLoader that does not
            batch.
    """
    try:
        return sample_batch(data, size, collate_fn, repeat=repeat)
    except EdgeTrainError as exc:
        raise ValueError(str(exc)) from None


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=dim), b.norm(dim=dim)
    cos = (a * b).sum(dim=dim) / (na * nb).clamp_min(1e-300)
    tiny = 1e-30
    cos = torch.where((na <= tiny) & (nb <= tiny), torch.ones_like(cos), cos)
    cos = torch.where((na <= tiny) ^ (nb <= tiny), torch.zeros_like(cos), cos)
    return cos.clamp(-1.0, 1.0)


def neuron_similarity(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """phi per neuron between two recordings of shape (samples, neurons, *spatial).

    Cosine over spatial positions, averaged over samples; for (samples, neurons) the
    cosine is taken across samples.
    """
    if previous.shape != current.shape:
        raise ValueError(f"recordings differ in shape: {previous.shape} vs {current.shape}")
    if previous.dim() == 2:
        return _cosine(previous, current, dim=0).float()
    a, b = previous.flatten(2), current.flatten(2)
    return _cosine(a, b, dim=2).mean(dim=0).float()


def velocity_step(
    phi: torch.Tensor, previous_phi: torch.Tensor, previous_velocity: torch.Tensor, mu: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(delta_phi, v)`` with ``delta_phi = phi - previous_phi`` and
    ``v = delta_phi - mu * previous_velocity``."""
    delta = phi - previous_phi
    return delta, delta - mu * previous_velocity


class VelocityTracker:
    """Records neuron outputs on a probe set and keeps phi and velocity per layer.

    Args:
        model: the model (hooks are attached only while recording).
        layers: names of the modules whose outputs are neurons.
        probe: the probe batch, already on the model's device (inputs only without a
            task; with one, a batch the task understands).
        mu: velocity momentum.
        batch_size: probe samples per forward pass.
        task: how to size, split and run the probe batch (None: ``model(probe)``).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        probe: Any,
        *,
        mu: float = 0.5,
        batch_size: int = 64,
        task: Task | None = None,
    ) -> None:
        self.model = model
        self.layers = list(layers)
        self.probe = probe
        self.mu = float(mu)
        self.batch_size = int(batch_size)
        self.task = task
        self.outputs: dict[str, torch.Tensor] | None = None
        self.phi: dict[str, torch.Tensor] = {}
        self.delta_phi: dict[str, torch.Tensor] = {}
        self.velocity: dict[str, torch.Tensor] = {}
        self.steps = 0  # velocities computed so far

    @property
    def has_velocity(self) -> bool:
        return self.steps > 0

    def _size(self) -> int:
        if self.task is not None:
            return self.task.size(self.probe)
        from edgetrain.tasks.batch import batch_size  # lazy: tasks loads torchmetrics

        return batch_size(self.probe)

    def _run(self, lo: int, hi: int) -> None:
        if self.task is not None:
            self.task.forward(self.model, self.task.split(self.probe, lo, hi))
            return
        from edgetrain.tasks.batch import slice_batch

        self.model(slice_batch(self.probe, lo, hi))

    @torch.no_grad()
    def record(self) -> dict[str, torch.Tensor]:
        """Each layer's outputs on the probe set (eval mode, no grad), float32 on the CPU:
        ``(samples, neurons, *positions)``; an embedding's rows as ``(1, rows, dim)``."""
        modules = dict(self.model.named_modules())
        rows = {n for n in self.layers if isinstance(modules[n], EMBEDDING_TYPES)}
        chunks: dict[str, list[torch.Tensor]] = {name: [] for name in self.layers}
        for name in rows:
            chunks[name].append(modules[name].weight.detach().float().cpu().unsqueeze(0))
        seen: set[str] = set()
        handles = []
        for name in self.layers:
            if name in rows:
                continue

            def hook(mod: nn.Module, args: Any, output: Any, name: str = name) -> None:
                if name not in seen:  # a module called twice: its first call
                    seen.add(name)
                    out = output.detach()
                    if isinstance(mod, nn.Linear) and out.dim() > 2:
                        out = out.movedim(-1, 1)  # features are the neurons, tokens positions
                    chunks[name].append(out.float().cpu())

            handles.append(modules[name].register_forward_hook(hook))
        was_training = self.model.training
        self.model.eval()
        try:
            if handles:
                size = self._size()
                for lo in range(0, size, self.batch_size):
                    seen.clear()
                    self._run(lo, min(size, lo + self.batch_size))
        finally:
            self.model.train(was_training)
            for h in handles:
                h.remove()
        return {name: torch.cat(parts) for name, parts in chunks.items() if parts}

    def reference(self) -> None:
        """Record the outputs that the next :meth:`observe` compares with (no velocity)."""
        self.outputs = self.record()

    def observe(self) -> bool:
        """Record outputs; update phi and velocity if there is a previous recording.

        Returns:
            Whether velocities were updated.
        """
        current = self.record()
        previous, self.outputs = self.outputs, current
        if previous is None:
            return False
        for name, out in current.items():
            phi = neuron_similarity(previous[name], out)
            before = self.phi.get(name, torch.ones_like(phi))  # phi_0 = 1
            velocity = self.velocity.get(name, torch.zeros_like(phi))  # v_0 = 0
            self.delta_phi[name], self.velocity[name] = velocity_step(
                phi, before, velocity, self.mu
            )
            self.phi[name] = phi
        self.steps += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        """phi, delta phi, velocity and step count (outputs are re-recorded on resume)."""
        return {
            "phi": dict(self.phi),
            "delta_phi": dict(self.delta_phi),
            "velocity": dict(self.velocity),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phi = dict(state.get("phi", {}))
        self.delta_phi = dict(state.get("delta_phi", {}))
        self.velocity = dict(state.get("velocity", {}))
        self.steps = int(state.get("steps", 0))
