"""What the Task seam costs: ``edgetrain.fit`` against a hand-written PyTorch loop, per task.

For each built-in task the same work is trained two ways, side by side in one run:

* ``fit``: ``edgetrain.fit(model, train, val, task=..., optimizer=factory, ...)`` with the
  monitor off and no progress bar (the run directory, metrics.csv and the per-epoch
  checkpoint are still written: they are part of what fit costs);
* ``plain``: a hand-written loop with the same model initialisation (same seed), the same
  batches in the same order (edgetrain's order: ``randperm`` seeded by
  ``seed * 1_000_003 + epoch``), the same optimizer, the same per-epoch dropout seed, and
  the same metrics computed by hand: each training step's loss (and accuracy for
  classification, which fit also tracks on training batches) and, once per epoch, the
  validation loss and metrics. It indexes the in-memory tensors directly (no DataLoader),
  so fit's DataLoader, Task dispatch, torchmetrics and run-directory writes all count as
  fit's overhead.

Repetitions alternate (plain, fit, plain, fit, ...: ABAB) after one untimed warm-up run of
each, in this process. Reported per task:

* step: the median time between consecutive step ends (fetch, copy, forward, backward,
  optimizer step, per-step metrics and callbacks; the first step of an epoch is left out),
  all runs pooled, fit / plain; beside it the range of the runs' own ratios, and the same
  ratio in process CPU time (robust to being descheduled at ``--threads 1``; with more
  threads it also counts torch's idle workers spinning). Goal: at most 1.02.
* epoch: the median wall time of an epoch (training steps, validation, and what fit does
  at the epoch's end: metrics.csv row, checkpoint, summary.json), fit / plain.
* call: the whole ``fit()`` call against the whole hand-written function (fit also opens
  the run directory, writes config.yaml and env.json and saves model.pt).
* same work: the largest relative difference between the two sides' final metrics (they
  train the same model on the same batches, so it is rounding-sized).
* peak RSS growth of each side, each measured in a fresh subprocess: the Linux RSS
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) above the RSS just
  before the run. ``cold`` is the process's first run (fit's includes what it imports
  lazily: torchmetrics, which imports transformers when that is installed, the run
  writer, ...); ``warm`` a second run in the same process.

``--breakdown`` adds, per task, where each side's step and epoch time goes: extra runs
with the pieces wrapped in timers (the Task's methods, the DataLoader, backward, the
optimizer, validation, the epoch-end writes), medians per step; "rest of the loop" is
what no wrapper covers (the loop's own bookkeeping, callbacks, the loss sync).

On a 2-core machine shared with other work, torch's two threads wait for each other at
every operation and the step times scatter; ``--threads 1`` gives steadier ratios.

Usage::

    python benchmarks/task_overhead.py                  # under 3 minutes on 2 cores
    python benchmarks/task_overhead.py --quick          # smoke run: tiny sizes, no RSS
    python benchmarks/task_overhead.py --threads 1 --breakdown --no-rss
    python benchmarks/task_overhead.py --reps 7 --tasks regression,language_modeling
    python benchmarks/task_overhead.py --json task_overhead.json
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

import edgetrain
from edgetrain.train import Callback, TrainState
from edgetrain.zoo import build_model, load_dataset
from edgetrain.zoo.base import TensorPairDataset
from procmem import reset_peak_rss, status_bytes

TASK_NAMES = ("classification", "regression", "language_modeling", "model_loss")
SEED = 0
GOAL = 1.02


# -- timing ------------------------------------------------------------------------------------
def _now() -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads)."""
    return time.perf_counter(), time.process_time()


