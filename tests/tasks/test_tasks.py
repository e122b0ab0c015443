"""The Task seam: any batch structure, a user's loss, metrics, optimizer, scheduler and
DataLoader, exact accumulation over micro-batches of unequal token counts."""

from __future__ import annotations

import copy
import json
from collections import UserDict
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, TensorDataset
from torchmetrics.regression import MeanAbsoluteError

import edgetrain
from edgetrain.errors import EdgeTrainError
from edgetrain.tasks import batch_size, make_task, move_batch, slice_batch

QUIET: dict[str, Any] = {"progress": False, "monitor": {"enabled": False}}


# -- batches of any structure ----------------------------------------------------------------
@dataclass
class Pair:
    ids: torch.Tensor
    weight: torch.Tensor
    note: str = "kept"


def test_batches_of_any_structure_move_and_split_keeping_dtypes():
    ids = torch.randint(0, 9, (6, 4))
    batch = {
        "input_ids": ids,
        "mask": torch.ones(6, 4, dtype=torch.bool),
        "extra": (torch.randn(6), [torch.randn(6, 2)]),
        "pair": Pair(ids, torch.randn(6)),
        "scale": torch.tensor(2.0),  # not per sample: shared by every slice
    }
    moved = move_batch(batch, torch.device("cpu"), torch.float64)
    assert moved["input_ids"].dtype == torch.int64 and moved["mask"].dtype == torch.bool
    assert moved["extra"][0].dtype == torch.float64 and moved["pair"].weight.dtype == torch.float64
    assert moved["pair"].note == "kept"
    assert batch_size(moved) == 6
    part = slice_batch(moved, 2, 5)
    assert part["input_ids"].shape == (3, 4) and part["extra"][1][0].shape == (3, 2)
    assert part["pair"].ids.shape == (3, 4) and part["scale"].shape == ()
    encoding = UserDict({"input_ids": ids})  # BatchEncoding is a UserDict
    assert isinstance(move_batch(encoding, torch.device("cpu")), UserDict)


# -- a data set whose attributes differ from what __getitem__ returns --------------------------
class Decoy(Dataset):
    """Tensor attributes x and y that are not what __getitem__ returns."""

    def __init__(self) -> None:
        self.x = torch.zeros(32, 4)
        self.y = torch.zeros(32, dtype=torch.long)

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((4,), 7.0 + i), torch.tensor(1)


def test_training_sees_what_getitem_returns_not_attributes(tmp_path):
    seen: list[torch.Tensor] = []
    model = nn.Linear(4, 2)
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    edgetrain.fit(
        model, Decoy(), epochs=1, batch_size=8, preprocessing="standardize",
        out=str(tmp_path / "r"), **QUIET,
    )  # fmt: skip
    # standardised from what __getitem__ returns (7..38), not from the zeros in .x
    assert seen and float(torch.cat(seen).abs().sum()) > 0
    assert abs(float(torch.cat(seen).mean())) < 0.5
    seen.clear()
    edgetrain.fit(model, Decoy(), epochs=1, batch_size=8, out=str(tmp_path / "s"), **QUIET)
    assert seen and all(torch.all(x >= 7.0) for x in seen)


# -- a user's DataLoader is honoured as given ------------------------------------------------------
def test_a_users_dataloader_is_used_as_given(tmp_path):
    calls = {"collate": 0}
    data = TensorDataset(torch.randn(24, 4), torch.randint(0, 2, (24,)))

    def collate(items: list[Any]) -> dict[str, torch.Tensor]:
        calls["collate"] += 1
        xs, ys = zip(*items, strict=True)
        return {"x": torch.stack(xs), "y": torch.stack(ys)}

    order: list[torch.Tensor] = []
    model = nn.Linear(4, 2)
    model.register_forward_pre_hook(lambda m, args: order.append(args[0][:, 0].detach().clone()))
    loader = DataLoader(data, batch_size=6, sampler=SequentialSampler(data), collate_fn=collate)
    result = edgetrain.fit(
        model, loader, epochs=1, task="classification", out=str(tmp_path / "r"), **QUIET
    )
    assert calls["collate"] >= 4
    assert torch.equal(torch.cat(order[:4]), data.tensors[0][:, 0])  # the sampler's order
    assert result.history["batch_size"].tolist() == [6]


