"""``budget.*``, ``adapt.*`` and ``prune.*``: adaptive training inside a memory budget."""

from __future__ import annotations

from typing import Literal

from edgetrain.config.base import Section

__all__ = ["AdaptConfig", "BudgetConfig", "PruneConfig"]


class BudgetConfig(Section):
    """Resource budgets (``budget.memory``: e.g. '1.5GiB'; none = unbounded)."""

    memory: int | str | None = None


class AdaptConfig(Section):
    """The controller (``adapt.policy``: none, budget, edgetrain)."""

    policy: Literal["none", "budget", "edgetrain"] = "none"


class PruneConfig(Section):
    """Global magnitude pruning at a constant ratio (0 = off)."""

    ratio: float = 0.0