class Clock:
    """Time stamps (wall, process CPU) at epoch starts, step ends and the end of the run;
    with a :class:`Meter`, the time of named pieces between them too."""

    def __init__(self, meter: Meter | None = None) -> None:
        self.epoch_starts: list[tuple[float, float]] = []
        self.step_ends: list[list[tuple[float, float]]] = []
        self.end = (math.nan, math.nan)
        self.meter = meter

    def epoch_start(self) -> None:
        if self.meter is not None:
            self.meter.close_epoch()
        self.epoch_starts.append(_now())
        self.step_ends.append([])

    def step_end(self) -> None:
        self.step_ends[-1].append(_now())
        if self.meter is not None:
            self.meter.close_step(first=len(self.step_ends[-1]) == 1)

    def finish(self) -> None:
        self.end = _now()
        if self.meter is not None:
            self.meter.close_epoch()

    def step_s(self, kind: int = 0) -> list[float]:
        """Intervals between consecutive step ends within each epoch (0: wall, 1: CPU)."""
        return [b[kind] - a[kind] for ends in self.step_ends for a, b in itertools.pairwise(ends)]

    def epoch_s(self) -> list[float]:
        bounds = [*self.epoch_starts, self.end]
        return [b[0] - a[0] for a, b in itertools.pairwise(bounds)]


class Meter:
    """Where the time goes (``--breakdown``): wrapped calls add their wall time to a named
    piece of the current step (or, for per-epoch pieces, of the current epoch). Only the
    outermost wrapped call is timed, so nested pieces are counted once, in their caller."""

    def __init__(self, epoch_pieces: Iterable[str] = ()) -> None:
        self.epoch_pieces = frozenset(epoch_pieces)
        self.current: dict[str, float] = {}
        self.current_epoch: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []  # one per step interval the Clock keeps
        self.epochs: list[dict[str, float]] = []
        self._depth = 0

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                into = self.current_epoch if name in self.epoch_pieces else self.current
                into[name] = into.get(name, 0.0) + time.perf_counter() - t0

        return timed

    def close_step(self, first: bool) -> None:
        if not first:  # the Clock has no interval for an epoch's first step
            self.steps.append(self.current)
        self.current = {}

    def close_epoch(self) -> None:
        if self.current_epoch:
            self.epochs.append(self.current_epoch)
        self.current_epoch = {}
        self.current = {}


class ClockCallback(Callback):
    """The same clock inside fit: epoch start, after each step, end of fit."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_epoch_start(self, state: TrainState) -> None:
        self.clock.epoch_start()

    def on_batch_end(self, state: TrainState) -> None:
        self.clock.step_end()

    def on_fit_end(self, state: TrainState) -> None:
        self.clock.finish()


# -- the hand-written side, per task -----------------------------------------------------------
class Plain:
    """What a user writes without edgetrain: batches, the loss, the metrics (by hand)."""

    def batch(self, data: Any, idx: list[int]) -> Any:
        index = torch.as_tensor(idx, dtype=torch.long)
        return data.x[index], data.y[index]

    def forward(self, model: Callable[..., Any], batch: Any) -> Any:
        return model(batch[0])

    def criterion(self, out: Any, batch: Any) -> torch.Tensor:
        """The batch's mean loss."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        """The batch's mean loss and the model's output."""
        out = self.forward(model, batch)
        return self.criterion(out, batch), out

    def new_stats(self) -> dict[str, torch.Tensor]:
        return {}

    def track(self, stats: dict[str, torch.Tensor], out: Any, batch: Any) -> None:
        """Per-step training metrics (classification: accuracy, as fit tracks it)."""

    def train_metrics(self, stats: dict[str, torch.Tensor], samples: int) -> dict[str, float]:
        return {}

    def evaluate(self, model: nn.Module, data: Any, batch_size: int) -> dict[str, float]:
        raise NotImplementedError


def _eval_batches(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


class PlainClassification(Plain):
    def criterion(self, out: Any, batch: Any) -> torch.Tensor:
        return F.cross_entropy(out, batch[1])

    def new_stats(self) -> dict[str, torch.Tensor]:
        return {"correct": torch.zeros((), dtype=torch.long)}

    def track(self, stats: dict[str, torch.Tensor], out: Any, batch: Any) -> None:
        stats["correct"] += (out.detach().argmax(dim=1) == batch[1]).sum()

    def train_metrics(self, stats: dict[str, torch.Tensor], samples: int) -> dict[str, float]:
        return {"train_acc": float(stats["correct"]) / samples}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, batch_size: int) -> dict[str, float]:
        loss = correct = 0.0
        for idx in _eval_batches(len(data), batch_size):
            x, y = self.batch(data, idx)
            out = model(x)
            loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += float((out.argmax(dim=1) == y).sum())
        return {"val_loss": loss / len(data), "val_acc": correct / len(data)}


