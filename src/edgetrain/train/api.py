"""``fit`` (a user's model and data) and ``train`` (a config): set up, run the loop, write."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgetrain.config import TrainConfig, config_to_dict, load_config, write_yaml_text
from edgetrain.errors import DivergedError, EdgeTrainError
from edgetrain.safefs import os_error_message, user_errors
from edgetrain.train.callbacks import Callback, CallbackList, TrainState
from edgetrain.train.data import SplitData, SubsetView, fit_normalizer, split_indices
from edgetrain.train.loop import evaluate, run_epochs
from edgetrain.train.optim import build_optimizer, make_grad_scaler, param_dtype
from edgetrain.train.rundir import METRICS_COLUMNS, RunDir, load_tensors, save_tensors
from edgetrain.train.writer import RunWriter, build_summary, restore_rng

__all__ = [
    "FitResult",
    "fit",
    "load_pretrained",
    "prepare",
    "prepare_data",
    "resolve_device",
    "train",
]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a training run returns."""

    model: nn.Module
    history: pd.DataFrame
    run_dir: Path | None
    summary: dict[str, Any] = field(default_factory=dict)


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
    return split_dataset(dataset, config, info.num_classes), info


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


def _default_callbacks(config: TrainConfig, progress: bool) -> list[Callback]:
    cbs: list[Callback] = []
    if config.monitor.enabled:
        from edgetrain.train.features.monitor import MonitorCallback

        cbs.append(MonitorCallback(config.monitor))
    if config.activations != "off":
        from edgetrain.train.features.activations import ActivationCallback

        cbs.append(ActivationCallback(config.activations, seed=config.seed))
    if progress:
        from edgetrain.train.features.progress import ProgressCallback

        cbs.append(ProgressCallback())
    return cbs


def _run(
    config: TrainConfig,
    model: nn.Module,
    data: SplitData,
    *,
    callbacks: Iterable[Callback],
    progress: bool,
    resume: bool,
    overwrite: bool,
    evaluate_test: bool = True,
) -> FitResult:
    """Shared by :func:`fit` and :func:`train`: everything after model and data exist."""
    device = resolve_device(config.device)
    train_size = len(data.train)  # type: ignore[arg-type]
    _check_sizes(config, train_size)
    run = _open_run(config, resume, overwrite)
    config = config.model_copy(update={"out": run.path})
    model = model.to(device=device, dtype=param_dtype(config.precision))
    if not any(p.requires_grad for p in model.parameters()):
        raise EdgeTrainError(f"the model ({type(model).__name__}) has no trainable parameters")
    optimizer = build_optimizer(model.parameters(), config)
    scaler = make_grad_scaler(config.precision, device)
    state = TrainState(
        config=config,
        model=model,
        optimizer=optimizer,
        device=device,
        run=run,
        train_size=train_size,
        batch_size=config.batch_size,
        micro_batch_size=config.micro_batch_size or config.batch_size,
        base_lr=config.lr,
    )
    user = list(callbacks)
    defaults = _default_callbacks(config, progress)
    from edgetrain.train.features.budget import adapt_callbacks

    # after the monitor (its epoch peaks feed the controller), before progress and user ones
    at = 1 if config.monitor.enabled else 0
    defaults[at:at] = adapt_callbacks(config, data.train, data.val)
    if config.sparse_update.scheme != "full":
        from edgetrain.train.features.sparse import SparseUpdateCallback

        # the probe set is the first probe_size training samples, in order, un-augmented
        defaults.append(SparseUpdateCallback(config.sparse_update, data.train))
    # a callback the caller passes replaces the default of the same kind (e.g. a custom meter)
    given = {type(cb) for cb in user}
    defaults = [cb for cb in defaults if type(cb) not in given]
    chain = CallbackList([*defaults, *user])
    writer = RunWriter(run, scaler, chain)
    all_callbacks = CallbackList([*chain.callbacks, writer])

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
        run.write_json("env.json", _env_info(state.sensor_statuses))
        run_epochs(state, forward, data.train, data.val, all_callbacks, scaler, start_epoch)
        if data.test is not None and evaluate_test:
            test_loss, test_acc = evaluate(model, forward, data.test, state)
            extra["test"] = {"test_loss": test_loss, "test_acc": test_acc}
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
    history = pd.DataFrame(state.history, columns=list(METRICS_COLUMNS))
    return FitResult(model=model, history=history, run_dir=run.path, summary=summary)


