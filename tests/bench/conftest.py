"""Tiny configs, a data set with a known delay per item and a model with a known delay."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

SLOW_MODULE = '''
import time

import torch
from torch import nn
from torch.utils.data import Dataset


class SlowSet(Dataset):
    """Items that take delay_s each to fetch (no .x/.y, so every item goes through here)."""

    def __init__(self, n, delay_s, seed):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn(n, 1, 4, 4, generator=g)
        self.labels = torch.randint(2, (n,), generator=g)
        self.classes = ["a", "b"]
        self.delay_s = delay_s

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.data[i], self.labels[i]


def make(n=32, delay_s=0.0, seed=0):
    return SlowSet(n, delay_s, seed)


class SlowNet(nn.Module):
    """A linear model whose forward takes at least delay_s."""

    def __init__(self, num_classes, delay_s):
        super().__init__()
        self.fc = nn.Linear(16, num_classes)
        self.delay_s = delay_s

    def forward(self, x):
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.fc(x.flatten(1))


def net(num_classes, delay_s=0.0):
    return SlowNet(num_classes, delay_s)
'''


@pytest.fixture
def slow_module(tmp_path, monkeypatch):
    """Importable 'benchslow:make' (data set) and 'benchslow:net' (model)."""
    folder = tmp_path / "usercode"
    folder.mkdir()
    (folder / "benchslow.py").write_text(textwrap.dedent(SLOW_MODULE))
    monkeypatch.syspath_prepend(str(folder))
    return "benchslow"


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """A YAML config that trains an MLP on 48 synthetic 8x8 images in well under a second."""
    data = {
        "model": "mlp",
        "model_args": {"hidden": [16]},
        "data": "synthetic",
        "data_args": {"num_samples": 48, "num_classes": 3},
        "image_size": 8,
        "channels": 1,
        "batch_size": 16,
        "lr": 0.01,
        "split": [1.0, 0.0, 0.0],
        "preprocessing": "none",
        "monitor": {"interval_s": 0.5},
        "bench": {"epochs": 2, "warmup_epochs": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(autouse=True)
def _never_drop_the_real_page_cache(tmp_path, monkeypatch):
    """The machine is shared: no test writes the kernel's drop_caches file."""
    from edgetrain.bench import cache

    monkeypatch.setattr(cache, "DROP_CACHES", tmp_path / "guard" / "drop_caches")


@pytest.fixture
def no_drop_caches(tmp_path) -> Path:
    """A drop_caches path that cannot be written (a missing directory)."""
    return tmp_path / "no-proc" / "drop_caches"
