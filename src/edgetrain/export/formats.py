"""One writer and one reader per export format, and the comparison of their outputs.

Each writer saves ``model`` (in eval mode, float32, on the CPU) to a path given
``inputs``: the example batch (a tuple of positional arguments and a dict of keyword
arguments) whose first dimension is the batch, exported as dynamic. Each reader loads
the file back and runs it on another batch, so the export can be checked against
PyTorch before it replaces anything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgetrain.errors import EdgeTrainError, MissingExtraError
from edgetrain.tasks.batch import apply_tensors

__all__ = [
    "FORMATS",
    "Inputs",
    "Runner",
    "max_abs_diff",
    "outputs_of",
    "require_onnx",
    "write_export",
]


@dataclass(frozen=True)
class Inputs:
    """A model call: positional and keyword tensors."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def names(self) -> list[str]:
        """Names of the inputs, in order (``input`` for a single tensor)."""
        if len(self.args) == 1 and not self.kwargs:
            return ["input"]
        return [f"input_{i}" for i in range(len(self.args))] + list(self.kwargs)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.args, *self.kwargs.values()]

    def call(self, fn: Callable[..., Any]) -> Any:
        return fn(*self.args, **self.kwargs)


Runner = Callable[[Inputs], list[torch.Tensor]]

#: format -> file suffix of the default export name.
FORMATS: dict[str, str] = {
    "pt2": ".pt2",
    "onnx": ".onnx",
    "torchscript": ".torchscript.pt",
    "safetensors": ".safetensors",
}


def outputs_of(output: Any) -> list[torch.Tensor]:
    """Every tensor of a model output (a tensor, tuple, dict or dataclass), in order."""
    found: list[torch.Tensor] = []

    def grab(t: torch.Tensor) -> torch.Tensor:
        found.append(t.detach())
        return t

    apply_tensors(output, grab)
    return found


def max_abs_diff(expected: list[torch.Tensor], got: list[torch.Tensor]) -> float:
    """The largest absolute difference between two lists of outputs of the same shapes."""
    if len(expected) != len(got):
        raise EdgeTrainError(
            f"the exported model returns {len(got)} output(s), PyTorch {len(expected)}"
        )
    worst = 0.0
    for e, g in zip(expected, got, strict=True):
        g = torch.as_tensor(g)
        if tuple(e.shape) != tuple(g.shape):
            raise EdgeTrainError(
                f"the exported model's output has shape {tuple(g.shape)}, PyTorch's "
                f"{tuple(e.shape)}"
            )
        if e.numel():
            worst = max(worst, float((e.double() - g.double()).abs().max()))
    return worst


def _dynamic_shapes(model: nn.Module, inputs: Inputs, batch: int) -> Any:
    """The first dimension of every input tensor with the batch's size is dynamic."""
    dim = torch.export.Dim("batch", min=1)

    def spec(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == batch:
            return {0: dim}
        return None

    if inputs.kwargs:  # by the names of forward's parameters
        params = list(inspect.signature(model.forward).parameters)
        return {
            **{params[i]: spec(t) for i, t in enumerate(inputs.args)},
            **{k: spec(v) for k, v in inputs.kwargs.items()},
        }
    return tuple(spec(t) for t in inputs.args)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No deprecation notes and exporter chatter while exporting."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__


def require_onnx(quantize: str | None) -> None:
    """The ``onnx`` extra: onnx and onnxscript to export, onnxruntime to quantise."""
    for package in ("onnx", "onnxscript"):
        if importlib.util.find_spec(package) is None:
            raise MissingExtraError(package, "onnx", "export --format onnx")
    if quantize and importlib.util.find_spec("onnxruntime") is None:
        raise MissingExtraError("onnxruntime", "onnx", f"export --quantize {quantize}")


# -- writers: (model, inputs, batch size, path) -> a runner of the written file -----------------
def _pt2(model: nn.Module, inputs: Inputs, batch: int, path: Path, _: Any) -> Runner:
    program = torch.export.export(
        model,
        inputs.args,
        inputs.kwargs or None,
        dynamic_shapes=_dynamic_shapes(model, inputs, batch),
    )
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    return lambda x: outputs_of(x.call(loaded))


def _torchscript(model: nn.Module, inputs: Inputs, batch: int, path: Path, _: Any) -> Runner:
    del batch
    if inputs.kwargs:
        traced = torch.jit.trace(model, example_kwarg_inputs=inputs.kwargs, check_trace=False)
    else:
        traced = torch.jit.trace(model, inputs.args, check_trace=False)
    torch.jit.save(traced, str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    return lambda x: outputs_of(x.call(loaded))


def _onnx(model: nn.Module, inputs: Inputs, batch: int, path: Path, quantize: Any) -> Runner:
    torch.onnx.export(
        model,
        inputs.args,
        str(path),
        kwargs=inputs.kwargs or None,
        input_names=inputs.names(),
        dynamic_shapes=_dynamic_shapes(model, inputs, batch),
        external_data=False,
        dynamo=True,
        verbose=False,
    )
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = path.with_name(path.name + ".fp32")
        path.replace(fp32)
        logging.disable(logging.WARNING)  # its advice to pre-process goes to the root logger
        try:
            quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8)
        finally:
            logging.disable(logging.NOTSET)
            fp32.unlink(missing_ok=True)
    if importlib.util.find_spec("onnxruntime") is None:
        logging.getLogger(__name__).warning(
            "onnxruntime is not installed: the ONNX file is not checked against PyTorch "
            '(pip install "edgetrain[onnx]")'
        )
        return lambda x: []
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(x: Inputs) -> list[torch.Tensor]:
        feed = {n: t.numpy() for n, t in zip(names, x.tensors(), strict=False)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]

    return run


def _safetensors(model: nn.Module, inputs: Inputs, batch: int, path: Path, meta: Any) -> Runner:
    del inputs, batch
    if importlib.util.find_spec("safetensors") is None:
        raise MissingExtraError("safetensors", "safetensors", "export --format safetensors")
    from safetensors.torch import load, save

    # copies: tied weights (shared storage) are saved once per name, as load_state_dict wants
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path.write_bytes(save(tensors, metadata={k: str(v) for k, v in (meta or {}).items()}))
    loaded = load(path.read_bytes())
    if set(loaded) != set(tensors) or any(not torch.equal(loaded[k], tensors[k]) for k in tensors):
        raise EdgeTrainError(f"the safetensors file {path} does not read back as written")
    rebuilt = _copy_with(model, loaded)
    return lambda x: outputs_of(x.call(rebuilt))


def _copy_with(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    clone.load_state_dict(state)
    return clone.eval()


_WRITERS = {"pt2": _pt2, "torchscript": _torchscript, "onnx": _onnx, "safetensors": _safetensors}


def write_export(
    fmt: str, model: nn.Module, inputs: Inputs, batch: int, path: Path, extra: Any = None
) -> Runner:
    """Write ``model`` in format ``fmt`` to ``path``; returns a runner of the written file.

    ``extra``: ``quantize`` for onnx, the metadata for safetensors.
    """
    try:
        with _quiet(), torch.no_grad():
            return _WRITERS[fmt](model, inputs, batch, path, extra)
    except (EdgeTrainError, OSError):
        raise
    except Exception as exc:  # the exporters raise many kinds; the first line says why
        raise EdgeTrainError(
            f"cannot export the model to {fmt}: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
