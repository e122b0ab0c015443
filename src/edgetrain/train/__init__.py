"""The training loop, its callbacks and the run-directory writer."""

from edgetrain.train.api import FitResult, fit, prepare, prepare_data, resolve_device, train
from edgetrain.train.callbacks import BatchTiming, Callback, CallbackList, TrainState
from edgetrain.train.loop import StepResult, evaluate, run_epochs, train_step
from edgetrain.train.rundir import (
    DECISIONS_COLUMNS,
    METRICS_COLUMNS,
    RESOURCES_BASE_COLUMNS,
    CsvLog,
    RunDir,
    read_csv_rows,
)

__all__ = [
    "DECISIONS_COLUMNS",
    "METRICS_COLUMNS",
    "RESOURCES_BASE_COLUMNS",
    "BatchTiming",
    "Callback",
    "CallbackList",
    "CsvLog",
    "FitResult",
    "RunDir",
    "StepResult",
    "TrainState",
    "evaluate",
    "fit",
    "prepare",
    "prepare_data",
    "read_csv_rows",
    "resolve_device",
    "run_epochs",
    "train",
    "train_step",
]
