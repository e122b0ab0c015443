"""Sparse updates on any task: language modelling on token ids (embedding rows are neurons),
regression on tabular data, a model computing its own loss from dict batches given in a
user's DataLoader. Each epoch, only the selected rows may change."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import edgetrain
from edgetrain.config import SparseUpdateConfig
from edgetrain.sparse import describe_model
from edgetrain.train import fit
from edgetrain.train.callbacks import Callback, TrainState
from edgetrain.train.features.sparse import SparseUpdateCallback

GPT = {
    "model": "gpt",
    "model_args": {"d_model": 16, "n_layers": 1, "n_heads": 2},
    "data": "pycorpus",
    "data_args": {"max_bytes": 20_000, "seq_len": 16},
    "epochs": 2,
    "batch_size": 16,
    "max_batches_per_epoch": 3,
    "optimizer": "adam",
    "lr": 1e-2,
    "monitor": {"enabled": False},
}


class RowCheck(Callback):
    """After each epoch: rows outside ``state.sparse_selection`` are bit-identical to the
    epoch's start; records how many selected rows changed per parameter."""

    name = "row_check"

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.changed: list[dict[str, int]] = []
        self.selected: list[dict[str, int]] = []

    def on_epoch_start(self, state: TrainState) -> None:
        self.before = {n: p.detach().clone() for n, p in state.model.named_parameters()}

    def on_epoch_end(self, state: TrainState) -> None:
        rows = state.sparse_selection.rows
        changed, selected = {}, {}
        for name, p in state.model.named_parameters():
            now, then = p.detach().reshape(len(p), -1), self.before[name].reshape(len(p), -1)
            moved = (now != then).any(dim=1)
            mask = rows.get(name, torch.zeros(len(p), dtype=torch.bool)).to(moved.device)
            assert not bool(moved[~mask].any()), f"{name}: a frozen row moved"
            changed[name], selected[name] = int(moved[mask].sum()), int(mask.sum())
        self.changed.append(changed)
        self.selected.append(selected)


@pytest.mark.parametrize(
    "sparse",
    [
        {"scheme": "velocity", "budget": 0.6, "first_epoch": "full"},
        {"scheme": "static", "budget": 0.6, "static_depth": 1.0},
    ],
    ids=["velocity", "static"],
)
def test_gpt_on_pycorpus_updates_selected_embedding_and_linear_rows(tmp_path, sparse) -> None:
    check = RowCheck()
    result = edgetrain.train(
        {**GPT, "sparse_update": sparse, "out": str(tmp_path / "run")},
        callbacks=[check],
        progress=False,
    )
    assert result.summary["status"] == "completed"
    log = pd.read_csv(tmp_path / "run" / "sparse_update.csv")
    last = log[log["epoch"] == log["epoch"].max()].set_index("layer")
    assert last.loc["tok_emb", "kind"] == "embedding" and last.loc["tok_emb", "neurons"] == 256
    assert last.loc["head", "kind"] == "linear"
    limit = int(0.6 * result.summary["sparse_update"]["total_params"])
    budgeted = log[log["scheme"] != "full"]  # velocity's first epoch trains everything
    assert (budgeted["cost"] <= limit).all()
    # the last epoch selects (and moves) rows of embeddings and of linear layers
    assert {"embedding", "linear"} <= set(last[last["selected"] > 0]["kind"])
    assert (last["selected"] < last["neurons"]).any()  # a real selection, not everything
    kinds = dict(zip(last.index, last["kind"], strict=True))
    moved = {
        kinds[name.removesuffix(".weight")]
        for name, n in check.changed[-1].items()
        if n > 0 and name.removesuffix(".weight") in kinds
    }
    assert {"embedding", "linear"} <= moved


def test_diabetes_mlp_regression_with_sparse_updates(tmp_path) -> None:
    check = RowCheck()
    config = {
        "model": "mlp",
        "data": "diabetes",
        "epochs": 3,
        "batch_size": 32,
        "max_batches_per_epoch": 4,
        "lr": 0.01,
        "monitor": {"enabled": False},
        "sparse_update": {"scheme": "velocity", "budget": 0.3, "probe_size": 16},
        "out": str(tmp_path / "run"),
    }
    result = edgetrain.train(config, callbacks=[check], progress=False)
    assert result.summary["task"]["name"] == "regression"
    log = pd.read_csv(tmp_path / "run" / "sparse_update.csv")
    assert log.groupby("epoch")["scheme"].first().tolist() == ["static", "velocity", "velocity"]
    assert log["velocity_abs_mean"].notna().all()
    limit = int(0.3 * result.summary["sparse_update"]["total_params"])
    assert (log.groupby("epoch")["selected_params"].sum() <= limit).all()
    assert sum(check.changed[-1].values()) > 0
    assert all(p.requires_grad for p in result.model.parameters())  # given back at the end


# -- a model computing its own loss, dict batches from a user's DataLoader ---------------


class Tokens(Dataset):
    def __init__(self, n: int = 24) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 20, (n, 8), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i].roll(-1)}


class TinyLM(nn.Module):
    """Hugging Face style: ``model(input_ids=..., labels=...)`` returns ``.loss``, ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 12)
        self.hidden = nn.Linear(12, 12)
        self.lm_head = nn.Linear(12, 20)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.lm_head(torch.tanh(self.hidden(self.embed(input_ids))))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, 20), labels.reshape(-1))
        return SimpleNamespace(loss=loss, logits=logits)


def test_model_loss_task_with_a_users_data_loader(tmp_path) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    seen: list[int] = []

    def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        seen.append(len(items))
        return {k: torch.stack([i[k] for i in items]) for k in items[0]}

    loader = DataLoader(Tokens(), batch_size=8, collate_fn=collate)
    cfg = SparseUpdateConfig(scheme="velocity", budget=0.5, first_epoch="random", probe_size=5)
    sparse, check = SparseUpdateCallback(cfg, loader, seed=1), RowCheck()
    result = fit(
        model,
        loader,
        task="model_loss",
        epochs=2,
        lr=0.1,
        out=str(tmp_path / "run"),
        callbacks=[sparse, check],
        progress=False,
        monitor={"enabled": False},
    )
    assert result.summary["status"] == "completed"
    assert 5 in seen  # the probe was collated by the loader's own collate_fn
    assert [la.kind for la in sparse.units.layers] == ["embedding", "linear", "linear"]
    assert sparse.tracker.velocity["embed"].shape == (20,)
    assert sparse.tracker.velocity["hidden"].shape == (12,)
    log = pd.read_csv(tmp_path / "run" / "sparse_update.csv")
    assert log.groupby("epoch")["scheme"].first().tolist() == ["random", "velocity"]
    assert (log["cost"] <= int(0.5 * sparse.units.total_params)).all()


def test_describe_model_runs_the_task_forward() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    batch = {"input_ids": torch.randint(0, 20, (2, 8))}
    units = describe_model(model, batch, lambda m, b: m(**b))
    assert [(la.name, la.kind, la.neurons, la.weight_per_neuron) for la in units.layers] == [
        ("embed", "embedding", 20, 12),
        ("hidden", "linear", 12, 12),
        ("lm_head", "linear", 20, 12),
    ]
    assert units.head.name == "lm_head"
