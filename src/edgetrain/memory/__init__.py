"""Activation memory: exact accounting and compression of the tensors saved for backward.

Accounting::

    rep = edgetrain.memory.report(model, optimizer, (x, y))
    rich.print(edgetrain.memory.render_memory_report(rep))

Compression (``MODES``: none, lossless, bf16, fp16, int8, int4, int2)::

    ctx = edgetrain.memory.compress_activations(model, mode="lossless")
    with ctx:
        loss = loss_fn(model(x), y)
    loss.backward()
    ctx.stats.peak_stored_bytes

A building block: it acts on a model and a step and knows nothing about files,
configs or the CLI.
"""

import logging

from edgetrain.memory.accounting import (
    LayerMemory,
    MemoryReport,
    render_memory_report,
    report,
    unique_bytes,
)
from edgetrain.memory.codecs import bitmap_break_even
from edgetrain.memory.hooks import (
    DEFAULT_MIN_BYTES,
    MODES,
    CompressionContext,
    SavedTensorCounter,
    compress_activations,
    measure_saved_bytes,
)
from edgetrain.memory.ledger import CompressionStats

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "DEFAULT_MIN_BYTES",
    "MODES",
    "CompressionContext",
    "CompressionStats",
    "LayerMemory",
    "MemoryReport",
    "SavedTensorCounter",
    "bitmap_break_even",
    "compress_activations",
    "measure_saved_bytes",
    "render_memory_report",
    "report",
    "unique_bytes",
]