class PlainRegression(Plain):
    def criterion(self, out: Any, batch: Any) -> torch.Tensor:
        y = batch[1]
        return F.mse_loss(out.reshape(y.shape), y)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, batch_size: int) -> dict[str, float]:
        sse = sae = sy = syy = 0.0
        for idx in _eval_batches(len(data), batch_size):
            x, y = self.batch(data, idx)
            err = model(x).reshape(y.shape) - y
            sse += float((err * err).sum())
            sae += float(err.abs().sum())
            sy += float(y.sum())
            syy += float((y * y).sum())
        n = len(data)
        sst = syy - sy * sy / n
        return {
            "val_loss": sse / n,
            "val_mae": sae / n,
            "val_rmse": math.sqrt(sse / n),
            "val_r2": 1.0 - sse / sst,
        }


class PlainLanguageModeling(Plain):
    def criterion(self, out: Any, batch: Any) -> torch.Tensor:
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), batch[1].reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, batch_size: int) -> dict[str, float]:
        loss = correct = tokens = 0.0
        for idx in _eval_batches(len(data), batch_size):
            x, y = self.batch(data, idx)
            out = model(x)
            loss += float(
                F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum")
            )
            correct += float((out.argmax(dim=-1) == y).sum())
            tokens += y.numel()
        return {
            "val_loss": loss / tokens,
            "val_perplexity": math.exp(loss / tokens),
            "val_token_acc": correct / tokens,
        }


class PlainModelLoss(Plain):
    def batch(self, data: Any, idx: list[int]) -> Any:
        return default_collate([data[i] for i in idx])  # what a DataLoader would collate

    def forward(self, model: Callable[..., Any], batch: Any) -> Any:
        return model(**batch)

    def criterion(self, out: Any, batch: Any) -> torch.Tensor:
        return out.loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, batch_size: int) -> dict[str, float]:
        loss = 0.0
        for idx in _eval_batches(len(data), batch_size):
            batch = self.batch(data, idx)
            loss += float(model(**batch).loss) * len(idx)
        return {"val_loss": loss / len(data)}


