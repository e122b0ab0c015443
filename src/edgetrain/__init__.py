"""edgetrain: train PyTorch models where memory and energy are scarce, and know what it cost.

Python entry points: :func:`fit` (your model and data) and :func:`train` (a config).

Importing the package does not import torch: the training names load on first use, so
``edgetrain monitor -- CMD`` (which only samples another process) does not carry torch's
few hundred MiB of resident memory and its start-up time.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import TYPE_CHECKING, Any

from edgetrain.config import TrainConfig, load_config
from edgetrain.errors import EdgeTrainError

if TYPE_CHECKING:
    from edgetrain.compat import dynamic_train, log_usage_plot
    from edgetrain.mark import mark
    from edgetrain.train import Callback, FitResult, TrainState, fit, train

__all__ = [
    "Callback",
    "EdgeTrainError",
    "FitResult",
    "TrainConfig",
    "TrainState",
    "dynamic_train",
    "fit",
    "load_config",
    "log_usage_plot",
    "mark",
    "train",
]
__version__ = "0.1.0"

_LAZY = {
    "Callback": "edgetrain.train",
    "FitResult": "edgetrain.train",
    "TrainState": "edgetrain.train",
    "fit": "edgetrain.train",
    "dynamic_train": "edgetrain.compat",
    "log_usage_plot": "edgetrain.compat",
}

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgetrain' has no attribute {name!r}")


class _Package(types.ModuleType):
    """``edgetrain.train`` is the training function, although ``edgetrain.train`` is also
    the subpackage that defines it: importing the subpackage binds it as an attribute of
    this package, and the setter below keeps the function in its place."""

    @property
    def train(self) -> Any:
        return importlib.import_module("edgetrain.train").train

    @train.setter
    def train(self, value: Any) -> None:
        del value  # the subpackage stays reachable through sys.modules

    @property
    def mark(self) -> Any:
        """``edgetrain.mark("epoch 3")``: the function, although ``edgetrain.mark`` is also
        its module (import its other names from there: ``from edgetrain.mark import read_marks``)."""
        return importlib.import_module("edgetrain.mark").mark

    @mark.setter
    def mark(self, value: Any) -> None:
        del value  # the module stays reachable through sys.modules


sys.modules[__name__].__class__ = _Package
