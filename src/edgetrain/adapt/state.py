"""The budget controller's checkpointed state, and its plain form.

:class:`BudgetState` is written into checkpoints as :meth:`BudgetState.to_dict` (dicts,
lists, numbers, strings, None: what ``torch.load(weights_only=True)`` and JSON read) and
read back with :meth:`BudgetState.from_dict`. Both follow the dataclass fields, so a field
is named once, where it is declared; a checkpoint that lacks a field (an older one) gets
the field's default.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from edgetrain.adapt.measurements import Probe, StaticBytes
from edgetrain.adapt.memory_model import MemoryModel
from edgetrain.adapt.planner import LeverCost, Levers

__all__ = ["BudgetState", "StateFormatError", "from_plain", "to_plain"]


class StateFormatError(ValueError):
    """A saved state that does not have the shape its dataclass declares."""


@dataclass
class BudgetState:
    """What the controller carries across a resume.

    Attributes:
        memory: the fitted memory model (None before probing, or without a budget).
        static: the exact static bytes of the model and optimizer.
        probes: the single passes measured before training.
        calibration: the whole logical batch measured at the last probed size.
        overhead_bytes: what a logical batch needs beyond a single pass (calibration).
        points: (micro-batch, measured peak) of training steps, for recalibration.
        ceiling: the smallest micro-batch that ran out of memory or passed the budget.
        fitted: whether the micro-batch was fitted to the budget (probing is done once).
        violations: training steps whose measured peak passed the budget.
        oom_retries: logical batches retried at a smaller micro-batch after an OOM.
        last_lr_change_epoch: the epoch whose decision last changed the learning rate.
        peak_bytes: the highest peak measured in training.
        probe_peak_bytes: the highest peak the probes reached.
        outside_peak_bytes: the highest peak between epochs (checkpoint writes).
        levers: the memory levers the planner chose (None: no plan, micro-batch only).
        plan_costs: every lever set's measured cost (for re-planning on drift).
        replans: how often measured memory led to other levers.
    """

    memory: MemoryModel | None = None
    static: StaticBytes | None = None
    probes: list[Probe] = field(default_factory=list)
    calibration: Probe | None = None
    overhead_bytes: float = 0.0
    points: list[tuple[int, float]] = field(default_factory=list)
    ceiling: int | None = None
    fitted: bool = False
    violations: int = 0
    oom_retries: int = 0
    last_lr_change_epoch: int = 0
    peak_bytes: int | None = None
    probe_peak_bytes: int | None = None
    outside_peak_bytes: int | None = None
    levers: Levers | None = None
    plan_costs: list[LeverCost] = field(default_factory=list)
    replans: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The state in plain types (see the module doc)."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetState:
        """The state :meth:`to_dict` wrote (absent fields take their defaults)."""
        return from_plain(cls, data)


def to_plain(value: Any) -> Any:
    """``value`` with dataclasses as dicts and tuples as lists, recursively."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    return value


def from_plain(kind: Any, value: Any) -> Any:
    """``value``, as :func:`to_plain` wrote it, rebuilt as the type ``kind``: dataclasses
    from dicts (absent keys take the field's default, unknown keys are ignored), tuples
    from lists, numbers and flags cast; None stays None.

    Raises:
        StateFormatError: ``value`` does not have the shape of ``kind``.
    """
    if value is None:
        return None
    origin, args = get_origin(kind), get_args(kind)
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) != 1:
            raise StateFormatError(f"cannot rebuild a value of the union {kind}")
        return from_plain(options[0], value)
    if origin in (list, tuple) and not isinstance(value, list | tuple):
        raise StateFormatError(f"expected a list for {kind}, got {value!r}")
    if origin is list:
        return [from_plain(args[0], item) for item in value]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], item) for item in value)
        if len(args) != len(value):
            raise StateFormatError(f"expected {len(args)} items for {kind}, got {value!r}")
        return tuple(from_plain(a, item) for a, item in zip(args, value, strict=True))
    if is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise StateFormatError(f"expected a dict for {kind.__name__}, got {value!r}")
        hints = get_type_hints(kind)
        return kind(
            **{
                f.name: from_plain(hints[f.name], value[f.name])
                for f in fields(kind)
                if f.name in value
            }
        )
    return kind(value)