# -- a model that computes its own loss (the Hugging Face convention), on dict batches --------
@dataclass
class ModelOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class DictMLP(nn.Module):
    """``model(features=..., labels=...)`` -> an output with ``.loss`` and ``.logits``."""

    def __init__(self, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> ModelOutput:
        logits = self.head(self.net(features))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ModelOutput(loss, logits)


class DictDataset(Dataset):
    """Items ``{"features": x[i], "labels": y[i]}``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "labels": self.y[i]}


# -- the workloads -----------------------------------------------------------------------------
@dataclass
class Workload:
    task: str
    label: str
    make_model: Callable[[], nn.Module]
    train: Dataset
    val: Dataset
    batch_size: int
    epochs: int
    batches: int | None  # max batches per epoch
    plain: Plain
    lr: float = 0.05
    optimizer: str = "sgd"

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr)
        return torch.optim.SGD(params, lr=self.lr, momentum=0.9)

    def model(self) -> nn.Module:
        torch.manual_seed(SEED)  # the same initialisation on both sides
        return self.make_model()

    @property
    def steps_per_epoch(self) -> int:
        n = -(-len(self.train) // self.batch_size)  # type: ignore[arg-type]
        return min(n, self.batches) if self.batches else n


def _split(ds: TensorPairDataset, n_val: int) -> tuple[TensorPairDataset, TensorPairDataset]:
    """A fixed random split into contiguous train and validation tensors."""
    perm = torch.randperm(len(ds), generator=torch.Generator().manual_seed(SEED))
    tr, va = perm[n_val:], perm[:n_val]
    x, y = ds.x, ds.y
    return (
        TensorPairDataset(x[tr].contiguous(), y[tr].contiguous()),
        TensorPairDataset(x[va].contiguous(), y[va].contiguous()),
    )


def build_workload(task: str, quick: bool) -> Workload:
    epochs = 1 if quick else 3
    if task == "classification":
        ds, _ = load_dataset("digits")
        train, val = _split(ds, 360)  # type: ignore[arg-type]
        return Workload(
            task,
            "cnn (16, 32) on digits 8x8, batch 64",
            lambda: build_model("cnn", num_classes=10, in_channels=1, input_size=(8, 8)),
            train,
            val,
            batch_size=64,
            epochs=epochs,
            batches=4 if quick else None,
            plain=PlainClassification(),
        )
    if task == "regression":
        ds, _ = load_dataset("diabetes")
        train, val = _split(ds, 88)  # type: ignore[arg-type]
        return Workload(
            task,
            "mlp (256, 128) on diabetes, batch 32",
            lambda: build_model("mlp", num_classes=1, in_channels=10, input_size=(1, 1)),
            train,
            val,
            batch_size=32,
            epochs=epochs,
            batches=4 if quick else None,
            plain=PlainRegression(),
            lr=0.01,
        )
    if task == "language_modeling":
        seq = 64
        ds, _ = load_dataset("pycorpus", max_bytes=20_000 if quick else 200_000, seq_len=seq)
        train, val = _split(ds, 32 if quick else 128)  # type: ignore[arg-type]
        return Workload(
            task,
            f"gpt (d_model 64, 2 layers, 4 heads) on pycorpus {seq}-byte windows, batch 16",
            lambda: build_model(
                "gpt",
                num_classes=256,
                in_channels=1,
                input_size=(1, seq),
                d_model=64,
                n_layers=2,
                n_heads=4,
            ),
            train,
            val,
            batch_size=16,
            epochs=epochs,
            batches=4 if quick else 20,
            plain=PlainLanguageModeling(),
            lr=3e-3,
            optimizer="adam",
        )
    if task == "model_loss":
        gen = torch.Generator().manual_seed(SEED)
        n, features, classes = (512 if quick else 4096), 32, 4
        x = torch.randn(n, features, generator=gen)
        teacher = torch.randn(features, classes, generator=gen)
        y = (x @ teacher).argmax(dim=1)
        n_val = n // 8
        return Workload(
            task,
            "dict-batch MLP (32-128-128-4) returning .loss, batch 64",
            lambda: DictMLP(features, 128, classes),
            DictDataset(x[n_val:], y[n_val:]),
            DictDataset(x[:n_val], y[:n_val]),
            batch_size=64,
            epochs=epochs,
            batches=4 if quick else 30,
            plain=PlainModelLoss(),
        )
    raise SystemExit(f"unknown task {task!r}; choose from {', '.join(TASK_NAMES)}")


# -- the two sides -----------------------------------------------------------------------------
def epoch_order(n: int, batch_size: int, epoch: int) -> list[list[int]]:
    """edgetrain's training order for an epoch (train/data.py): randperm seeded by
    ``seed * 1_000_003 + epoch``, cut into batches."""
    gen = torch.Generator().manual_seed(SEED * 1_000_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def run_plain(w: Workload, model: nn.Module, clock: Clock) -> dict[str, float]:
    """The hand-written loop. Returns the last epoch's metrics."""
    plain = w.plain
    optimizer = w.make_optimizer(model.parameters())
    eval_batch = max(w.batch_size, 256)  # fit evaluates in batches of this size too
    row: dict[str, float] = {}
    for epoch in range(w.epochs):
        clock.epoch_start()
        torch.manual_seed(SEED * 1_000_003 + epoch)  # dropout: as fit seeds each epoch
        model.train()
        stats = plain.new_stats()
        loss_sum, seen = 0.0, 0
        order = epoch_order(len(w.train), w.batch_size, epoch)  # type: ignore[arg-type]
        for idx in order[: w.batches] if w.batches else order:
            batch = plain.batch(w.train, idx)
            optimizer.zero_grad(set_to_none=True)
            loss, out = plain.loss(model, batch)
            loss.backward()
            optimizer.step()
            plain.track(stats, out, batch)
            loss_sum += loss.item() * len(idx)
            seen += len(idx)
            clock.step_end()
        model.eval()
        row = {"train_loss": loss_sum / seen, **plain.train_metrics(stats, seen)}
        row.update(plain.evaluate(model, w.val, eval_batch))
    clock.finish()
    return row


def run_fit(
    w: Workload, model: nn.Module, clock: Clock, out: Path, task: Any = None
) -> dict[str, float]:
    """``edgetrain.fit`` on the same work. Returns the last epoch's metrics."""
    result = edgetrain.fit(
        model,
        w.train,
        w.val,
        task=task or w.task,
        optimizer=w.make_optimizer,
        callbacks=[ClockCallback(clock)],
        epochs=w.epochs,
        batch_size=w.batch_size,
        max_batches_per_epoch=w.batches,
        seed=SEED,
        monitor={"enabled": False},
        out=str(out),
        overwrite=True,
        progress=False,
    )
    last = result.history.iloc[-1].to_dict()
    return {k: float(v) for k, v in last.items() if isinstance(v, int | float)}


def run_side(w: Workload, side: str, scratch: Path) -> dict[str, Any]:
    model = w.model()
    clock = Clock()
    t0 = time.perf_counter()
    if side == "fit":
        row = run_fit(w, model, clock, scratch / "fit-run")
    else:
        row = run_plain(w, model, clock)
    call_s = time.perf_counter() - t0
    return {
        "step_s": clock.step_s(0),
        "step_cpu_s": clock.step_s(1),
        "epoch_s": clock.epoch_s(),
        "call_s": call_s,
        "row": row,
    }


def same_work(fit_row: dict[str, float], plain_row: dict[str, float]) -> tuple[float, str]:
    """The largest relative difference of the metrics both sides report, and which."""
    worst, name = 0.0, ""
    for key, value in plain_row.items():
        other = fit_row.get(key)
        if other is None or not math.isfinite(other):
            continue
        diff = abs(other - value) / max(abs(value), 1e-12)
        if diff >= worst:
            worst, name = diff, key
    return worst, name


# -- peak RSS, in a fresh subprocess per side --------------------------------------------------
def _kib(field: str) -> int | None:
    value = status_bytes(field)
    return None if value is None else value // 1024


def _trim() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def child_rss(task: str, side: str, quick: bool) -> dict[str, Any]:
    """Run ``side`` twice in this (fresh) process; peak RSS growth of each run, in bytes."""
    w = build_workload(task, quick)
    out: dict[str, Any] = {"method": "VmHWM above VmRSS before the run"}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("cold", "warm"):
            _trim()
            before = _kib("VmRSS")
            if not reset_peak_rss() or before is None:
                if label == "cold":  # no resettable mark: the process's lifetime peak
                    import resource

                    before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    run_side(w, side, Path(tmp))
                    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    out["method"] = "ru_maxrss (lifetime peak; 0 if below the earlier peak)"
                    out["cold"] = max(0, peak - before_max) * 1024
                out.setdefault("warm", None)
                break
            run_side(w, side, Path(tmp))
            peak = _kib("VmHWM") or 0
            out[label] = max(0, peak - before) * 1024
    return out


def measure_rss(task: str, side: str, quick: bool) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        task,
        side,
        "--threads",
        str(torch.get_num_threads()),
    ]
    cmd += ["--quick"] if quick else []
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- where the time goes (--breakdown): each side's pieces timed inside real runs ------------
STEP_PIECES = (
    "fetch batch",
    "to_device",
    "augment_generator",
    "augment",
    "size/count/split",
    "forward (model)",
    "loss",
    "backward",
    "optimizer.zero_grad",
    "optimizer.step",
    "training metrics",
)
EPOCH_PIECES = ("validation", "epoch-end writes")