def _save_model(run: RunDir, model: nn.Module) -> None:
    save_tensors(run.path / "model.pt", model.state_dict())


def _restore(
    run: RunDir, state: TrainState, scaler: torch.amp.GradScaler, chain: CallbackList
) -> int:
    ckpt = run.load_checkpoint()
    done = int(ckpt["epoch"])
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
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
        load_pretrained(model, cfg.init_from)
    return _run(
        cfg,
        model,
        data,
        callbacks=callbacks,
        progress=progress,
        resume=resume is not None,
        overwrite=overwrite,
        evaluate_test=evaluate_test,
    )


def load_pretrained(model: nn.Module, source: str | Path) -> list[str]:
    """Initialise ``model`` from a run directory's model.pt (or a .pt file).

    Tensors whose name and shape match are loaded; the others (e.g. a classifier head for
    a different number of classes) keep their fresh initialisation and are returned.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise EdgeTrainError(
            f"init_from: no model weights at {path} (expected a run directory with model.pt)"
        )
    saved = load_tensors(path, "init_from weights")
    if not isinstance(saved, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in saved.values()
    ):
        raise EdgeTrainError(f"init_from: {path} is not a state dict of tensors")
    own = model.state_dict()
    matched = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise EdgeTrainError(f"init_from: no tensor in {path} matches the model's names and shapes")
    model.load_state_dict(matched, strict=False)
    skipped = sorted(set(own) - set(matched))
    if skipped:
        log.warning("init_from %s: kept fresh initialisation for %s", path, ", ".join(skipped))
    return skipped


def _as_dataset(data: Dataset | DataLoader) -> tuple[Dataset, int | None]:
    if isinstance(data, DataLoader):
        return data.dataset, data.batch_size
    return data, None


def fit(
    model: nn.Module,
    train_data: Dataset | DataLoader,
    val_data: Dataset | DataLoader | None = None,
    *,
    test_data: Dataset | DataLoader | None = None,
    callbacks: Iterable[Callback] = (),
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    **config: Any,
) -> FitResult:
    """Train a user's model on a user's data with edgetrain's loop and run directory.

    ``train_data`` is any map-style Dataset of ``(x, y)`` pairs, or a DataLoader (its data
    set and batch size are used: edgetrain draws the batches itself so that the order is
    fixed by the seed and the batch size may change between epochs). No preprocessing is
    applied unless ``preprocessing=`` is given (statistics then come from ``train_data``).
    Other keyword arguments are config keys (``epochs=5, lr=0.01, out="runs/x"``).
    """
    train_set, loader_batch = _as_dataset(train_data)
    settings = {"preprocessing": "none", "split": [1.0, 0.0, 0.0], "model": type(model).__name__}
    if loader_batch is not None and "batch_size" not in config:
        settings["batch_size"] = loader_batch
    settings.update(config)
    cfg = load_config(settings)
    seed_everything(cfg.seed)
    all_idx = torch.arange(len(train_set))  # type: ignore[arg-type]
    norm = fit_normalizer(train_set, all_idx, cfg.preprocessing)

    def view(d: Dataset | DataLoader | None) -> SubsetView | None:
        if d is None:
            return None
        ds, _ = _as_dataset(d)
        return SubsetView(ds, torch.arange(len(ds)), norm)  # type: ignore[arg-type]

    data = SplitData(
        train=SubsetView(train_set, all_idx, norm),
        val=view(val_data),
        test=view(test_data),
        num_classes=0,
    )
    return _run(
        cfg, model, data, callbacks=callbacks, progress=progress, resume=resume, overwrite=overwrite
    )
