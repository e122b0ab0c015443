"""Build a model by name: a built-in one or the user's own by import path."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.zoo import architectures as arch
from edgetrain.zoo._callables import (
    accepted_keywords,
    call_user,
    is_import_path,
    load_callable,
)

__all__ = ["MODELS", "build_model"]

logger = logging.getLogger(__name__)

Size = tuple[int, int]
_COMMON = ("num_classes", "in_channels", "input_size")


def _check_dropout(model: str, dropout: float) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise EdgeTrainError(f"{model} option dropout must be in [0, 1), got {dropout!r}")
    return float(dropout)


def _check_width_mult(model: str, width_mult: float) -> float:
    if isinstance(width_mult, bool) or not isinstance(width_mult, int | float) or width_mult <= 0:
        raise EdgeTrainError(f"{model} option width_mult must be > 0, got {width_mult!r}")
    return float(width_mult)


def _check_widths(
    model: str, option: str, value: Sequence[int], *, allow_empty: bool
) -> tuple[int, ...]:
    ok = isinstance(value, list | tuple) and (allow_empty or len(value) > 0)
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        rule = "a list of integers >= 1" + ("" if allow_empty else " (at least one)")
        raise EdgeTrainError(f"{model} option {option} must be {rule}, got {value!r}")
    return tuple(value)


def _mlp(
    *,
    num_classes: int,
    in_channels: int,
    input_size: Size,
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.0,
) -> nn.Module:
    """Flatten and fully connected layers; ``hidden`` gives their widths. Also for
    tabular x [N, F] (``in_channels=F``, ``input_size=(1, 1)``)."""
    return arch.MLP(
        num_classes,
        in_channels,
        input_size,
        hidden=_check_widths("mlp", "hidden", hidden, allow_empty=True),
        dropout=_check_dropout("mlp", dropout),
    )


def _cnn(
    *,
    num_classes: int,
    in_channels: int,
    input_size: Size,
    channels: Sequence[int] = (16, 32),
    dropout: float = 0.0,
) -> nn.Module:
    """Small and fast: one conv-BN-ReLU-maxpool block per entry of ``channels``."""
    return arch.SmallCNN(
        num_classes,
        in_channels,
        input_size,
        channels=_check_widths("cnn", "channels", channels, allow_empty=False),
        dropout=_check_dropout("cnn", dropout),
    )


def _vgg11(
    *,
    num_classes: int,
    in_channels: int,
    input_size: Size,
    batch_norm: bool = False,
    width_mult: float = 1.0,
    dropout: float = 0.0,
) -> nn.Module:
    """CIFAR VGG-11; batch norm only with ``batch_norm=True``."""
    if not isinstance(batch_norm, bool):
        raise EdgeTrainError(f"vgg11 option batch_norm must be true or false, got {batch_norm!r}")
    return arch.VGG11(
        num_classes,
        in_channels,
        input_size,
        batch_norm=batch_norm,
        width_mult=_check_width_mult("vgg11", width_mult),
        dropout=_check_dropout("vgg11", dropout),
    )


def _resnet18(
    *,
    num_classes: int,
    in_channels: int,
    input_size: Size,
    width_mult: float = 1.0,
    stem: str = "cifar",
    dropout: float = 0.0,
) -> nn.Module:
    """ResNet-18 with a CIFAR stem (``stem="imagenet"`` for large inputs)."""
    if stem not in arch.ResNet18.STEMS:
        raise EdgeTrainError(
            f"resnet18 option stem must be one of: {', '.join(arch.ResNet18.STEMS)}, got {stem!r}"
            + suggest(str(stem), arch.ResNet18.STEMS)
        )
    return arch.ResNet18(
        num_classes,
        in_channels,
        input_size,
        width_mult=_check_width_mult("resnet18", width_mult),
        stem=stem,
        dropout=_check_dropout("resnet18", dropout),
    )


def _mobilenetv2(
    *,
    num_classes: int,
    in_channels: int,
    input_size: Size,
    width_mult: float = 1.0,
    dropout: float = 0.0,
) -> nn.Module:
    """MobileNetV2 with CIFAR strides."""
    return arch.MobileNetV2(
        num_classes,
        in_channels,
        input_size,
        width_mult=_check_width_mult("mobilenetv2", width_mult),
        dropout=_check_dropout("mobilenetv2", dropout),
    )


def _gpt(
    *,
    num_classes: int,
    in_channels: int,
    input_size: Size,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    seq_len: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Tiny decoder-only transformer on token ids [N, T] -> logits [N, T, num_classes].

    ``num_classes`` is the vocabulary size; ``seq_len`` (the longest sequence, default
    ``input_size[1]``: the data set's window) sizes the position embeddings;
    ``in_channels`` is not used.
    """
    del in_channels
    for option, value in (("d_model", d_model), ("n_layers", n_layers), ("n_heads", n_heads)):
        _positive_int(f"gpt option {option}", value)
    if seq_len is not None:
        _positive_int("gpt option seq_len", seq_len)
    if d_model % n_heads:
        raise EdgeTrainError(
            f"gpt option d_model must be a multiple of n_heads ({n_heads}), got {d_model}"
        )
    return arch.GPT(
        num_classes,
        seq_len if seq_len is not None else input_size[1],
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        dropout=_check_dropout("gpt", dropout),
    )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": _cnn,
    "gpt": _gpt,
    "mlp": _mlp,
    "mobilenetv2": _mobilenetv2,
    "resnet18": _resnet18,
    "vgg11": _vgg11,
}
"""Built-in models: name -> builder taking the common arguments and the model's options."""


