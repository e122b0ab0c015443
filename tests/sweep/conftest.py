"""Sweep test helpers: tiny spaces, user model builders that fail, a PostgreSQL URL."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

# the smallest real trial: an MLP on 8x8 digits, 2 batches, no checkpoints to speak of
TINY_BASE: dict[str, Any] = {
    "model": "mlp",
    "model_args": {"hidden": [16]},
    "data": "digits",
    "epochs": 1,
    "batch_size": 32,
    "max_batches_per_epoch": 2,
    "monitor": {"interval_s": 0.1},
}

HELPERS = """
import os
import signal
import time

import torch


def boom(num_classes, in_channels, input_size, **options):
    raise RuntimeError("boom: this trial fails on purpose")


def die(num_classes, in_channels, input_size, **options):
    os.kill(os.getpid(), signal.SIGKILL)


def sleepy(num_classes, in_channels, input_size, **options):
    time.sleep(120)
    return torch.nn.Flatten()
"""


def _tiny_space(**extra: Any) -> dict[str, Any]:
    """A space over the tiny base: lr (log range) and batch size."""
    space: dict[str, Any] = {
        "base": dict(TINY_BASE),
        "params": {
            "lr": {"low": 0.001, "high": 0.1, "log": True},
            "batch_size": {"choices": [16, 32]},
        },
    }
    space.update(extra)
    return space


@pytest.fixture
def tiny_base() -> dict[str, Any]:
    """The smallest real trial's training config."""
    return dict(TINY_BASE)


@pytest.fixture
def make_space() -> Any:
    """``make_space(**extra)``: a space over the tiny base (lr log range, batch size)."""
    return _tiny_space


@pytest.fixture
def helpers_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Write sweep_helpers.py (failing model builders) where trial processes import it."""
    (tmp_path / "sweep_helpers.py").write_text(textwrap.dedent(HELPERS))
    old = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), old) if p))
    return "sweep_helpers"


@pytest.fixture
def pg_url() -> str:
    """EDGETRAIN_TEST_PG_URL (a PostgreSQL database to create studies in), or skip."""
    url = os.environ.get("EDGETRAIN_TEST_PG_URL")
    if not url:
        pytest.skip(
            "EDGETRAIN_TEST_PG_URL is not set: run .ci/postgres.sh and export the URL it "
            "prints to test workers against PostgreSQL"
        )
    return url
