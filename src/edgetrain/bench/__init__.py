"""Characterise training on a device: data stall against compute, over a grid of settings.

The workflow behind ``edgetrain bench``::

    from edgetrain.bench import run_bench

    result = run_bench("examples/characterize_vgg11.yaml", ["num_workers=0,2"],
                       epochs=3, drop_cache=True, out="bench/vgg11")
    print(result.summary[["config", "num_workers", "stall_s_mean", "compute_s_mean"]])

Building blocks usable alone: :class:`BatchTimer` (a training callback with per-batch
wait, copy, compute and stall), :func:`evict` / :func:`residency` (page cache),
:func:`device_settings` (read-only device record), :func:`export_dataset` (one file per
sample for the ``folder`` data set) and :func:`parse_grid` / :func:`expand_grid`.
"""

from edgetrain.bench.cache import Eviction, Residency, evict, evict_files, residency
from edgetrain.bench.device import (
    device_settings,
    read_cpu,
    read_jetson,
    read_nvidia,
    read_storage,
)
from edgetrain.bench.export import ExportResult, export_dataset, export_samples
from edgetrain.bench.grid import GridAxis, GridPoint, expand_grid, parse_grid
from edgetrain.bench.plot import breakdown_table, draw_breakdown
from edgetrain.bench.runner import (
    DEFAULT_EPOCHS,
    DEFAULT_WARMUP_EPOCHS,
    BenchResult,
    load_bench_config,
    run_bench,
)
from edgetrain.bench.summary import summarize_epochs, summary_table
from edgetrain.bench.timing import BatchRecord, BatchTimer, EpochTiming

__all__ = [
    "DEFAULT_EPOCHS",
    "DEFAULT_WARMUP_EPOCHS",
    "BatchRecord",
    "BatchTimer",
    "BenchResult",
    "EpochTiming",
    "Eviction",
    "ExportResult",
    "GridAxis",
    "GridPoint",
    "Residency",
    "breakdown_table",
    "device_settings",
    "draw_breakdown",
    "evict",
    "evict_files",
    "expand_grid",
    "export_dataset",
    "export_samples",
    "load_bench_config",
    "parse_grid",
    "read_cpu",
    "read_jetson",
    "read_nvidia",
    "read_storage",
    "residency",
    "run_bench",
    "summarize_epochs",
    "summary_table",
]