@contextlib.contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, old)


def metered_run(w: Workload, side: str, scratch: Path) -> tuple[Clock, Meter]:
    """One run of ``side`` with its pieces wrapped (about 0.5 us per wrapped call).

    Wraps ``Tensor.backward`` and the optimizer's methods on both sides; on fit's side the
    Task's methods, the DataLoader iterator's ``__next__``, and (per epoch) ``evaluate``
    and the run writer, which are edgetrain and torch internals, restored afterwards."""
    from torch.utils.data import dataloader

    from edgetrain.tasks import make_task
    from edgetrain.train.writer import RunWriter

    loop = importlib.import_module("edgetrain.train.loop")
    meter = Meter(EPOCH_PIECES)
    clock = Clock(meter)
    model = w.model()
    make_optimizer = w.make_optimizer

    def optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        opt = make_optimizer(params)
        opt.step = meter.wrap("optimizer.step", opt.step)  # type: ignore[method-assign]
        opt.zero_grad = meter.wrap("optimizer.zero_grad", opt.zero_grad)  # type: ignore[method-assign]
        return opt

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            _patched(torch.Tensor, "backward", meter.wrap("backward", torch.Tensor.backward))
        )
        if side == "plain":
            plain = type(w.plain)()
            for attr, piece in (
                ("batch", "fetch batch"),
                ("forward", "forward (model)"),
                ("criterion", "loss"),
                ("track", "training metrics"),
                ("evaluate", "validation"),
            ):
                setattr(plain, attr, meter.wrap(piece, getattr(plain, attr)))
            stack.enter_context(_patched(w, "plain", plain))
            stack.enter_context(_patched(w, "make_optimizer", optimizer))
            run_plain(w, model, clock)
            return clock, meter
        task = make_task(w.task)
        for attr, piece in (
            ("to_device", "to_device"),
            ("augment", "augment"),
            ("size", "size/count/split"),
            ("count", "size/count/split"),
            ("split", "size/count/split"),
            ("forward", "forward (model)"),
            ("loss_sum", "loss"),
            ("update_metrics", "training metrics"),
        ):
            setattr(task, attr, meter.wrap(piece, getattr(task, attr)))
        it = dataloader._BaseDataLoaderIter
        stack.enter_context(_patched(it, "__next__", meter.wrap("fetch batch", it.__next__)))
        stack.enter_context(
            _patched(
                loop,
                "augment_generator",
                meter.wrap("augment_generator", loop.augment_generator),
            )
        )
        stack.enter_context(_patched(loop, "evaluate", meter.wrap("validation", loop.evaluate)))
        stack.enter_context(
            _patched(
                RunWriter,
                "on_epoch_end",
                meter.wrap("epoch-end writes", RunWriter.on_epoch_end),
            )
        )
        stack.enter_context(_patched(w, "make_optimizer", optimizer))
        run_fit(w, model, clock, scratch / "fit-run", task=task)
    return clock, meter


