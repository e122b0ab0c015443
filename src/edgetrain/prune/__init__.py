"""Global magnitude pruning: masks, an exact ratio, sparsity, a schedule, permanence.

A building block (no files, no CLI)::

    edgetrain.prune.prune_to(model, 0.5)      # 50% of conv/linear weights, smallest first
    edgetrain.prune.param_sparsity(model)     # 0.5
    edgetrain.prune.make_permanent(model)     # plain weights with zeros
"""

import logging

from edgetrain.prune.magnitude import (
    PRUNABLE,
    attach_masks,
    current_masks,
    is_masked,
    make_permanent,
    model_sparsity,
    param_sparsity,
    plain_state_dict,
    prunable_modules,
    prune_to,
)
from edgetrain.prune.schedule import target_sparsity

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "PRUNABLE",
    "attach_masks",
    "current_masks",
    "is_masked",
    "make_permanent",
    "model_sparsity",
    "param_sparsity",
    "plain_state_dict",
    "prunable_modules",
    "prune_to",
    "target_sparsity",
]
