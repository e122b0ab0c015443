"""Optuna, imported once, with an install hint when it is missing."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from edgetrain.errors import MissingExtraError

try:
    import optuna
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise MissingExtraError("optuna", "sweep", "edgetrain sweep") from exc

__all__ = ["optuna", "quiet_optuna"]


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO lines ("A new study created ...") for a moment."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)
