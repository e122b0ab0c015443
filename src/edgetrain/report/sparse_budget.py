"""Update budgets of a sparse-update comparison: parsing them and placing them on an axis.

``budget`` is written as given: a fraction of the parameters (0.25), a number of
parameters (50000) or a size of training memory ('300MiB'); schemes without a budget
(full, last_k, bias_only) have an empty budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from edgetrain.report.labels import MIB
from edgetrain.units import parse_bytes

__all__ = ["BudgetAxis", "budget_axis", "parse_budget"]


def parse_budget(text: Any) -> tuple[float, str | None]:
    """A budget as written -> (value, kind): kind 'fraction', 'params', 'bytes' or None.

    '0.25' is a fraction of the parameters, '50000' a number of parameters, '300MiB' bytes
    of training memory; an empty budget (an unbudgeted scheme) is (nan, None).
    """
    if text is None or (isinstance(text, float) and math.isnan(text)) or str(text).strip() == "":
        return math.nan, None
    raw = str(text).strip()
    try:
        return float(int(raw)), "params"
    except ValueError:
        pass
    try:
        value = float(raw)
    except ValueError:
        try:
            return float(parse_bytes(raw)), "bytes"
        except Exception:
            return math.nan, "words"
    if value <= 1.0:
        return value, "fraction"
    return value, "params"


@dataclass(frozen=True)
class BudgetAxis:
    """How budgets are placed on an x axis.

    Attributes:
        kind: 'fraction', 'params', 'bytes' or 'category' (budgets of mixed kinds).
        label: The axis label, with unit.
        scale: Divide budget values by this (bytes are drawn in MiB).
        order: For 'category', the budgets as written, in order.
    """

    kind: str
    label: str
    scale: float = 1.0
    order: tuple[str, ...] = ()

    def positions(self, results: pd.DataFrame) -> np.ndarray:
        """The x of each row of :func:`~edgetrain.report.sparse.sparse_results` (NaN: no budget)."""
        if self.kind == "category":
            index = {text: i for i, text in enumerate(self.order)}
            return np.array(
                [index.get(str(b), np.nan) if pd.notna(b) else np.nan for b in results["budget"]],
                dtype=float,
            )
        return results["budget_value"].to_numpy(dtype=float) / self.scale


def budget_axis(results: pd.DataFrame) -> BudgetAxis:
    """The x axis for the budgeted schemes (the kind all budgets share, else categories)."""
    kinds = {k for k in results["budget_kind"] if isinstance(k, str)}
    if kinds == {"fraction"}:
        return BudgetAxis("fraction", "budget (fraction of the parameters)")
    if kinds == {"params"}:
        return BudgetAxis("params", "budget (parameters)")
    if kinds == {"bytes"}:
        return BudgetAxis("bytes", "budget (training memory, MiB)", float(MIB))
    order = tuple(dict.fromkeys(str(b) for b in results["budget"] if pd.notna(b)))
    return BudgetAxis("category", "budget (as given)", order=order)
