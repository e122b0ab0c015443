"""The memory budget on every task: regression, language modelling, dict batches with the
model's own loss (deterministic meter, tiny models, a few batches)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from conftest import QUIET, BatchMeter
from edgetrain.adapt import fit_memory_model, probe_batch, probe_step
from edgetrain.errors import EdgeTrainError
from edgetrain.tasks import LanguageModelingTask, ModelLossTask, RegressionTask
from edgetrain.train import fit, train
from edgetrain.train.features import budget as budget_feature

MiB = 2**20
# the micro-batch controller alone (the planner has its own tests: test_planner*.py)
BUDGET = {"budget": {"memory": "30MiB", "levers": "micro_batch"}, "adapt": {"policy": "budget"}}
NO_MONITOR = {"monitor": {"enabled": False}}
LM = {
    "data": "pycorpus",
    "data_args": {"max_bytes": 100_000, "seq_len": 32},
    "model": "gpt",
    "model_args": {"d_model": 32, "n_layers": 1, "n_heads": 2},
}


@pytest.fixture
def fake_meter(monkeypatch):
    """Every model the zoo builds gets a BatchMeter (10 MiB + 1 MiB per sample), which the
    run's own adaptive callback uses: the default wiring of ``train``, deterministic."""
    import edgetrain.zoo

    meters: list[BatchMeter] = []
    real = edgetrain.zoo.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        meters.append(BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB))
        return model

    monkeypatch.setattr(edgetrain.zoo, "build_model", build)
    monkeypatch.setattr(budget_feature, "make_meter", lambda device: meters[-1])
    return meters


def _check_budget_run(result, batch_size: int = 32) -> pd.DataFrame:
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    first = decisions.iloc[0]
    assert (first.epoch, first.parameter, first.old, first.new) == (
        0,
        "micro_batch_size",
        batch_size,
        16,
    )
    assert "probed micro-batches 2, 8, 16;" in first.reason
    assert result.history.micro_batch_size.tolist() == [16] * len(result.history)
    assert result.history.accum_steps.tolist() == [batch_size // 16] * len(result.history)
    adapt = result.summary["adapt"]
    assert adapt["within_budget"] is True and adapt["budget_violations"] == 0
    assert adapt["measured_peak_bytes"] <= adapt["budget_bytes"] == 30 * MiB
    return decisions


def test_budget_on_a_regression_run(tmp_path, fake_meter):
    result = train(
        {"data": "diabetes", "model": "mlp", "epochs": 2, "batch_size": 32, "lr": 0.01}
        | BUDGET
        | NO_MONITOR,
        overrides=[f"out={tmp_path / 'run'}"],
        progress=False,
    )
    assert result.summary["task"]["name"] == "regression"
    _check_budget_run(result)
    assert result.history.val_rmse.notna().all()


def test_budget_on_a_language_model_run(tmp_path, fake_meter):
    config = {"epochs": 1, "batch_size": 32, "lr": 0.01, "max_batches_per_epoch": 3}
    result = train(
        config | LM | BUDGET | NO_MONITOR, overrides=[f"out={tmp_path / 'run'}"], progress=False
    )
    assert result.summary["task"]["name"] == "language_modeling"
    _check_budget_run(result)
    assert result.history.val_loss.notna().all()


# -- dict batches, the model's own loss --------------------------------------------------------


@dataclass
class Output:
    loss: torch.Tensor
    logits: torch.Tensor


class TinyLM(nn.Module):
    """``forward(input_ids, labels)`` returns an output with ``.loss``, as Hugging Face
    models do."""

    def __init__(self, vocab: int = 16, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> Output:
        logits = self.head(torch.relu(self.emb(input_ids)))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return Output(loss, logits)


class Sentences(Dataset):
    """A list of dicts of token lists (what a tokenizer gives), collated by ``collate``."""

    def __init__(self, n: int = 64, length: int = 6) -> None:
        g = torch.Generator().manual_seed(1)
        self.items = [
            {"input_ids": torch.randint(0, 16, (length,), generator=g).tolist()} for _ in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


def collate(samples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([s["input_ids"] for s in samples])
    return {"input_ids": ids, "labels": ids.roll(-1, dims=1)}


@pytest.mark.parametrize("as_loader", [False, True], ids=["dataset", "dataloader"])
def test_budget_on_dict_batches_with_the_models_own_loss(tmp_path, as_loader):
    data, model = Sentences(), TinyLM()
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    train_data, val_data = data, Sentences(n=16)
    if as_loader:  # used as given: the probe takes its data set and collate_fn
        train_data = DataLoader(data, batch_size=32, collate_fn=collate)
        val_data = DataLoader(val_data, batch_size=16, collate_fn=collate)
    cb = budget_feature.AdaptiveCallback(probe_data=train_data, meter=meter)
    result = fit(
        model,
        train_data,
        val_data,
        collate_fn=None if as_loader else collate,
        callbacks=[cb],
        out=tmp_path / "run",
        epochs=2,
        batch_size=32,
        lr=0.1,
        **BUDGET,
        **QUIET,
    )
    assert result.summary["task"]["name"] == "model_loss"
    decisions = _check_budget_run(result)
    assert len(decisions) >= 1
    assert result.history.train_loss.notna().all()


# -- the probe on any batch ----------------------------------------------------------------


def test_probe_batch_collates_with_the_given_function_and_repeats():
    batch = probe_batch(Sentences(n=3), 5, collate)
    assert batch["input_ids"].shape == (5, 6) and batch["input_ids"].dtype == torch.int64
    assert torch.equal(batch["input_ids"][3], batch["input_ids"][0])  # repeated


def test_probe_batch_uses_a_data_loaders_data_set_and_collate_fn():
    loader = DataLoader(Sentences(n=40), batch_size=8, shuffle=True, collate_fn=collate)
    batch = probe_batch(loader, 4, collate_fn=lambda s: 1 / 0)  # the loader's own is used
    expected = collate([loader.dataset[i] for i in range(4)])
    assert torch.equal(batch["input_ids"], expected["input_ids"])


def test_probe_batch_keeps_token_ids_integer_and_rejects_empty_data():
    ids = [torch.arange(8) for _ in range(3)]
    assert probe_batch(ids, 2).dtype == torch.int64
    with pytest.raises(EdgeTrainError, match="empty"):
        probe_batch([], 2)


def test_probe_step_on_token_ids_uses_the_loops_loss_and_changes_nothing():
    from edgetrain.zoo import build_model

    torch.manual_seed(0)
    model = build_model("gpt", num_classes=32, in_channels=1, input_size=(1, 9), d_model=16)
    task = LanguageModelingTask()
    batch = torch.randint(0, 32, (6, 9))
    params = [p.detach().clone() for p in model.parameters()]
    probe = probe_step(model, task, batch, meter=None, micro_batch_size=4, evaluate=True)
    assert probe.micro_batch_size == 4 and probe.saved_bytes > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))


def test_fit_memory_model_on_regression_and_model_loss_batches():
    reg = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.Adam(reg.parameters())
    meter = BatchMeter(reg, static_bytes=10 * MiB, per_sample_bytes=MiB)
    batch = (torch.randn(32, 10), torch.randn(32))
    fit_ = fit_memory_model(reg, opt, RegressionTask(), batch, meter=meter, limit_bytes=27 * MiB)
    assert [p.micro_batch_size for p in fit_.probes] == [2, 8, 16]  # 16 of 17 fitting, evened
    assert fit_.static.optimizer_state_bytes > 0  # Adam's state, from a real step

    lm = TinyLM()
    meter = BatchMeter(lm, static_bytes=10 * MiB, per_sample_bytes=MiB)
    batch = collate(Sentences(n=32).items)
    fit_ = fit_memory_model(lm, None, ModelLossTask(), batch, meter=meter, limit_bytes=27 * MiB)
    assert fit_.verified >= 16 and fit_.memory.predict_bytes(fit_.verified) <= 27 * MiB


def test_micro_batch_one_is_measured_on_regression_and_dict_batches():
    # 2 samples 'measure' 12 MiB, over the 11.5 MiB limit: a whole logical batch at 1 is
    # measured (11 MiB) for a regression model and a dict-batch model with its own loss
    reg = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))
    meter = BatchMeter(reg, static_bytes=10 * MiB, per_sample_bytes=MiB)
    batch = (torch.randn(32, 10), torch.randn(32))
    opt = torch.optim.Adam(reg.parameters())
    fit_ = fit_memory_model(reg, opt, RegressionTask(), batch, meter=meter, limit_bytes=11.5 * MiB)
    assert fit_.single is not None and fit_.verified == 1
    assert fit_.memory.predict_bytes(1) == pytest.approx(11 * MiB, rel=0.01)

    lm = TinyLM()
    meter = BatchMeter(lm, static_bytes=10 * MiB, per_sample_bytes=MiB)
    batch = collate(Sentences(n=32).items)
    fit_ = fit_memory_model(lm, None, ModelLossTask(), batch, meter=meter, limit_bytes=11.5 * MiB)
    assert fit_.single is not None and fit_.verified == 1
    assert fit_.memory.predict_bytes(1) == pytest.approx(11 * MiB, rel=0.01)


