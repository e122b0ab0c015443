"""Shared test settings: few threads (CI has 2 cores) and no stray run directories."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _work_in_tmp(tmp_path, monkeypatch):
    # runs without --out go to ./runs: keep them inside the test's temporary directory
    monkeypatch.chdir(tmp_path)
