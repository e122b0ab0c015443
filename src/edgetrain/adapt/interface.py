"""What goes into the budget controller and what comes out, besides plain numbers.

:class:`Settings` are the loop's settings the controller adjusts; a
:class:`BudgetDecision` is its answer, for the caller to apply and log. No torch here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgetrain.adapt.policies import Decision
from edgetrain.errors import EdgeTrainError

__all__ = ["BudgetDecision", "BudgetUnmetError", "ControllerError", "Measure", "Settings"]

# the peak of one whole logical batch at a micro-batch: bytes, -1 (ran out of memory) or
# None (the meter has no reading)
Measure = Callable[[int], int | None]


class ControllerError(RuntimeError):
    """The controller was asked for something its state cannot give (a caller's bug)."""


class BudgetUnmetError(EdgeTrainError):
    """The probes before training measured more than the budget at the smallest
    micro-batch allowed: ``needed_bytes`` at ``micro_batch_size`` (the training callback
    re-plans with that set's cost corrected before it gives up; see ``docs/design.md``,
    "Memory planner")."""

    def __init__(self, message: str, *, needed_bytes: int, micro_batch_size: int) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.micro_batch_size = micro_batch_size


@dataclass(frozen=True)
class Settings:
    """The training settings the controller adjusts (the loop's logical batch, micro-batch
    and base learning rate)."""

    batch_size: int
    micro_batch_size: int
    lr: float


@dataclass(frozen=True)
class BudgetDecision:
    """One decision of the controller, for the caller to apply and log.

    Attributes:
        decision: the policy's answer (its changes, reason and scores).
        epoch: the epoch it belongs to in decisions.csv (0: before training).
        settings: the settings to train at from now on; None: leave them as they are.
        note: appended to the reason in decisions.csv.
        logged: whether it goes to decisions.csv (a repeated overrun that shrinking
            cannot help is written once per epoch).
        level: log the reason at this level (``logging.WARNING``...); None: do not.
    """

    decision: Decision
    epoch: int
    settings: Settings | None = None
    note: str = ""
    logged: bool = True
    level: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.decision.changes)

    def rows(self, step: int) -> list[dict[str, Any]]:
        """decisions.csv rows: one per change, or one 'keep' row."""
        rows = []
        for row in self.decision.rows():
            row = {"epoch": self.epoch, "step": step, **row}
            if self.note:
                row["reason"] = f"{row['reason']}; {self.note}" if row["reason"] else self.note
            rows.append(row)
        return rows