def breakdown(w: Workload, scratch: Path, reps: int) -> dict[str, Any]:
    """Per side: the median time of each piece per step (microseconds) and per epoch
    (milliseconds), and the rest of the step or epoch (the loop's own code)."""
    out: dict[str, Any] = {}
    runs: dict[str, list[tuple[Clock, Meter]]] = {"plain": [], "fit": []}
    for _ in range(reps):
        for side in ("plain", "fit"):
            runs[side].append(metered_run(w, side, scratch))
    for side, pairs in runs.items():
        steps: list[dict[str, float]] = []
        epochs: list[dict[str, float]] = []
        for clock, meter in pairs:
            for step_s, pieces in zip(clock.step_s(0), meter.steps, strict=True):
                steps.append({**pieces, "rest": step_s - sum(pieces.values()), "step": step_s})
            for wall, pieces in zip(clock.epoch_s(), meter.epochs, strict=True):
                epochs.append({**pieces, "epoch": wall})
        out[side] = {
            "per_step_us": {
                k: _median([p.get(k, 0.0) for p in steps]) * 1e6
                for k in (*STEP_PIECES, "rest", "step")
            },
            "per_epoch_ms": {
                k: _median([p.get(k, 0.0) for p in epochs]) * 1e3 for k in (*EPOCH_PIECES, "epoch")
            },
        }
    return out


