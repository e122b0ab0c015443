"""``fit`` (a user's model and data) and ``train`` (a config): set up, run the loop, write."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from edgetrain.config import TrainConfig, config_to_dict, load_config, write_yaml_text
from edgetrain.contract import CHECKPOINT_FILE, MODEL_FILE
from edgetrain.errors import DivergedError, EdgeTrainError
from edgetrain.memory.allocator import configure_for_run
from edgetrain.safefs import os_error_message, user_errors
from edgetrain.tasks import Task, infer_task, make_task
from edgetrain.train.callbacks import Callback, CallbackList, TrainState
from edgetrain.train.data import SplitData, SubsetView, fit_normalizer, split_indices
from edgetrain.train.loop import evaluate, run_epochs
from edgetrain.train.optim import build_optimizer, make_grad_scaler, param_dtype
from edgetrain.train.rundir import RunDir, load_tensors, save_tensors
from edgetrain.train.writer import (
    BEST_CHECKPOINT_FILE,
    RunWriter,
    best_row,
    build_summary,
    restore_rng,
    save_best,
)

__all__ = [
    "WEIGHTS_FILES",
    "FitResult",
    "fit",
    "load_pretrained",
    "load_weights",
    "prepare",
    "prepare_data",
    "resolve_device",
    "run_weights_path",
    "train",
]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a training run returns: the trained model (its final weights), the per-epoch
    history, the run directory and summary.json's content."""

    model: nn.Module
    history: pd.DataFrame
    run_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Any:
        """The run's end in a few rows (a ``rich.table.Table``: status and stop reason,
        best and final metrics, time, energy, peak memory against the budget)."""
        from edgetrain.train.features.progress import summary_table

        return summary_table(self.summary)

    def table_text(self, width: int = 100) -> str:
        """:meth:`table` as plain text."""
        import io

        from rich.console import Console

        sink = io.StringIO()
        Console(file=sink, width=width, markup=False, color_system=None).print(self.table())
        return sink.getvalue()


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when available; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeTrainError(
            "device 'cuda' was asked for but torch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device=auto or device=cpu"
        )
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_task(config: TrainConfig, info: Any = None) -> Task:
    """The task a config trains: ``config.task``, or the data set's own when ``auto``."""
    name = config.task
    if name == "auto":
        name = getattr(info, "task", None) or "classification"
    return make_task(
        name,
        options=config.task_args,
        augmentation=config.augmentation,
        mix_alpha=config.mix_alpha,
    )


def prepare_data(config: TrainConfig) -> tuple[SplitData, Any]:
    """Load the configured data set, split it by seed, fit preprocessing on the train split."""
    from edgetrain.zoo import load_dataset

    dataset, info = load_dataset(
        config.data,
        data_path=config.data_path,
        image_size=config.image_size,
        channels=config.channels,
        seed=config.seed,
        **config.data_args,
    )
    split = split_dataset(dataset, config, info.num_classes)
    split.info = info
    return split, info


def prepare(config: TrainConfig) -> tuple[SplitData, nn.Module]:
    """The configured data splits and a freshly initialised model (seeded)."""
    from edgetrain.zoo import build_model

    seed_everything(config.seed)
    data, info = prepare_data(config)
    seed_everything(config.seed)  # model init independent of how much randomness data loading used
    model = build_model(
        config.model,
        num_classes=info.num_classes,
        in_channels=info.in_channels,
        input_size=info.input_size,
        **config.model_args,
    )
    return data, model


def split_dataset(dataset: Dataset, config: TrainConfig, num_classes: int) -> SplitData:
    n = len(dataset)  # type: ignore[arg-type]
    train_idx, val_idx, test_idx = split_indices(n, config.split, config.seed)
    if len(train_idx) == 0:
        raise EdgeTrainError(f"split {list(config.split)} leaves no training samples out of {n}")
    norm = fit_normalizer(dataset, train_idx, config.preprocessing)
    return SplitData(
        train=SubsetView(dataset, train_idx, norm),
        val=SubsetView(dataset, val_idx, norm) if len(val_idx) else None,
        test=SubsetView(dataset, test_idx, norm) if len(test_idx) else None,
        num_classes=num_classes,
    )


