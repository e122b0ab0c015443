"""What a run shows: the model's size at the start, a progress bar per epoch (ETA and
samples/s), a one-line summary after each epoch and a summary table at the end."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from torch import nn

from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.units import format_bytes, format_seconds

__all__ = [
    "ProgressCallback",
    "format_epoch_line",
    "format_model_line",
    "model_stats",
    "summary_table",
]

log = logging.getLogger(__name__)


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


def model_stats(model: nn.Module, state: TrainState | None = None, sample: Any = None) -> dict:
    """Parameters, trainable parameters and (given one batch) multiply-accumulates per
    sample, counted by ``torch.utils.flop_counter`` on one sample in eval mode.

    MACs are None when they cannot be counted (the forward pass fails on one sample).
    """
    params = list(model.parameters())
    stats: dict[str, Any] = {
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "macs_per_sample": None,
    }
    if sample is None or state is None:
        return stats
    from torch.utils.flop_counter import FlopCounterMode

    from edgetrain.train.optim import param_dtype
    from edgetrain.train.writer import restore_rng, rng_state

    task, was_training = state.task, model.training
    rng = rng_state()  # a user's __getitem__ or forward may draw random numbers
    try:
        batch = task.to_device(sample, state.device, param_dtype(state.config.precision))
        one = task.split(batch, 0, 1)
        model.eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            task.forward(model, one)
        stats["macs_per_sample"] = counter.get_total_flops() // 2
    except Exception as exc:  # a summary line must never stop training
        log.debug("MACs per sample not counted: %s", exc)
    finally:
        model.train(was_training)
        restore_rng(rng)
    return stats


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def format_model_line(name: str, stats: Mapping[str, Any]) -> str:
    """'model cnn: 12,346 parameters (12,346 trainable), 1.2 M MACs per sample'."""
    line = (
        f"model {name}: {stats['parameters']:,} parameters "
        f"({stats['trainable_parameters']:,} trainable)"
    )
    if stats.get("macs_per_sample"):
        line += f", {_si(stats['macs_per_sample'])} MACs per sample"
    return line


class ProgressCallback(Callback):
    """Shows step, loss, samples/s and the time left while an epoch runs; prints the
    model's size first and each epoch's summary.

    Args:
        console: where to print (default: stderr, no markup).
        sample: a function returning one batch as training sees it, to count MACs per
            sample (None: not counted).
    """

    name = "progress"

    def __init__(
        self, console: Console | None = None, sample: Callable[[], Any] | None = None
    ) -> None:
        self.console = console or Console(stderr=True, markup=False)
        self.sample = sample
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._epoch_times: list[float] = []

    def on_fit_start(self, state: TrainState) -> None:
        batch = None
        if self.sample is not None:
            try:
                batch = self.sample()
            except Exception as exc:  # only for the summary line
                log.debug("no sample batch for the model summary: %s", exc)
        stats = model_stats(state.model, state, batch)
        self.console.print(
            format_model_line(str(state.config.model), stats), highlight=False, soft_wrap=True
        )
        self._epoch_times = [float(r.get("time_s") or 0.0) for r in state.history]
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} samples/s"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[run_eta]}"),
            console=self.console,
            transient=True,
        )
        self._progress.start()

    def _run_eta(self, state: TrainState) -> str:
        """The time left for the epochs after this one, from the mean epoch so far."""
        left = state.config.epochs - state.epoch - 1
        if not self._epoch_times or left <= 0:
            return ""
        mean = sum(self._epoch_times) / len(self._epoch_times)
        return f"(run: {format_seconds(mean * left)} more)"

    def on_epoch_start(self, state: TrainState) -> None:
        if self._progress is None:
            return
        cfg = state.config
        total = state.batches_per_epoch or math.ceil(state.train_size / max(1, state.batch_size))
        if cfg.max_batches_per_epoch:
            total = min(total, cfg.max_batches_per_epoch)
        self._task = self._progress.add_task(
            f"epoch {state.epoch + 1}/{cfg.epochs}",
            total=total,
            loss="-",
            rate="-",
            run_eta=self._run_eta(state),
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
        self._epoch_times.append(float(state.epoch_row.get("time_s") or 0.0))
        line = format_epoch_line(state.epoch_row, state.config.epochs)
        # printed through the live display so the bar stays below the finished epochs
        console = self._progress.console if self._progress else self.console
        console.print(line, highlight=False, soft_wrap=True)

    def on_fit_end(self, state: TrainState) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _value(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.4g}"


def _metrics(row: Mapping[str, Any] | None, keys: list[str]) -> str:
    row = row or {}
    return ", ".join(f"{k} {_value(row.get(k))}" for k in keys if row.get(k) is not None)


def summary_table(summary: Mapping[str, Any]) -> Table:
    """The end of a run in a few rows (from summary.json): status and why it stopped,
    epochs, best and final metrics with their weights files, test metrics, time, energy
    with its source, peak memory against the budget, and the model's size."""
    table = Table(show_header=False, box=box.SIMPLE, pad_edge=False)
    table.add_column("what", style="bold", no_wrap=True)
    table.add_column("value")

    def row(what: str, value: str | None) -> None:
        if value:
            table.add_row(Text(what), Text(value))

    status = str(summary.get("status") or "-")
    reason, at = summary.get("stop_reason"), summary.get("stop_epoch")
    row("status", status)
    if reason and reason != status:
        row("stop reason", str(reason))
    elif reason and at and status != "completed":  # interrupted, diverged, failed
        row("stop reason", f"{reason} in epoch {at}")
    epochs, done = summary.get("epochs"), summary.get("epochs_completed")
    row("epochs", f"{done} of {epochs}, {summary.get('steps') or 0:,} steps")
    task = summary.get("task") or {}
    key = str(task.get("best_metric") or "val_loss")
    checkpoints = summary.get("checkpoints") or {}
    best, final = summary.get("best"), summary.get("final")
    if best:
        where = (checkpoints.get("best") or {}).get("path")
        row(
            "best",
            f"{key} {_value(best.get(key))} at epoch {best.get('epoch')}"
            + (f" ({where})" if where else ""),
        )
    if final:
        keys = [key, *(k for k in ("val_loss", "train_loss") if k != key)]
        where = (checkpoints.get("final") or {}).get("path")
        row(
            "final",
            f"{_metrics(final, keys)} at epoch {final.get('epoch')}"
            + (f" ({where})" if where else ""),
        )
    test = summary.get("test") or {}
    row("test", _metrics(test, sorted(test)))
    row("time", format_seconds(summary.get("total_time_s")))
    energy = summary.get("total_energy_j")
    if isinstance(energy, int | float):
        power = summary.get("avg_power_w")
        label = str(summary.get("energy_source") or "unknown source")
        if summary.get("energy_scope"):  # what the energy covers (machine, process, ...)
            label += f"; {summary['energy_scope']}"
        row(
            "energy",
            f"{energy:.1f} J ({label})"
            + (f", {power:.1f} W average" if isinstance(power, int | float) else ""),
        )
    else:
        row("energy", "not measured")
    row("memory", _memory(summary))
    model = summary.get("model") or {}
    if model.get("parameters") is not None:
        row(
            "model",
            f"{model.get('name')}: {model['parameters']:,} parameters "
            f"({model.get('trainable_parameters', 0):,} trainable)",
        )
    skipped = summary.get("nonfinite_steps_skipped")
    if skipped:
        row("warning", f"{skipped} step(s) with a non-finite loss skipped")
    return table


def _memory(summary: Mapping[str, Any]) -> str | None:
    parts = []
    if summary.get("peak_rss_bytes"):
        parts.append(f"peak RSS {format_bytes(summary['peak_rss_bytes'])}")
    if summary.get("peak_device_mem_bytes"):
        parts.append(f"peak device memory {format_bytes(summary['peak_device_mem_bytes'])}")
    adapt = summary.get("adapt") or {}
    budget, peak = adapt.get("budget_bytes"), adapt.get("measured_peak_bytes")
    if budget and peak is not None:
        parts.append(
            f"{format_bytes(peak)} of the {format_bytes(budget)} budget "
            f"({100 * peak / budget:.0f}%, {adapt.get('memory_source') or 'measured'})"
        )
    return ", ".join(parts) or None
