"""edgetrain: train PyTorch models where memory and energy are scarce, and know what it cost.

Python entry points: :func:`fit` (your model and data) and :func:`train` (a config).
Names are imported lazily, so ``edgetrain.report`` and ``edgetrain.measure`` work
without loading torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from edgetrain.errors import EdgeTrainError

if TYPE_CHECKING:
    from edgetrain.config import TrainConfig, load_config
    from edgetrain.train import Callback, FitResult, TrainState, fit, train

__all__ = [
    "Callback",
    "EdgeTrainError",
    "FitResult",
    "TrainConfig",
    "TrainState",
    "fit",
    "load_config",
    "train",
]
__version__ = "0.1.0"

_LAZY = {
    "TrainConfig": "edgetrain.config",
    "load_config": "edgetrain.config",
    "Callback": "edgetrain.train",
    "FitResult": "edgetrain.train",
    "TrainState": "edgetrain.train",
    "fit": "edgetrain.train",
    "train": "edgetrain.train",
}

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgetrain' has no attribute {name!r}")