def _check_sizes(config: TrainConfig, train_size: int) -> None:
    if config.batch_size > train_size:
        raise EdgeTrainError(
            f"batch_size must be <= the number of training samples ({train_size}), "
            f"got {config.batch_size}"
        )


def _open_run(config: TrainConfig, resume: bool, overwrite: bool) -> RunDir:
    out = config.out
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = (
            Path("runs") / f"{Path(str(config.model)).name.replace(':', '-')}-{config.data}-{stamp}"
        )
    mode = "resume" if resume else ("overwrite" if overwrite else "new")
    return RunDir(out, mode)


def _env_info(statuses: Any = None) -> dict[str, Any]:
    try:
        from edgetrain.measure import environment_info
    except ImportError:  # pragma: no cover - measure is part of the package
        return {"torch": torch.__version__}
    return environment_info(statuses)


def _default_callbacks(
    config: TrainConfig, progress: bool, sample: Callable[[], Any] | None = None
) -> list[Callback]:
    cbs: list[Callback] = []
    if config.monitor.enabled:
        from edgetrain.train.features.monitor import MonitorCallback

        cbs.append(MonitorCallback(config.monitor))
    if config.activations != "off":
        from edgetrain.train.features.activations import ActivationCallback

        cbs.append(ActivationCallback(config.activations, seed=config.seed))
    if config.optimizer_state != "fp32":
        from edgetrain.train.features.optim_state import OptimizerStateCallback

        cbs.append(OptimizerStateCallback(config.optimizer_state, seed=config.seed))
    if config.optimizer_in_backward:
        from edgetrain.train.features.optim_backward import OptimizerInBackward

        cbs.append(OptimizerInBackward())
    if config.recompute != "none":
        from edgetrain.train.features.recompute import RecomputeCallback

        cbs.append(RecomputeCallback(config.recompute))
    if config.early_stop.enabled:
        from edgetrain.train.features.early_stop import EarlyStopCallback

        cbs.append(EarlyStopCallback(config.early_stop))
    if progress:
        from edgetrain.train.features.progress import ProgressCallback

        cbs.append(ProgressCallback(sample=sample))
    return cbs


def _check_early_stop(config: TrainConfig, data: SplitData, task: Task) -> None:
    """A validation metric needs a validation split: say so before the run starts."""
    if not config.early_stop.enabled or data.val is not None:
        return
    metric = config.early_stop.metric or task.best_metric
    if metric.startswith("val_"):
        raise EdgeTrainError(
            f"early_stop watches {metric}, but there is no validation data (split "
            f"{list(config.split)}); give a validation fraction or val_data, or set "
            "early_stop.metric=train_loss"
        )


def _logger_callbacks(config: TrainConfig, user: list[Callback]) -> list[Callback]:
    """The loggers ``config.log`` asks for, but none of a kind the caller passes."""
    if not config.log.enabled:
        return []
    from edgetrain.train.features.loggers import logger_callbacks

    return [cb for cb in logger_callbacks(config.log) if not _given(cb, user)]


def _given(default: Callback, user: list[Callback]) -> bool:
    """Whether the caller passes a callback of ``default``'s kind (or a subclass of it)."""
    return any(isinstance(cb, type(default)) for cb in user)


