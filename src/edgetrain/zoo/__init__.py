"""Built-in models and offline data sets (the bottom layer: imports only errors and units).

Models: ``build_model("cnn", num_classes=10, in_channels=1, input_size=8)`` or a
user builder 'package.module:callable'. Data sets: ``load_dataset("digits")``
returns ``(dataset, DataInfo)`` with items ``(x: float32 [C, H, W], y: int64)``;
``diabetes`` (regression) and ``pycorpus`` (language modelling) are not images, and
``gpt`` is the model for token sequences.
"""

from edgetrain.zoo.base import DataInfo, InMemoryDataset, TensorPairDataset
from edgetrain.zoo.data import DATASETS, load_dataset
from edgetrain.zoo.models import MODELS, build_model

__all__ = [
    "DATASETS",
    "MODELS",
    "DataInfo",
    "InMemoryDataset",
    "TensorPairDataset",
    "build_model",
    "load_dataset",
]
