"""``log.*``: experiment loggers (TensorBoard, MLflow), each behind its own extra."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import field_validator, model_validator

from edgetrain.config.base import Section

__all__ = ["LogConfig"]


def _text(value: Any, key: str, what: str) -> Any:
    """Refuse true/false and empty text for a path or URI field (None stays off)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"log.{key} must be {what} (or null for off), not true/false")
    if isinstance(value, str | Path) and not str(value).strip():
        raise ValueError(f"log.{key} must be {what} (or null for off), got an empty string")
    return value


class LogConfig(Section):
    """Where each epoch's metrics, costs and decisions are also logged (all off by default).

    ``tensorboard`` is a log directory: each run writes its events to a subdirectory named
    after the run directory, so ``tensorboard --logdir DIR`` shows runs side by side
    (extra ``tensorboard``). ``mlflow`` is a tracking URI (``file:./mlruns``,
    ``sqlite:///mlflow.db``, ``http://host:5000``); the run is logged to experiment
    ``mlflow_experiment`` (None: ``$MLFLOW_EXPERIMENT_NAME``, else MLflow's default;
    extra ``mlflow``).
    """

    tensorboard: Path | None = None
    mlflow: str | None = None
    mlflow_experiment: str | None = None

    @field_validator("tensorboard", mode="before")
    @classmethod
    def _tensorboard_dir(cls, value: Any) -> Any:
        return _text(value, "tensorboard", "a directory")

    @field_validator("mlflow", mode="before")
    @classmethod
    def _mlflow_uri(cls, value: Any) -> Any:
        return _text(value, "mlflow", "a tracking URI such as 'file:./mlruns'")

    @field_validator("mlflow_experiment", mode="before")
    @classmethod
    def _experiment_name(cls, value: Any) -> Any:
        return _text(value, "mlflow_experiment", "an experiment name")

    @model_validator(mode="after")
    def _experiment_needs_uri(self) -> LogConfig:
        if self.mlflow_experiment is not None and self.mlflow is None:
            raise ValueError(
                "log.mlflow_experiment needs log.mlflow (a tracking URI such as "
                f"'file:./mlruns'), got mlflow_experiment={self.mlflow_experiment!r} "
                "with mlflow=null"
            )
        return self

    @property
    def enabled(self) -> bool:
        """Whether any logger is on."""
        return self.tensorboard is not None or self.mlflow is not None
