"""``sparse_update.*``: budgeted sparse updates (edgetrain.sparse)."""

from __future__ import annotations

from typing import Literal

from edgetrain.config.base import Section

__all__ = ["SparseUpdateConfig"]


class SparseUpdateConfig(Section):
    """Which neurons to update, under what budget (off by default: ``scheme: full``)."""

    scheme: Literal["full", "velocity", "random", "static", "last_k", "bias_only"] = "full"