def print_breakdown(name: str, b: dict[str, Any]) -> None:
    plain, fit = b["plain"], b["fit"]
    print(f"\n{name}: where the time goes (median per step / per epoch of metered runs)")
    print(f"  {'per step':<30} {'plain us':>9} {'fit us':>9} {'fit - plain':>11}")
    for k in (*STEP_PIECES, "rest", "step"):
        p, f = plain["per_step_us"][k], fit["per_step_us"][k]
        label = {"rest": "rest of the loop", "step": "whole step (median)"}.get(k, k)
        print(f"  {label:<30} {p:>9.1f} {f:>9.1f} {f - p:>11.1f}")
    print(f"  {'per epoch':<30} {'plain ms':>9} {'fit ms':>9} {'fit - plain':>11}")
    for k in (*EPOCH_PIECES, "epoch"):
        p, f = plain["per_epoch_ms"][k], fit["per_epoch_ms"][k]
        label = {"epoch": "whole epoch (median)"}.get(k, k)
        print(f"  {label:<30} {p:>9.2f} {f:>9.2f} {f - p:>11.2f}")


# -- the comparison ----------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def compare(w: Workload, reps: int, scratch: Path) -> dict[str, Any]:
    for side in ("plain", "fit"):  # warm-up: imports, allocator, kernels
        run_side(w, side, scratch)
    results: dict[str, list[dict[str, Any]]] = {"plain": [], "fit": []}
    for _ in range(reps):
        for side in ("plain", "fit"):  # ABAB
            results[side].append(run_side(w, side, scratch))

    def pooled(side: str, key: str) -> list[float]:
        return [v for r in results[side] for v in r[key]]

    step = {s: _median(pooled(s, "step_s")) for s in results}
    step_cpu = {s: _median(pooled(s, "step_cpu_s")) for s in results}
    epoch = {s: _median(pooled(s, "epoch_s")) for s in results}
    call = {s: _median([r["call_s"] for r in results[s]]) for s in results}
    pair_step = [
        _median(f["step_s"]) / _median(p["step_s"])
        for p, f in zip(results["plain"], results["fit"], strict=True)
    ]
    pair_epoch = [
        _median(f["epoch_s"]) / _median(p["epoch_s"])
        for p, f in zip(results["plain"], results["fit"], strict=True)
    ]
    diff, metric = same_work(results["fit"][0]["row"], results["plain"][0]["row"])
    return {
        "workload": w.label,
        "epochs": w.epochs,
        "steps_per_epoch": w.steps_per_epoch,
        "train_samples": len(w.train),  # type: ignore[arg-type]
        "val_samples": len(w.val),  # type: ignore[arg-type]
        "step_s_median": step,
        "epoch_s_median": epoch,
        "call_s_median": call,
        "step_ratio": step["fit"] / step["plain"],
        "step_cpu_s_median": step_cpu,
        "step_cpu_ratio": step_cpu["fit"] / step_cpu["plain"],
        "step_ratio_pairs": pair_step,
        "epoch_ratio": epoch["fit"] / epoch["plain"],
        "epoch_ratio_pairs": pair_epoch,
        "call_ratio": call["fit"] / call["plain"],
        "same_work_max_rel_diff": diff,
        "same_work_metric": metric,
        "final_metrics": {"fit": results["fit"][0]["row"], "plain": results["plain"][0]["row"]},
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "edgetrain": edgetrain.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _mib(value: Any) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}" if values else "n/a"


