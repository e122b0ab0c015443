"""edgetrain: train PyTorch models where memory and energy are scarce, and know what it cost.

Python entry points: :func:`fit` (your model and data) and :func:`train` (a config).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from edgetrain.config import TrainConfig, load_config
from edgetrain.errors import EdgeTrainError

# `train` is both a subpackage and the entry point: the function is bound last, so
# `edgetrain.train(...)` is the function; `from edgetrain.train import X` still finds the
# subpackage through sys.modules.
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
    "train",
]
__version__ = "0.1.0"

_LAZY = {"dynamic_train": "edgetrain.compat", "log_usage_plot": "edgetrain.compat"}

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgetrain' has no attribute {name!r}")