# -- exact accumulation over micro-batches of unequal token counts ------------------------------
class Padded(Dataset):
    """Sequences of 3..10 tokens; a collate_fn pads labels with -100."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(5)
        self.seqs = [
            torch.randint(0, 12, (int(torch.randint(3, 11, (1,), generator=gen)),), generator=gen)
            for _ in range(24)
        ]

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.seqs[i]


def pad(items: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    width = max(len(s) for s in items) - 1
    ids = torch.zeros(len(items), width, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for k, s in enumerate(items):
        ids[k, : len(s) - 1] = s[:-1]
        labels[k, : len(s) - 1] = s[1:]
    return {"input_ids": ids, "labels": labels}


class Embedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6)
        self.head = nn.Linear(6, 12)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids))


def test_accumulation_is_exact_over_dict_batches_of_variable_length(tmp_path):
    torch.manual_seed(0)
    model = Embedder()
    runs = {}
    for micro in (12, 5, 1):
        runs[micro] = edgetrain.fit(
            copy.deepcopy(model), Padded(), task="language_modeling", collate_fn=pad,
            epochs=2, batch_size=12, micro_batch_size=micro, lr=0.5, momentum=0.0,
            out=str(tmp_path / f"m{micro}"), **QUIET,
        )  # fmt: skip
    for micro in (5, 1):
        for p, q in zip(runs[12].model.parameters(), runs[micro].model.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert runs[micro].history["train_loss"].tolist() == pytest.approx(
            runs[12].history["train_loss"].tolist(), rel=1e-5
        )


# -- a user's loss, metrics, optimizer, scheduler, clipping ------------------------------------
def test_loss_criterion_metrics_optimizer_and_scheduler(tmp_path):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 3), torch.randn(32, 2))
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    result = edgetrain.fit(
        model, data, data, loss=nn.SmoothL1Loss(), metrics=["mae", MeanAbsoluteError()],
        optimizer=opt, scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, 0.5),
        epochs=3, batch_size=8, out=str(tmp_path / "r"), **QUIET,
    )  # fmt: skip
    h = result.history
    assert h["lr"].tolist() == pytest.approx([0.01, 0.005, 0.0025])  # the scheduler's rate
    assert {"val_loss", "val_mae", "val_mean_absolute_error"} <= set(h.columns)
    assert h["val_mae"].tolist() == pytest.approx(h["val_mean_absolute_error"].tolist())
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["task"]["name"] == "custom"
    assert summary["task"]["best_metric"] == "val_mae" and summary["task"]["best_mode"] == "min"
    assert summary["best"]["val_mae"] == min(h["val_mae"])
    assert "val_acc" not in h.columns and "train_acc" not in h.columns


def test_loss_callable_sees_the_whole_batch(tmp_path):
    data = TensorDataset(torch.randn(16, 3), torch.randn(16))
    seen: list[int] = []

    def loss(output: torch.Tensor, batch: Any) -> torch.Tensor:
        seen.append(len(batch))
        return ((output.squeeze(1) - batch[1]) ** 2).mean()

    edgetrain.fit(nn.Linear(3, 1), data, loss=loss, epochs=1, batch_size=8,
                  out=str(tmp_path / "r"), **QUIET)  # fmt: skip
    assert seen == [2, 2]


def test_gradient_clipping_bounds_the_step(tmp_path):
    data = TensorDataset(torch.randn(8, 4) * 100, torch.randint(0, 2, (8,)))
    model = nn.Linear(4, 2)
    before = [p.detach().clone() for p in model.parameters()]
    edgetrain.fit(model, data, epochs=1, batch_size=8, lr=1.0, momentum=0.0,
                  grad_clip_norm=0.001, out=str(tmp_path / "r"), **QUIET)  # fmt: skip
    step = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    assert float(step.norm()) <= 0.001 * 1.0001


def test_int32_labels_and_fractions_not_percent(tmp_path):
    data = TensorDataset(torch.randn(16, 3), torch.randint(0, 2, (16,), dtype=torch.int32))
    result = edgetrain.fit(nn.Linear(3, 2), data, data, epochs=1, batch_size=8,
                           out=str(tmp_path / "r"), **QUIET)  # fmt: skip
    acc = result.history["val_acc"].iloc[0]
    assert 0.0 <= acc <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"task": "regresion"}, "did you mean 'regression'"),
        ({"metrics": ["maee"]}, "unknown metric 'maee'"),
        ({"task": "regression", "task_args": {"loss": "cubic"}}, "regression loss must be one of"),
    ],
)
def test_bad_task_settings_are_one_line_errors(tmp_path, kwargs, fragment):
    data = TensorDataset(torch.randn(8, 3), torch.randn(8))
    with pytest.raises(EdgeTrainError, match=fragment):
        edgetrain.fit(nn.Linear(3, 1), data, epochs=1, batch_size=4, out=str(tmp_path / "r"),
                      **QUIET, **kwargs)  # fmt: skip


def test_a_task_object_and_loss_together_are_refused():
    with pytest.raises(EdgeTrainError, match="not both"):
        make_task(make_task("regression"), loss=nn.MSELoss())
