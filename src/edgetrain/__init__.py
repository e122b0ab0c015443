"""edgetrain: train PyTorch models where memory and energy are scarce, and know what it cost.

Python entry points: :func:`fit` (your model and data) and :func:`train` (a config).
"""

import logging

from edgetrain.config import TrainConfig, load_config
from edgetrain.errors import EdgeTrainError
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

logging.getLogger(__name__).addHandler(logging.NullHandler())