@dataclass
class _Optim:
    """A user's optimizer and scheduler: objects, or factories called with the parameters
    (the optimizer) and the optimizer (the scheduler)."""

    optimizer: Any = None
    scheduler: Any = None
    lr_given: bool = False

    def build(self, model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
        opt = self.optimizer
        if opt is None:
            optimizer = build_optimizer(model.parameters(), config)
        elif isinstance(opt, torch.optim.Optimizer):
            optimizer = opt
        elif callable(opt):
            optimizer = opt(model.parameters())
        else:
            raise EdgeTrainError(
                f"optimizer= must be a name, a torch optimizer or a factory, got {opt!r}"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise EdgeTrainError(f"the optimizer factory returned a {type(optimizer).__name__}")
        if opt is not None and not self.lr_given:  # the user's optimizer keeps its own rate
            config.lr = float(optimizer.param_groups[0]["lr"])
        sched = self.scheduler
        if sched is not None and not hasattr(sched, "step"):
            sched = sched(optimizer)
        if sched is not None and not hasattr(sched, "state_dict"):
            raise EdgeTrainError(f"scheduler= must be an LR scheduler or a factory, got {sched!r}")
        return optimizer, sched


def _run(
    config: TrainConfig,
    model: nn.Module,
    data: SplitData,
    *,
    task: Task,
    callbacks: Iterable[Callback],
    progress: bool,
    resume: bool,
    overwrite: bool,
    evaluate_test: bool = True,
    optim: _Optim | None = None,
) -> FitResult:
    """Shared by :func:`fit` and :func:`train`: everything after model and data exist."""
    device = resolve_device(config.device)
    # before any training memory or probe: freed blocks then leave RSS (env.json records it)
    allocator = configure_for_run(config, device)
    _check_early_stop(config, data, task)
    user = list(callbacks)
    # built before the run directory exists: a missing extra leaves nothing behind
    loggers = _logger_callbacks(config, user)
    train_size = _size(data.train)
    if not isinstance(data.train, DataLoader):
        _check_sizes(config, train_size)
    run = _open_run(config, resume, overwrite)
    try:  # a setup error leaves the directory unlocked (and says why in the error)
        config = config.model_copy(update={"out": run.path})
        model = model.to(device=device, dtype=param_dtype(config.precision))
        if not any(p.requires_grad for p in model.parameters()):
            raise EdgeTrainError(f"the model ({type(model).__name__}) has no trainable parameters")
        optimizer, scheduler = (optim or _Optim()).build(model, config)
        scaler = make_grad_scaler(config.precision, device)
        state = TrainState(
            config=config,
            model=model,
            optimizer=optimizer,
            device=device,
            run=run,
            train_size=train_size,
            task=task,
            batch_size=config.batch_size,
            micro_batch_size=config.micro_batch_size or config.batch_size,
            base_lr=config.lr,
            scheduler=scheduler,
            collate_fn=data.collate_fn,
        )
        sample = None
        if not isinstance(data.train, DataLoader):  # a user's loader is not started for a summary
            train_set, collate = data.train, data.collate_fn
            sample = lambda: _first_batch(train_set, collate)  # noqa: E731
        defaults = _default_callbacks(config, progress, sample)
        from edgetrain.train.features.budget import adapt_callbacks

        # after the monitor (its epoch peaks feed the controller) and the memory levers the
        # config sets (the controller's probes run with them), before progress and user ones
        levers = ("activations", "optim_state", "optim_backward", "recompute")
        at = sum(1 for cb in defaults if cb.name == "monitor" or cb.name in levers)
        defaults[at:at] = adapt_callbacks(config, data.train, data.val)
        if config.sparse_update.scheme != "full":
            from edgetrain.train.features.sparse import SparseUpdateCallback

            # the probe set is the first probe_size training samples, in order, un-augmented
            defaults.append(SparseUpdateCallback(config.sparse_update, data.train))
        # a callback the caller passes replaces the default of its kind (e.g. a custom meter,
        # or a subclass)
        defaults = [cb for cb in defaults if not _given(cb, user)]
        # the loggers last (before the writer): every feature and the caller's callbacks have
        # filled the epoch's row by then
        chain = CallbackList([*defaults, *user, *loggers])
        writer = RunWriter(run, scaler, chain)
        all_callbacks = CallbackList([*chain.callbacks, writer])
    except BaseException:
        run.close()
        raise
    start_epoch = 0
    try:
        if resume:
            start_epoch = _restore(run, state, scaler, chain)
        with user_errors("cannot write run directory"):
            run.write_text("config.yaml", write_yaml_text(config_to_dict(config)))
            run.write_json("summary.json", build_summary(state, "running"))
    except BaseException:
        run.close()
        raise
    forward = all_callbacks.wrap_forward(torch.compile(model) if config.compile else model)
    status = "failed"
    extra: dict[str, Any] = {}
    try:
        all_callbacks.on_fit_start(state)
        run.write_json("env.json", {**_env_info(state.sensor_statuses), "allocator": allocator})
        run_epochs(state, forward, data.train, data.val, all_callbacks, scaler, start_epoch)
        if data.test is not None and evaluate_test:
            extra["test"] = evaluate(model, forward, data.test, state, prefix="test")
            state.test_metrics = extra["test"]
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except DivergedError as exc:
        status = "diverged"
        extra["error"] = str(exc)
        extra["diverged"] = {"epoch": exc.epoch, "step": exc.step, "loss": exc.loss}
        raise
    except OSError as exc:
        extra["error"] = os_error_message(exc)
        raise EdgeTrainError(extra["error"]) from exc
    except Exception as exc:
        extra["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        try:
            state.status = status
            all_callbacks.on_fit_end(state)
        finally:
            extra.update(all_callbacks.summary())
            if state.skipped_steps:
                extra["nonfinite_steps_skipped"] = state.skipped_steps
            summary = build_summary(state, status, **extra)
            # the disk may be full: the error that stopped the run is the one to report
            with contextlib.suppress(OSError):
                run.write_json("summary.json", summary)
            try:
                if status == "completed":
                    with user_errors("cannot write run directory"):
                        _save_model(run, model)
            finally:
                run.close()
    history = pd.DataFrame(state.history, columns=list(state.metrics_columns))
    return FitResult(model=model, history=history, run_dir=run.path, summary=summary)


def _save_model(run: RunDir, model: nn.Module) -> None:
    save_tensors(run.path / "model.pt", model.state_dict())


def _restore(
    run: RunDir, state: TrainState, scaler: torch.amp.GradScaler, chain: CallbackList
) -> int:
    ckpt = run.load_checkpoint()
    done = int(ckpt["epoch"])
    _repair_best(run, state, ckpt)
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    if state.scheduler is not None and ckpt.get("scheduler") is not None:
        state.scheduler.load_state_dict(ckpt["scheduler"])
    state.base_lr = float(ckpt["base_lr"])
    state.batch_size = int(ckpt["batch_size"])
    state.micro_batch_size = int(ckpt["micro_batch_size"])
    state.step = int(ckpt["step"])
    state.history = list(ckpt["history"])
    chain.load_state_dict(ckpt.get("callbacks", {}))
    restore_rng(ckpt["rng"])
    # rows written after the checkpoint (a kill mid-epoch) are replayed, so drop them
    run.truncate_log("metrics.csv", lambda r: r.get("epoch", "") != "" and int(r["epoch"]) <= done)
    run.truncate_log(
        "decisions.csv", lambda r: r.get("epoch", "") != "" and int(r["epoch"]) <= done
    )
    log.info("resuming %s after epoch %d", run.path, done)
    return done


def _repair_best(run: RunDir, state: TrainState, ckpt: Mapping[str, Any]) -> None:
    """Make checkpoints/best.pt match the checkpoint's history: a run killed between
    writing last.pt and best.pt gets best.pt from last.pt's model; a best.pt of another
    epoch than the history's best (a run older than best checkpoints) is removed, so
    summary.json never names weights the file does not hold."""
    task = state.task.describe()
    key, mode = str(task["best_metric"]), str(task["best_mode"])
    done, history = int(ckpt["epoch"]), list(ckpt["history"])
    row = best_row(history, key, mode)
    path = run.path / BEST_CHECKPOINT_FILE
    saved = load_tensors(path, "best checkpoint") if path.exists() else None
    saved_epoch = saved.get("epoch") if isinstance(saved, Mapping) else None
    if row is None or saved_epoch == row.get("epoch"):
        return
    if row.get("epoch") == done:
        save_best(path, ckpt["model"], done, key, mode, float(row[key]))
        log.info("wrote %s from the checkpoint of epoch %d", path, done)
    elif saved is not None:
        path.unlink()
        log.warning("removed %s: it is not the best epoch of the run's history", path)


def train(
    config: TrainConfig | Mapping[str, Any] | str | Path | None = None,
    *,
    overrides: Iterable[str] = (),
    callbacks: Iterable[Callback] = (),
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
    evaluate_test: bool = True,
) -> FitResult:
    """Train the model and data set named by a config.

    Args:
        config: a :class:`TrainConfig`, a mapping, or a YAML file path.
        overrides: ``key=value`` strings (dotted keys for sections).
        callbacks: extra callbacks.
        resume: a run directory to continue from its last checkpoint (its config.yaml is
            the base; ``overrides`` still apply, e.g. ``epochs=20`` to extend).
        overwrite: replace an existing run directory.
        progress: show a progress bar and epoch lines.
        evaluate_test: evaluate the test split at the end (sweep trials turn this off so
            test data is used only for the final report).
    """
    if resume is not None:
        stored = Path(resume) / "config.yaml"
        if not stored.exists():
            raise EdgeTrainError(f"cannot resume {resume}: no config.yaml in it")
        cfg = load_config(stored, overrides=[*overrides, f"out={Path(resume)}"])
    elif isinstance(config, TrainConfig):
        cfg = load_config(config_to_dict(config), overrides=overrides)
    else:
        cfg = load_config(config, overrides=overrides)
    data, model = prepare(cfg)
    if cfg.init_from is not None and resume is None:
        load_pretrained(model, cfg.init_from, which=cfg.init_from_which)
    return _run(
        cfg,
        model,
        data,
        task=config_task(cfg, data.info),
        callbacks=callbacks,
        progress=progress,
        resume=resume is not None,
        overwrite=overwrite,
        evaluate_test=evaluate_test,
    )


#: A run directory's weights files, by which one is asked for.
WEIGHTS_FILES = {"final": MODEL_FILE, "best": BEST_CHECKPOINT_FILE, "last": CHECKPOINT_FILE}


def run_weights_path(source: str | Path, which: str = "final", what: str = "init_from") -> Path:
    """The weights file of a run directory (``final``: model.pt, ``best``:
    checkpoints/best.pt, ``last``: checkpoints/last.pt), or ``source`` itself if a file."""
    path = Path(source)
    if which not in WEIGHTS_FILES:
        raise EdgeTrainError(
            f"{what}: which weights must be one of {', '.join(WEIGHTS_FILES)}, got {which!r}"
        )
    if not path.is_dir():
        if not path.exists():
            raise EdgeTrainError(f"{what}: no run directory or weights file at {path}")
        return path
    file = path / WEIGHTS_FILES[which]
    if not file.exists():
        hint = {
            "final": "the run has not completed; use its best or last checkpoint",
            "best": "no epoch had a value of the task's best metric (no validation data?)",
            "last": "the run has not finished an epoch",
        }[which]
        raise EdgeTrainError(f"{what}: no {which} weights at {file} ({hint})")
    return file


def load_weights(
    source: str | Path, which: str = "final", what: str = "init_from"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict of tensors from a run directory or a .pt file, and what the file says
    about it (``epoch``, ``metric``, ``value`` of a checkpoint). Read with weights_only.

    A file may be a state dict (model.pt) or a checkpoint holding one under ``model``
    (checkpoints/best.pt, checkpoints/last.pt).
    """
    path = run_weights_path(source, which, what)
    saved = load_tensors(path, f"{what} weights")
    info: dict[str, Any] = {"path": path}
    if isinstance(saved, Mapping) and isinstance(saved.get("model"), Mapping):
        info.update({k: saved[k] for k in ("epoch", "metric", "mode", "value") if k in saved})
        saved = saved["model"]
    if not isinstance(saved, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in saved.values()
    ):
        raise EdgeTrainError(f"{what}: {path} is not a state dict of tensors")
    return dict(saved), info


def load_pretrained(model: nn.Module, source: str | Path, which: str = "final") -> list[str]:
    """Initialise ``model`` from a run directory's weights (``which``: ``final`` model.pt,
    ``best`` checkpoints/best.pt, ``last`` checkpoints/last.pt) or a .pt file.

    Tensors whose name and shape match are loaded; the others (e.g. a classifier head for
    a different number of classes) keep their fresh initialisation and are returned.
    """
    saved, info = load_weights(source, which)
    path = info["path"]
    own = model.state_dict()
    matched = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise EdgeTrainError(f"init_from: no tensor in {path} matches the model's names and shapes")
    model.load_state_dict(matched, strict=False)
    skipped = sorted(set(own) - set(matched))
    if skipped:
        log.warning("init_from %s: kept fresh initialisation for %s", path, ", ".join(skipped))
    return skipped


def _size(data: Dataset | DataLoader) -> int:
    """Samples in a split (a DataLoader's data set)."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise EdgeTrainError(
            f"training data must have a length (a map-style Dataset), got {type(dataset).__name__}"
        ) from None


def _first_batch(data: Dataset | DataLoader, collate_fn: Any) -> Any:
    """A small batch as training will see it, to infer the task from."""
    if isinstance(data, DataLoader):
        return next(iter(data))
    n = min(2, len(data))  # type: ignore[arg-type]
    return (collate_fn or default_collate)([data[i] for i in range(n)])


def fit(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader | None = None,
    *,
    test_data: Dataset | DataLoader | None = None,
    task: str | Task | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    metrics: Sequence[Any] | Mapping[str, Any] | None = None,
    optimizer: str | torch.optim.Optimizer | Callable[..., Any] | None = None,
    scheduler: Any = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    callbacks: Iterable[Callback] = (),
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    **config: Any,
) -> FitResult:
    """Train a user's model on a user's data with edgetrain's loop and run directory.

    Args:
        model: any ``nn.Module``.
        train_data: a map-style Dataset (edgetrain draws the batches: the order is fixed by
            the seed, the logical batch size may change between epochs; ``collate_fn``
            builds them), or a DataLoader, used exactly as given (its collate_fn, sampler,
            workers and batch size).
        val_data, test_data: the same, evaluated after each epoch and at the end.
        task: ``"classification"``, ``"regression"``, ``"language_modeling"``,
            ``"model_loss"`` or a :class:`~edgetrain.tasks.Task`. Default: the model's own
            loss for dict batches whose output carries one, regression for float targets,
            else classification.
        loss: a criterion (``nn.MSELoss()``, called ``loss(output, target)``) or any
            ``loss(output, batch)`` returning a mean.
        metrics: names (``"mae"``, ``"accuracy"``) or torchmetrics objects; columns
            ``val_<name>``.
        optimizer: a name (``"adam"``), a torch optimizer over the model's parameters, or a
            factory ``f(params)``. A given optimizer keeps its learning rate unless ``lr=``.
        scheduler: an LR scheduler or a factory ``f(optimizer)``, stepped after each epoch
            (edgetrain's own ``lr_schedule`` is then not applied).
        config: other config keys (``epochs=5, lr=0.01, out="runs/x", grad_clip_norm=1.0``).
            No preprocessing is applied unless ``preprocessing=`` is given (statistics then
            come from ``train_data``).
    """
    if isinstance(optimizer, str):
        config["optimizer"], optimizer = optimizer, None
    loader = train_data if isinstance(train_data, DataLoader) else None
    settings: dict[str, Any] = {
        "preprocessing": "none",
        "split": [1.0, 0.0, 0.0],
        "model": type(model).__name__,
    }
    if loader is not None and "batch_size" not in config:
        settings["batch_size"] = loader.batch_size or _guess_batch_size(loader)
    settings.update(config)
    cfg = load_config(settings)
    if loader is not None and cfg.preprocessing != "none":
        raise EdgeTrainError(
            f"preprocessing={cfg.preprocessing} needs a Dataset; a DataLoader is used as given"
        )
    seed_everything(cfg.seed)
    train_size = _size(train_data)
    norm = fit_normalizer(train_data, torch.arange(train_size), cfg.preprocessing)

    def view(d: Dataset | DataLoader | None) -> Dataset | DataLoader | None:
        if d is None or isinstance(d, DataLoader):
            return d
        return SubsetView(d, torch.arange(_size(d)), norm)

    data = SplitData(
        train=view(train_data),  # type: ignore[arg-type]
        val=view(val_data),
        test=view(test_data),
        num_classes=0,
        collate_fn=collate_fn,
    )
    name = task if task is not None or loss is not None else None
    if name is None and cfg.task != "auto":
        name = cfg.task
    if name is None:
        name = infer_task(model, _first_batch(data.train, collate_fn))
    the_task = make_task(
        name,
        loss=loss,
        metrics=metrics,
        options=cfg.task_args,
        augmentation=cfg.augmentation,
        mix_alpha=cfg.mix_alpha,
    )
    return _run(
        cfg,
        model,
        data,
        task=the_task,
        callbacks=callbacks,
        progress=progress,
        resume=resume,
        overwrite=overwrite,
        optim=_Optim(optimizer, scheduler, lr_given="lr" in config),
    )


def _guess_batch_size(loader: DataLoader) -> int:
    sampler = getattr(loader, "batch_sampler", None)
    size = getattr(sampler, "batch_size", None)
    if isinstance(size, int):
        return size
    from edgetrain.tasks import batch_size

    return batch_size(next(iter(loader)))
