"""``early_stop.*``: stop training when a metric stops improving (off by default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edgetrain.config.base import Section

__all__ = ["EarlyStopConfig"]


class EarlyStopConfig(Section):
    """Stop when ``metric`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row.

    ``patience`` None or 0 turns early stopping off. ``metric`` defaults to the task's
    "best" metric (``val_acc`` for classification, ``val_rmse`` for regression) and
    ``mode`` to that metric's direction.
    """

    metric: str | None = None  # a metrics.csv column, e.g. val_loss, val_rmse, train_loss
    mode: Literal["min", "max"] | None = None
    patience: int | None = Field(None, ge=0)
    min_delta: float = Field(0.0, ge=0)

    @field_validator("metric")
    @classmethod
    def _metric_is_a_column(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("train_", "val_")):
            raise ValueError(
                f"early_stop.metric must be a metrics.csv column starting with val_ or "
                f"train_ (e.g. val_loss), got {value!r}"
            )
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.patience)
