"""The one user-facing error type.

Anything a user can cause (bad config, missing file, impossible budget) raises
:class:`EdgeTrainError` with a message that states the rule and the value. The CLI
prints it on one line and exits with code 2; every other exception is a bug.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["DivergedError", "EdgeTrainError", "MissingExtraError", "suggest"]


class EdgeTrainError(Exception):
    """A problem the user can fix; the message is shown as is, on one line."""

    exit_code: int = 2


class DivergedError(EdgeTrainError):
    """Training produced a non-finite loss and ``on_nonfinite`` is ``stop`` (exit code 3)."""

    exit_code = 3

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(
            f"training diverged: the loss is {loss} at epoch {epoch}, step {step} "
            "(on_nonfinite=stop); lower the learning rate, or set on_nonfinite=skip to drop "
            "such steps"
        )
        self.epoch = epoch
        self.step = step
        self.loss = loss


class MissingExtraError(EdgeTrainError):
    """An optional dependency is missing for the feature that was asked for."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed; "
            f'install it with: pip install "edgetrain[{extra}]"'
        )
        self.package = package
        self.extra = extra


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean 'x'?)' for the closest choice, or '' if none is close."""
    match = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""
