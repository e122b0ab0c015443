"""``export_run``: a trained run's model as a pt2, ONNX, TorchScript or safetensors file.

The model is rebuilt from the run's ``config.yaml`` exactly as training built it, its
weights loaded with ``weights_only=True`` from ``model.pt`` (final), ``checkpoints/best.pt``
(best) or ``checkpoints/last.pt`` (last); pruning is already permanent in those weights.
The example input is one batch of the run's training split, made the way training makes
it (preprocessing applied; token ids stay int64); its first dimension, the batch, is
exported as dynamic. The file is written under a temporary name, loaded back and run on a
batch of another size, compared with PyTorch, and only then renamed into place: into
``RUN/export/`` (an owned directory) or ``to``. An existing file at ``to`` that edgetrain
did not write (outside an ``export`` directory) is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrain.config import load_config
from edgetrain.contract import CONFIG_FILE, SUMMARY_FILE
from edgetrain.errors import EdgeTrainError
from edgetrain.export.formats import FORMATS, Inputs, max_abs_diff, require_onnx, write_export
from edgetrain.safefs import DirLock, claim_dir, fsync_dir, is_owned, user_errors

__all__ = ["QUANTIZE", "WHICH", "ExportResult", "export_run"]

log = logging.getLogger(__name__)

WHICH = ("final", "best", "last")
QUANTIZE = ("int8",)
EXPORT_DIR = "export"
_STEMS = {"final": "model", "best": "best", "last": "last"}
_TRACE_BATCH = 2  # the example batch (2: a batch of 1 would be specialised by torch.export)
_CHECK_BATCH = 3  # the batch the written file is checked on: another size than traced


@dataclass
class ExportResult:
    """What was exported, where, and how well it matches PyTorch."""

    path: Path
    format: str
    which: str
    epoch: int | None
    inputs: list[dict[str, Any]] = field(default_factory=list)  # name, shape, dtype
    max_abs_diff: float | None = None  # None: not checked (onnxruntime missing)
    checked_with: str | None = None
    quantize: str | None = None
    preprocessing: str = "none"

    def describe(self) -> str:
        """One line per fact, for the CLI."""
        epoch = f", epoch {self.epoch}" if self.epoch is not None else ""
        lines = [f"exported the {self.which} weights{epoch} as {self.format} to {self.path}"]
        for spec in self.inputs:
            shape = ", ".join(str(d) for d in spec["shape"])
            lines.append(f"input '{spec['name']}': {spec['dtype']} [{shape}]")
        if self.preprocessing != "none":
            lines.append(
                f"inputs are expected after the run's preprocessing ({self.preprocessing}, "
                "statistics of its training split), as in training"
            )
        if self.max_abs_diff is None:
            lines.append("not checked against PyTorch (onnxruntime is not installed)")
        else:
            quant = f" ({self.quantize} quantised)" if self.quantize else ""
            lines.append(
                f"checked with {self.checked_with}{quant}: largest difference from PyTorch "
                f"{self.max_abs_diff:.3g}"
            )
        return "\n".join(lines)


def _check_choice(what: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise EdgeTrainError(f"export {what} must be one of {', '.join(choices)}, got {value!r}")


def _as_inputs(obj: Any) -> Inputs:
    """A model call from a task's inputs: a tensor, a tuple of tensors or a dict."""

    def plain(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            raise EdgeTrainError(
                f"export needs tensor inputs, got a {type(t).__name__} in the model's inputs"
            )
        t = t.detach().cpu()
        return t.float() if t.is_floating_point() else t

    if isinstance(obj, torch.Tensor):
        return Inputs((plain(obj),), {})
    if isinstance(obj, Mapping):
        return Inputs((), {str(k): plain(v) for k, v in obj.items()})
    if isinstance(obj, tuple | list):
        return Inputs(tuple(plain(t) for t in obj), {})
    raise EdgeTrainError(f"export needs tensor inputs, got {type(obj).__name__}")


def _head(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` samples of every input."""
    return Inputs(tuple(t[:n] for t in inputs.args), {k: v[:n] for k, v in inputs.kwargs.items()})


def _buildable(name: str) -> bool:
    from edgetrain.zoo import MODELS

    return name.lower() in MODELS or ":" in name  # a built-in or 'package.module:callable'


def _rebuild(run: Path, config: Any) -> tuple[nn.Module, Inputs, str]:
    """The model as training built it and a batch of the run's training split."""
    from edgetrain.train.api import config_task, prepare
    from edgetrain.train.data import eval_loader
    from edgetrain.train.writer import restore_rng, rng_state

    if not _buildable(str(config.model)):
        raise EdgeTrainError(
            f"the model of {run} ({config.model!r}) was a Python object given to fit, which "
            "edgetrain cannot rebuild; call edgetrain.export.export_run(run, model=..., "
            "example_inputs=...) from Python"
        )
    rng = rng_state()  # building seeds the global generators: leave the caller's as they were
    try:
        data, model = prepare(config)
    finally:
        restore_rng(rng)
    task = config_task(config, data.info)
    n = min(_CHECK_BATCH, len(data.train))  # type: ignore[arg-type]
    loader = eval_loader(data.train, batch_size=n, collate_fn=data.collate_fn)
    batch = next(iter(loader))
    method = getattr(getattr(data.train, "normalizer", None), "method", "none")
    return model, _as_inputs(task.inputs(batch)), str(method)


def _epoch(run: Path, which: str, info: Mapping[str, Any]) -> int | None:
    if info.get("epoch") is not None:
        return int(info["epoch"])
    try:
        summary = json.loads((run / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    entry = ((summary.get("checkpoints") or {}).get(which)) or {}
    epoch = entry.get("epoch", summary.get("epochs_completed"))
    return int(epoch) if isinstance(epoch, int) else None


def _target(
    run: Path, fmt: str, which: str, quantize: str | None, to: Path | None, overwrite: bool
) -> tuple[Path, DirLock | None]:
    """Where the file goes, and the lock of its directory when edgetrain owns it."""
    if to is None:
        folder = run / EXPORT_DIR
        lock = DirLock(folder, "export directory")
        claim_dir(folder, "export", reuse=True, what="export directory", lock=lock)
        quant = f".{quantize}" if quantize else ""
        return folder / f"{_STEMS[which]}{quant}{FORMATS[fmt]}", lock
    target = Path(to)
    if target.is_dir() and not target.is_symlink():
        raise EdgeTrainError(f"--to must name a file, {target} is a directory")
    folder = target.parent
    lock = None
    if not folder.exists():  # a folder edgetrain makes is edgetrain's
        lock = DirLock(folder, "export directory")
        claim_dir(folder, "export", what="export directory", lock=lock)
    elif is_owned(folder, ("export",)):
        lock = DirLock(folder, "export directory").acquire()
    if (target.exists() or target.is_symlink()) and lock is None and not overwrite:
        raise EdgeTrainError(
            f"{target} already exists and edgetrain did not create it; choose another file "
            "or use --overwrite (overwrite=True in Python)"
        )
    return target, lock


def export_run(
    run: str | Path,
    format: str = "pt2",
    *,
    to: str | Path | None = None,
    which: str = "final",
    overwrite: bool = False,
    quantize: str | None = None,
    model: nn.Module | None = None,
    example_inputs: Any = None,
) -> ExportResult:
    """Export a run's model to a file (see the module doc).

    Args:
        run: the run directory.
        format: ``pt2`` (torch.export), ``onnx`` (the ``onnx`` extra), ``torchscript``
            (torch.jit.trace) or ``safetensors`` (the weights only).
        to: the file to write (default ``RUN/export/<model|best|last><suffix>``).
        which: ``final`` (model.pt), ``best`` (checkpoints/best.pt) or ``last``
            (checkpoints/last.pt).
        overwrite: replace an existing ``to`` that edgetrain did not write.
        quantize: ``int8``: dynamic int8 quantisation of an ONNX export (onnxruntime).
        model: the model, for a run trained with ``fit`` on a model edgetrain cannot
            rebuild from config.yaml (its weights are still loaded from the run).
        example_inputs: a batch of inputs for ``model`` (a tensor, a tuple or a dict);
            default: a batch of the run's training data.
    """
    from edgetrain.train.api import load_weights

    run = Path(run)
    _check_choice("--format", format, list(FORMATS))
    _check_choice("--which", which, WHICH)
    if quantize is not None:
        _check_choice("--quantize", quantize, QUANTIZE)
        if format != "onnx":
            raise EdgeTrainError(
                f"--quantize {quantize} is for --format onnx (onnxruntime's dynamic int8 "
                f"quantisation), got --format {format}"
            )
    if format == "onnx":
        require_onnx(quantize)
    if not (run / CONFIG_FILE).is_file():
        raise EdgeTrainError(f"{run} is not a run directory (no {CONFIG_FILE} in it)")
    config = load_config(run / CONFIG_FILE)
    state, info = load_weights(run, which, what="export")
    preprocessing = "none"
    if model is None:
        model, inputs, preprocessing = _rebuild(run, config)
        if example_inputs is not None:
            inputs = _as_inputs(example_inputs)
    elif example_inputs is None:
        raise EdgeTrainError("export_run(model=...) needs example_inputs= (a batch of inputs)")
    else:
        inputs = _as_inputs(example_inputs)
    model = model.float().cpu()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(str(exc).split())[:300]
        raise EdgeTrainError(
            f"the {which} weights of {run} do not fit the model rebuilt from its config: {first}"
        ) from None
    model.eval()
    size = inputs.tensors()[0].shape[0] if inputs.tensors() else 0
    trace = _head(inputs, _TRACE_BATCH) if size > _TRACE_BATCH else inputs
    batch = trace.tensors()[0].shape[0] if trace.tensors() else 0
    with torch.no_grad():
        expected = inputs.call(model)
    from edgetrain.export.formats import outputs_of

    expected_out = outputs_of(expected)
    target, lock = _target(run, format, which, quantize, Path(to) if to else None, overwrite)
    meta = {
        "format": "pt",
        "edgetrain_run": str(run),
        "which": which,
        "epoch": _epoch(run, which, info),
        "model": config.model,
        "model_args": json.dumps(config.model_args),
    }
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp{target.suffix}")
    try:
        with user_errors("cannot write export"):
            runner = write_export(
                format, model, trace, batch, tmp, quantize if format == "onnx" else meta
            )
            got = runner(inputs)
            diff = max_abs_diff(expected_out, got) if got else None
            scale = max((float(t.abs().max()) for t in expected_out if t.numel()), default=0.0)
            if diff is not None and not quantize and diff > 1e-4 + 1e-3 * scale:
                raise EdgeTrainError(
                    f"the {format} export differs from PyTorch by up to {diff:.3g} on a batch "
                    f"of {size}; not written"
                )
            os.replace(tmp, target)
            fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
        if lock is not None:
            lock.release()
    checked = {
        "pt2": "torch.export.load",
        "onnx": "onnxruntime",
        "torchscript": "torch.jit.load",
        "safetensors": "safetensors, loaded into the model",
    }[format]
    names = inputs.names()
    specs = [
        {
            "name": name,
            "shape": ["batch", *t.shape[1:]] if t.dim() else [],
            "dtype": str(t.dtype).removeprefix("torch."),
        }
        for name, t in zip(names, inputs.tensors(), strict=True)
    ]
    return ExportResult(
        path=target,
        format=format,
        which=which,
        epoch=meta["epoch"],  # type: ignore[arg-type]
        inputs=specs,
        max_abs_diff=diff,
        checked_with=checked if diff is not None else None,
        quantize=quantize,
        preprocessing=preprocessing,
    )