def _moment_dtypes(optimizer: torch.optim.Optimizer) -> set[torch.dtype]:
    return {v.dtype for s in optimizer.state.values() for v in s.values() if v.numel() > 1}


def test_bf16_optimizer_state_on_regression_and_dict_batches_under_a_budget(tmp_path):
    """optimizer_state: bf16 is a task-independent lever: a regression MLP and a
    dict-batch model with its own loss train with it (and a budget), state in bfloat16."""
    from edgetrain.train import Callback

    class Dtypes(Callback):
        def __init__(self) -> None:
            self.seen: set[torch.dtype] = set()

        def on_batch_end(self, state):
            self.seen |= _moment_dtypes(state.optimizer)

    reg = Dtypes()
    result = train(
        {"data": "diabetes", "model": "mlp", "epochs": 1, "batch_size": 32, "lr": 0.01}
        | {"optimizer": "adam", "optimizer_state": "bf16"}
        | NO_MONITOR,
        overrides=[f"out={tmp_path / 'reg'}"],
        callbacks=[reg],
        progress=False,
    )
    assert result.summary["task"]["name"] == "regression"
    assert reg.seen == {torch.bfloat16}
    assert result.summary["optimizer_state"]["dtype"] == "bf16"

    lm = Dtypes()
    model = TinyLM()
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    cb = budget_feature.AdaptiveCallback(probe_data=Sentences(), meter=meter)
    result = fit(
        model,
        Sentences(),
        Sentences(n=16),
        collate_fn=collate,
        callbacks=[cb, lm],
        out=tmp_path / "lm",
        epochs=1,
        batch_size=32,
        lr=0.1,
        optimizer_state="bf16",
        **BUDGET,
        **QUIET,
    )
    assert result.summary["task"]["name"] == "model_loss"
    assert lm.seen == {torch.bfloat16}
    assert result.summary["adapt"]["within_budget"] is True
