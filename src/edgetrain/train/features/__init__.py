"""Every feature of a training run is one callback, in its own module here.

``monitor`` (energy and peaks per epoch), ``budget`` (the memory-budget controller and
``adapt_callbacks``), ``prune`` (magnitude pruning), ``activations`` (saved-activation
compression), ``sparse`` (budgeted sparse updates), ``progress`` (the progress bar).
The hooks and what each may change: docs/design.md, "How a feature plugs into training".
"""

from edgetrain.train.features.activations import ActivationCallback
from edgetrain.train.features.budget import AdaptiveCallback, adapt_callbacks
from edgetrain.train.features.monitor import MonitorCallback
from edgetrain.train.features.progress import ProgressCallback
from edgetrain.train.features.prune import PruneCallback
from edgetrain.train.features.sparse import SparseUpdateCallback

__all__ = [
    "ActivationCallback",
    "AdaptiveCallback",
    "MonitorCallback",
    "ProgressCallback",
    "PruneCallback",
    "SparseUpdateCallback",
    "adapt_callbacks",
]