def print_report(report: dict[str, Any]) -> None:
    m, s = report["machine"], report["settings"]
    load = " ".join(f"{v:.2f}" for v in m["load_average"] or [])
    print(
        f"machine: {m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, "
        f"load average at start {load}"
    )
    cpus = m["cpu_count"] or 1
    if m["load_average"] and m["load_average"][0] > 0.75 * cpus:  # before this run started
        print(
            f"warning: the machine was busy (load average {m['load_average'][0]:.1f} on "
            f"{cpus} CPUs): step times scatter"
            + (
                ", more so with several torch threads (try --threads 1)"
                if m["torch_threads"] > 1
                else ""
            )
        )
    print(
        f"versions: edgetrain {m['edgetrain']}, torch {m['torch']}, python {m['python']}; "
        f"{s['reps']} runs per side, alternating plain/fit (ABAB) after one warm-up run each"
        + (" (--quick)" if s["quick"] else "")
    )
    tasks = report["tasks"]
    for name, t in tasks.items():
        print(
            f"  {name}: {t['workload']}; {t['epochs']} epochs x {t['steps_per_epoch']} steps, "
            f"{t['train_samples']} train / {t['val_samples']} val samples"
        )
    print()
    print(
        f"{'task':<18} {'step plain':>10} {'step fit':>9} {'fit/plain':>9} {'per run':>11} "
        f"{'CPU fit/plain':>13} {'epoch fit/plain':>15} {'call fit/plain':>14} {'same work':>9}"
    )
    for name, t in tasks.items():
        st = t["step_s_median"]
        print(
            f"{name:<18} {st['plain'] * 1e3:>8.3f}ms {st['fit'] * 1e3:>7.3f}ms "
            f"{t['step_ratio']:>9.3f} {_spread(t['step_ratio_pairs']):>11} "
            f"{t['step_cpu_ratio']:>13.3f} {t['epoch_ratio']:>15.3f} {t['call_ratio']:>14.3f} "
            f"{t['same_work_max_rel_diff']:>9.1e}"
        )
    print(
        "step: median time between step ends, all runs pooled (per run: the range of the "
        "runs' own ratios); CPU: the same in process CPU time (all threads: only a check at "
        "--threads 1); epoch: median epoch wall time incl. validation and fit's epoch-end "
        "writes; call: the whole fit() call; same work: largest relative difference of the "
        "final metrics"
    )
    rss = report.get("rss")
    print()
    if rss:
        method = next((r["method"] for r in rss.values() if "method" in r), "")
        print(f"peak RSS growth, MiB ({method}; a fresh process per side):")
        print(f"{'task':<18} {'plain cold':>10} {'fit cold':>9} {'plain warm':>10} {'fit warm':>9}")
        for name in tasks:
            p, f = rss.get(f"{name}/plain", {}), rss.get(f"{name}/fit", {})
            error = p.get("error") or f.get("error")
            print(
                f"{name:<18} {_mib(p.get('cold')):>10} {_mib(f.get('cold')):>9} "
                f"{_mib(p.get('warm')):>10} {_mib(f.get('warm')):>9}"
                + (f"  error: {error}" if error else "")
            )
        print("cold: the process's first run (fit's includes its lazy imports); warm: a second run")
    else:
        print("peak RSS: not measured (--quick or --no-rss)")
    for name, b in report.get("breakdown", {}).items():
        print_breakdown(name, b)
    met = [n for n, t in tasks.items() if t["step_ratio"] <= GOAL]
    missed = [n for n, t in tasks.items() if t["step_ratio"] > GOAL]
    print()
    print(
        f"goal step fit/plain <= {GOAL}: met by {', '.join(met) or 'none'}"
        + (f"; not met by {', '.join(missed)}" if missed else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="runs per side (default 5)")
    parser.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 rep")
    parser.add_argument(
        "--rss",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure peak RSS in fresh subprocesses (default: on, off with --quick)",
    )
    parser.add_argument(
        "--breakdown", action="store_true", help="also time each piece of fit's step alone"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_rss(args.child[0], args.child[1], args.quick)))
        return

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASK_NAMES:
            parser.error(f"unknown task {t!r}; choose from {', '.join(TASK_NAMES)}")
    reps = args.reps or (1 if args.quick else 5)
    rss_on = args.rss if args.rss is not None else not args.quick
    report: dict[str, Any] = {
        "machine": machine(),
        "settings": {"reps": reps, "quick": args.quick, "tasks": tasks, "seed": SEED},
        "tasks": {},
    }
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            w = build_workload(task, args.quick)
            report["tasks"][task] = compare(w, reps, Path(tmp))
            if args.breakdown:
                report.setdefault("breakdown", {})[task] = breakdown(w, Path(tmp), reps)
    if rss_on:
        report["rss"] = {
            f"{task}/{side}": measure_rss(task, side, args.quick)
            for task in tasks
            for side in ("plain", "fit")
        }
    report["wall_s"] = time.perf_counter() - t_start
    report["machine"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    print_report(report)
    print(f"wall time {report['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
