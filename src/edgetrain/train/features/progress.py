"""A rich progress bar per epoch and a one-line summary after each epoch."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.units import format_bytes

__all__ = ["ProgressCallback", "format_epoch_line"]


def _fmt(value: object, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_epoch_line(row: dict, epochs: int) -> str:
    """'epoch 3/10  loss 0.412  acc 0.873  val_acc 0.861  1.9 s  2,430 samples/s  5.1 J'.

    The task's metrics as they come (``train_<m>`` shown as ``<m>``, then ``val_<m>``);
    ``val_loss`` only when the task reports no other validation metric.
    """
    train = [k for k in row if k.startswith("train_") and k != "train_loss"]
    val = [k for k in row if k.startswith("val_") and k != "val_loss"] or (
        ["val_loss"] if "val_loss" in row else []
    )
    parts = [
        f"epoch {row.get('epoch')}/{epochs}",
        f"loss {_fmt(row.get('train_loss'), '.4f')}",
        *(f"{k.removeprefix('train_')} {_fmt(row.get(k), '.3f')}" for k in train),
        *(f"{k} {_fmt(row.get(k), '.4g')}" for k in val),
        f"{_fmt(row.get('time_s'), '.1f')} s",
        f"{_fmt(row.get('samples_per_s'), ',.0f')} samples/s",
    ]
    if row.get("energy_j") is not None:
        estimated = "estimated" in str(row.get("energy_source"))
        parts.append(f"{row['energy_j']:.1f} J{' (estimated)' if estimated else ''}")
    if row.get("peak_rss_bytes"):
        parts.append(f"peak RSS {format_bytes(row['peak_rss_bytes'])}")
    return "  ".join(parts)


class ProgressCallback(Callback):
    """Shows step, loss and samples/s while an epoch runs; prints the epoch's summary."""

    name = "progress"

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, markup=False)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def on_fit_start(self, state: TrainState) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()

    def on_epoch_start(self, state: TrainState) -> None:
        if self._progress is None:
            return
        cfg = state.config
        total = state.batches_per_epoch or math.ceil(state.train_size / max(1, state.batch_size))
        if cfg.max_batches_per_epoch:
            total = min(total, cfg.max_batches_per_epoch)
        self._task = self._progress.add_task(
            f"epoch {state.epoch + 1}/{cfg.epochs}", total=total, loss="-", rate="-"
        )

    def on_batch_end(self, state: TrainState) -> None:
        if self._progress is None or self._task is None:
            return
        elapsed = self._progress.tasks[-1].elapsed or 0.0
        rate = f"{state.samples_seen_epoch / elapsed:,.0f}" if elapsed > 0 else "-"
        self._progress.update(self._task, advance=1, loss=f"{state.last_loss:.4f}", rate=rate)

    def on_epoch_end(self, state: TrainState) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        line = format_epoch_line(state.epoch_row, state.config.epochs)
        # printed through the live display so the bar stays below the finished epochs
        console = self._progress.console if self._progress else self.console
        console.print(line, highlight=False, soft_wrap=True)

    def on_fit_end(self, state: TrainState) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
