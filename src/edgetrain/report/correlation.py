"""When a report may draw a correlation, and how it labels one.

A scatter of one quantity against another invites reading a relation into it; through a
handful of points any line looks convincing. So the reports draw a correlation plot only
with at least :data:`MIN_POINTS` points, always say how many (``n``) and the coefficient
(``r``, naming Pearson or Spearman), and never fit a line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["MIN_POINTS", "correlation", "correlation_text", "enough_points"]

#: The fewest points a correlation plot is drawn with.
MIN_POINTS = 10
_METHODS = {"pearson": "Pearson", "spearman": "Spearman"}


def enough_points(n: int) -> bool:
    """Whether ``n`` points are enough for a correlation plot (``n >= MIN_POINTS``)."""
    return n >= MIN_POINTS


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    return pd.Series(values).rank(method="average").to_numpy(dtype=float)


def correlation(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, method: str = "spearman"
) -> tuple[int, float | None]:
    """``(n, r)`` over the pairs where both values are finite; r is None when either side is
    constant or fewer than three pairs remain.

    Args:
        x: One quantity.
        y: The other, pairwise with ``x``.
        method: ``pearson`` (linear) or ``spearman`` (monotone: Pearson of the ranks).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}, got {method!r}")
    a = np.asarray(pd.to_numeric(pd.Series(list(x)), errors="coerce"), dtype=float)
    b = np.asarray(pd.to_numeric(pd.Series(list(y)), errors="coerce"), dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return n, None
    if method == "spearman":
        a, b = _ranks(a), _ranks(b)
    return n, float(np.corrcoef(a, b)[0, 1])


def correlation_text(n: int, r: float | None, method: str = "spearman") -> str:
    """'n = 12, Spearman r = +0.53' ('r undefined' for a constant side)."""
    name = _METHODS.get(method, method)
    return f"n = {n}, {name} r = {r:+.2f}" if r is not None else f"n = {n}, {name} r undefined"