def model_options(name: str) -> tuple[str, ...]:
    """The extra keyword options a built-in model accepts."""
    names, _ = accepted_keywords(MODELS[name])
    return tuple(n for n in names if n not in _COMMON)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EdgeTrainError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _input_size(value: int | Sequence[int]) -> Size:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        raise EdgeTrainError(
            f"input_size must be an integer >= 1 or a pair (height, width), got {value!r}"
        )
    return (value[0], value[1])


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    input_size: int | tuple[int, int],
    **kwargs: Any,
) -> nn.Module:
    """Build a model for inputs of shape [in_channels, H, W] and ``num_classes`` outputs.

    Non-image inputs follow ``DataInfo``'s convention: ``mlp`` takes features [F]
    (``in_channels=F``, ``input_size=(1, 1)``); ``gpt`` takes token ids [T]
    (``num_classes`` = vocabulary size, ``input_size=(1, T)``) and returns [T, V] logits.

    Args:
        name: a built-in name (see ``MODELS``, case-insensitive) or
            'package.module:callable' for the user's own builder. The callable gets
            ``num_classes``, ``in_channels`` and ``input_size`` (as given here) only
            if its signature accepts them, plus all of ``kwargs``.
        num_classes: number of outputs.
        in_channels: channels of the input images.
        input_size: H = W, or (H, W); any size from 8x8 up works for built-ins.
        **kwargs: model options, e.g. ``width_mult``, ``dropout``, ``batch_norm``,
            ``hidden``, ``channels``, ``stem``; gpt: ``d_model``, ``n_layers``,
            ``n_heads``, ``seq_len``.

    Raises:
        EdgeTrainError: unknown model or option, bad option value, or user code that
            cannot be imported, fails, or does not return an ``nn.Module``.
    """
    num_classes = _positive_int("num_classes", num_classes)
    in_channels = _positive_int("in_channels", in_channels)
    size = _input_size(input_size)
    if not isinstance(name, str) or not name:
        raise EdgeTrainError(f"model must be a non-empty name, got {name!r}")
    if is_import_path(name):
        builder = load_callable(name, kind="model")
        common = {"num_classes": num_classes, "in_channels": in_channels, "input_size": input_size}
        model = call_user(builder, spec=name, kind="model", common=common, options=kwargs)
        logger.debug("built user model %s", name)
        return model
    key = name.lower()
    if key not in MODELS:
        raise EdgeTrainError(
            f"unknown model '{name}'; choose one of: {', '.join(MODELS)} "
            f"or give 'package.module:callable'{suggest(key, MODELS)}"
        )
    accepted = model_options(key)
    for option in kwargs:
        if option not in accepted:
            raise EdgeTrainError(
                f"model '{key}' does not accept option '{option}'; "
                f"accepted options: {', '.join(accepted)}{suggest(option, accepted)}"
            )
    model = MODELS[key](num_classes=num_classes, in_channels=in_channels, input_size=size, **kwargs)
    logger.debug("built %s for %d x %s inputs, %d classes", key, in_channels, size, num_classes)
    return model
