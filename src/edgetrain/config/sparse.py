"""``sparse_update.*``: budgeted sparse updates (edgetrain.sparse)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgetrain.config.base import SEED_MAX, Section
from edgetrain.errors import EdgeTrainError
from edgetrain.units import parse_bytes

__all__ = ["BUDGETED_SCHEMES", "SCHEMES", "SparseUpdateConfig"]

SCHEMES = ("full", "velocity", "random", "static", "last_k", "bias_only")
BUDGETED_SCHEMES = ("velocity", "random", "static")


class SparseUpdateConfig(Section):
    """Which neurons to update, under what budget (off by default: ``scheme: full``).

    ``budget`` is a number of parameters (an integer), a fraction of all trainable
    parameters (a float in (0, 1]) or a size of training memory ('300MiB'). ``velocity``
    without a budget is plain NEq: neurons with ``|velocity| <= epsilon`` are frozen.
    """

    scheme: Literal["full", "velocity", "random", "static", "last_k", "bias_only"] = "full"
    budget: int | float | str | None = None
    # the first `probe_size` training samples, in order and un-augmented (the WACV follow-up
    # used 10 probe images)
    probe_size: int = Field(10, ge=1)
    mu: float = Field(0.5, ge=0, lt=1)  # velocity momentum: v_t = dphi_t - mu * v_{t-1}
    epsilon: float = Field(1e-3, ge=0)  # NEq equilibrium threshold (used when budget is None)
    # the velocity scheme's selection during the first epoch, before any velocity exists;
    # None = static with a budget, full without one
    first_epoch: Literal["full", "random", "static"] | None = None
    always_train_bn: bool = False  # trainable norm layers force backward through the network
    always_train_head: bool = True
    last_k: int = Field(1, ge=1)  # layers updated by scheme last_k (the head counts as one)
    # the static scheme chooses among this fraction of the neuron layers, counted from the
    # last (backward stops at the first trainable layer: a smaller depth costs less memory)
    static_depth: float = Field(0.75, gt=0, le=1)
    # random selection seed; None = the run's seed
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    # keep requires_grad on layers with no selected neuron and only drop their gradients
    # (NEq's masking; for measuring what real freezing saves)
    mask_only: bool = False

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_value(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raise ValueError(f"sparse_update.budget must be a number or a size, got {value!r}")
        if isinstance(value, int):
            if value < 1:
                raise ValueError(
                    f"sparse_update.budget must be >= 1 parameter (an integer), a fraction in "
                    f"(0, 1] or a size such as '300MiB', got {value}"
                )
            return value
        if isinstance(value, float):
            if not 0 < value <= 1:
                raise ValueError(
                    "sparse_update.budget as a fraction of the parameters must be in (0, 1] "
                    f"(give an integer for a number of parameters), got {value}"
                )
            return value
        try:
            size = parse_bytes(str(value), name="sparse_update.budget")
        except EdgeTrainError as exc:
            raise ValueError(
                f"sparse_update.budget must be a number of parameters, a fraction in (0, 1] "
                f"or a size such as '300MiB', got {value!r}"
            ) from exc
        if size < 1:
            raise ValueError(f"sparse_update.budget must be > 0 bytes, got {value!r}")
        return str(value)

    @model_validator(mode="after")
    def _budget_needed(self) -> SparseUpdateConfig:
        if self.budget is None and self.scheme in ("random", "static"):
            raise ValueError(
                f"sparse_update.scheme '{self.scheme}' needs sparse_update.budget "
                "(parameters, a fraction such as 0.1, or a size such as '300MiB')"
            )
        if (
            self.scheme == "velocity"
            and self.budget is None
            and self.first_epoch
            in (
                "random",
                "static",
            )
        ):
            raise ValueError(
                f"sparse_update.first_epoch '{self.first_epoch}' needs sparse_update.budget; "
                "set a budget or first_epoch: full"
            )
        return self

    @property
    def budget_kind(self) -> Literal["params", "fraction", "bytes"] | None:
        """How ``budget`` is measured: parameters, a fraction of them, or bytes of memory."""
        if self.budget is None:
            return None
        if isinstance(self.budget, int):
            return "params"
        if isinstance(self.budget, float):
            return "fraction"
        return "bytes"

    @property
    def first_epoch_scheme(self) -> Literal["full", "random", "static"]:
        """The first epoch's selection with the default resolved."""
        if self.first_epoch is not None:
            return self.first_epoch
        return "static" if self.budget is not None else "full"
