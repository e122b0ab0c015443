"""Per-minibatch timing: a callback that turns the loop's timestamps into rows.

Per batch the loop measures (see :class:`edgetrain.train.BatchTiming`):

- ``wait_s``: the training process blocked in ``next(loader)``;
- ``copy_s``: host-to-device copy (exact: the callback turns on ``sync_timing``);
- ``compute_s``: forward, backward and optimizer step, ending at a host-device sync.

``stall_s`` is the part of data loading not hidden behind compute. Because every step
ends with a host-device sync, nothing computes while the process waits, and whatever
loading the workers did during the previous step's compute is not in ``wait_s`` at all:
the measured wait *is* the stall (``stall_s == wait_s``, never negative). The Jetson
study's formula ``max(fetch + pre-process - compute, 0)`` estimates the same quantity
from the fetch time inside the workers; here it is measured where it is paid.

Batch records are handed on (``on_batch``) at the end of each epoch, not inside the
loop: writing a CSV row per batch costs a system call that a loaded machine can stretch to
milliseconds, and it would compete with the data loading being measured for the storage.
``live=True`` hands each record on at once instead.

Per epoch, ``train_wall_s`` runs from the first batch request to the end of the last
step; ``wait_s + copy_s + compute_s`` of its batches add up to it up to the loop's own
bookkeeping (``accounted_frac``). Building the DataLoader and starting its workers
happens before the first request and is reported apart as ``loader_start_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from edgetrain.train.callbacks import BatchTiming, Callback, TrainState

__all__ = ["BATCH_COLUMNS", "EPOCH_TIMING_COLUMNS", "BatchRecord", "BatchTimer", "EpochTiming"]

BATCH_COLUMNS: tuple[str, ...] = (
    "epoch",
    "batch",
    "samples",
    "wait_s",
    "copy_s",
    "compute_s",
    "stall_s",
)
EPOCH_TIMING_COLUMNS: tuple[str, ...] = (
    "epoch",
    "batches",
    "samples",
    "loader_start_s",
    "wait_s",
    "copy_s",
    "compute_s",
    "stall_s",
    "train_wall_s",
    "accounted_frac",
)


@dataclass(frozen=True)
class BatchRecord:
    """One minibatch (seconds). ``epoch`` and ``batch`` count from 1, as in metrics.csv."""

    epoch: int
    batch: int
    samples: int
    wait_s: float
    copy_s: float
    compute_s: float
    stall_s: float

    @classmethod
    def from_timing(cls, epoch: int, batch: int, timing: BatchTiming) -> BatchRecord:
        return cls(
            epoch=epoch,
            batch=batch,
            samples=timing.samples,
            wait_s=timing.wait_s,
            copy_s=timing.copy_s,
            compute_s=timing.compute_s,
            stall_s=timing.wait_s,  # see the module docstring: the wait is not overlapped
        )

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochTiming:
    """Sums over one epoch's training batches (seconds); see the module docstring."""

    epoch: int
    batches: int
    samples: int
    loader_start_s: float
    wait_s: float
    copy_s: float
    compute_s: float
    stall_s: float
    train_wall_s: float
    accounted_frac: float | None

    def row(self) -> dict[str, Any]:
        return asdict(self)


class BatchTimer(Callback):
    """Collects a :class:`BatchRecord` per batch and an :class:`EpochTiming` per epoch.

    Args:
        on_batch: called with each batch record (e.g. to append a CSV row): at the end of
            its epoch (or of training, if interrupted), or at once with ``live=True``.
        on_epoch: called at the end of each epoch with its timing and the loop's metrics
            row (time_s, samples_per_s and the monitor's energy and memory columns).
        live: hand batch records on inside the loop, as they are made.

    Attributes:
        batches: every batch record so far.
        epochs: every epoch timing so far.
    """

    name = "bench-timing"

    def __init__(
        self,
        on_batch: Callable[[BatchRecord], None] | None = None,
        on_epoch: Callable[[EpochTiming, dict[str, Any]], None] | None = None,
        live: bool = False,
    ) -> None:
        self.on_batch = on_batch
        self.on_epoch = on_epoch
        self.live = live
        self._delivered = 0
        self.batches: list[BatchRecord] = []
        self.epochs: list[EpochTiming] = []
        self._reset(0.0)

    def _reset(self, t_start: float) -> None:
        self._t_epoch_start = t_start
        self._t_first_request: float | None = None
        self._t_batch_start = t_start
        self._t_last_end = t_start
        self._sums = [0.0, 0.0, 0.0]
        self._count = 0
        self._samples = 0

    def on_fit_start(self, state: TrainState) -> None:
        state.sync_timing = True  # copies are then timed exactly on CUDA (a no-op on CPU)

    def on_epoch_start(self, state: TrainState) -> None:
        self._reset(time.perf_counter())

    def on_batch_start(self, state: TrainState) -> None:
        self._t_batch_start = time.perf_counter()  # just after the batch arrived

    def on_batch_end(self, state: TrainState) -> None:
        now = time.perf_counter()
        timing = state.batch_timing
        if timing is None:
            return
        if self._t_first_request is None:
            self._t_first_request = self._t_batch_start - timing.wait_s
        self._t_last_end = now
        self._sums[0] += timing.wait_s
        self._sums[1] += timing.copy_s
        self._sums[2] += timing.compute_s
        self._count += 1
        self._samples += timing.samples
        record = BatchRecord.from_timing(state.epoch + 1, state.batch_in_epoch, timing)
        self.batches.append(record)
        if self.live:
            self._deliver()

    def _deliver(self) -> None:
        """Hand on the batch records not handed on yet."""
        pending, self._delivered = self.batches[self._delivered :], len(self.batches)
        if self.on_batch is not None:
            for record in pending:
                self.on_batch(record)

    def on_epoch_end(self, state: TrainState) -> None:
        first = self._t_first_request if self._t_first_request is not None else self._t_last_end
        wait_s, copy_s, compute_s = self._sums
        wall_s = max(0.0, self._t_last_end - first)
        timing = EpochTiming(
            epoch=state.epoch + 1,
            batches=self._count,
            samples=self._samples,
            loader_start_s=max(0.0, first - self._t_epoch_start),
            wait_s=wait_s,
            copy_s=copy_s,
            compute_s=compute_s,
            stall_s=wait_s,
            train_wall_s=wall_s,
            accounted_frac=(wait_s + copy_s + compute_s) / wall_s if wall_s > 0 else None,
        )
        self.epochs.append(timing)
        self._deliver()  # after the loop took the epoch's training time: not counted in it
        if self.on_epoch is not None:
            self.on_epoch(timing, dict(state.epoch_row))

    def on_fit_end(self, state: TrainState) -> None:
        self._deliver()  # an interrupted epoch keeps its batch rows
