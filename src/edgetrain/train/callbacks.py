"""Callbacks: no-op hook classes the loop calls at fit, epoch and batch boundaries.

Every feature of training (monitor, budget, activations, sparse updates, pruning, progress)
is one :class:`Callback`. What a callback may change, and when, is said on each hook and on
the fields of :class:`TrainState` (docs/design.md, "How a feature plugs into training").
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from edgetrain.config import TrainConfig
    from edgetrain.tasks import Task
    from edgetrain.train.rundir import RunDir

__all__ = ["BatchTiming", "Callback", "CallbackList", "Forward", "TrainState"]

log = logging.getLogger(__name__)

Forward = Callable[..., Any]  # the model's forward: called as the task says (x, *args, **kw)


@dataclass(frozen=True)
class BatchTiming:
    """Where one logical batch's time went (seconds).

    ``wait_s``: blocked on the DataLoader (fetch and pre-processing not hidden by workers);
    ``copy_s``: host-to-device copy; ``compute_s``: forward, backward and optimizer step,
    ending at a host-device sync, so asynchronous GPU work is counted here.
    """

    wait_s: float
    copy_s: float
    compute_s: float
    samples: int


@dataclass
class TrainState:
    """What the loop knows; callbacks read it and may change the fields marked mutable."""

    config: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    run: RunDir | None
    train_size: int
    task: Task  # what a batch means: the loss, the metrics, how to call the model
    epoch: int = 0  # 0-based index of the current epoch
    step: int = 0  # logical (optimizer) steps done since the start of training
    batch_in_epoch: int = 0
    # mutable by callbacks (the adaptive controller): applied from the next batch or epoch
    batch_size: int = 0  # logical batch, takes effect at the next epoch
    micro_batch_size: int = 0  # takes effect at the next batch
    base_lr: float = 0.0  # the schedule multiplies this
    # evaluation in chunks of this many samples (None: whole batches), set under a budget
    eval_micro_batch_size: int | None = None
    scheduler: Any = None  # a user's LR scheduler, stepped after each epoch
    collate_fn: Any = None  # for the loaders edgetrain builds (None: default_collate)
    # filled by the loop
    last_loss: float = float("nan")
    batches_per_epoch: int | None = None  # logical batches in this epoch's loader, if known
    train_metrics: dict[str, Any] = field(default_factory=dict)  # this epoch's, on the device
    batch_timing: BatchTiming | None = None  # set before on_batch_end
    sync_timing: bool = False  # synchronise CUDA after the copy so its time is exact (bench)
    # True while the optimizer applies a step: an error raised then may leave it half applied
    in_optimizer_step: bool = False
    # set by optimizer-in-backward (features/optim_backward.py): a logical batch without
    # accumulation is stepped by per-parameter hooks during its backward pass
    step_in_backward: bool = False
    # set with step_in_backward where the optimizer can fold (SGD with momentum): a
    # logical batch with accumulation folds each micro-batch's gradients into the
    # momentum buffers during backward (a MomentumFold, edgetrain.memory.fold)
    fold: Any = None
    samples_seen_epoch: int = 0
    epoch_row: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    stop_training: bool = False
    # what summary.json will say, set just before on_fit_end (running until then), and
    # the test split's metrics once evaluated: for loggers
    status: str = "running"
    test_metrics: dict[str, Any] | None = None
    skipped_steps: int = 0  # logical batches whose loss was not finite (on_nonfinite=skip)
    # set by edgetrain's callbacks for the others and for env.json
    sensor_statuses: list[Any] | None = None  # the monitor's sensors: available or not, why
    sparse_selection: Any = None  # the sparse-update callback's current Selection
    # free for a user's own callbacks to share values; edgetrain's callbacks never use it
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def run_path(self) -> Path | None:
        return self.run.path if self.run is not None else None

    @property
    def metrics_columns(self) -> tuple[str, ...]:
        """metrics.csv's columns for this run's task."""
        from edgetrain.contract import metrics_columns

        return metrics_columns(*self.task.metric_names())

    @property
    def accum_steps(self) -> int:
        return -(-self.batch_size // max(1, self.micro_batch_size))


class Callback:
    """Override any hook; all are no-ops. ``state_dict`` goes into checkpoints.

    ``unique`` callbacks (the monitor, the budget controller, sparse updates, pruning) are
    active once per run: a second one with the same :attr:`key` is dropped with a log line.
    """

    name: str = ""
    unique: ClassVar[bool] = False

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def on_batch_start(self, state: TrainState) -> None: ...
    def on_batch_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def on_oom(self, state: TrainState, error: BaseException) -> bool:
        """Out of memory inside a step. Return True after shrinking the step to retry it."""
        del state, error
        return False

    def wrap_forward(self, forward: Forward) -> Forward:
        """Wrap the model's forward pass (called once, before training; default: unchanged)."""
        return forward

    def summary(self) -> Mapping[str, Any]:
        """Sections this feature adds to summary.json (read after ``on_fit_end``)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed state: tensors and plain types only (loaded with weights_only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    @property
    def key(self) -> str:
        return self.name or type(self).__name__


class CallbackList(Callback):
    """Calls each callback in order."""

    def __init__(self, callbacks: Iterable[Callback]) -> None:
        self.callbacks: list[Callback] = []
        for cb in callbacks:
            if cb.unique and any(c.key == cb.key for c in self.callbacks):
                log.info("another %s callback is active on this run; dropping %r", cb.key, cb)
                continue
            self.callbacks.append(cb)

    def _each(self, hook: str, state: TrainState) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(state)

    def on_fit_start(self, state: TrainState) -> None:
        self._each("on_fit_start", state)

    def on_epoch_start(self, state: TrainState) -> None:
        self._each("on_epoch_start", state)

    def on_batch_start(self, state: TrainState) -> None:
        self._each("on_batch_start", state)

    def on_batch_end(self, state: TrainState) -> None:
        self._each("on_batch_end", state)

    def on_epoch_end(self, state: TrainState) -> None:
        self._each("on_epoch_end", state)

    def on_fit_end(self, state: TrainState) -> None:
        self._each("on_fit_end", state)

    def on_oom(self, state: TrainState, error: BaseException) -> bool:
        # every callback hears of it; one that shrinks the step is enough to retry
        return any([cb.on_oom(state, error) for cb in self.callbacks])

    def wrap_forward(self, forward: Forward) -> Forward:
        for cb in self.callbacks:
            forward = cb.wrap_forward(forward)
        return forward

    def summary(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for cb in self.callbacks:
            merged.update(cb.summary())
        return merged

    def state_dict(self) -> dict[str, Any]:
        return {cb.key: cb.state_dict() for cb in self.callbacks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for cb in self.callbacks:
            if cb.key in state:
                cb.load_state_dict(state[cb.key])
