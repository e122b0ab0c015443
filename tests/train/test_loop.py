from __future__ import annotations

import itertools
import math

import pandas as pd
import pytest
import torch
from helpers import Blobs, tiny_net

import edgetrain
from edgetrain.config import load_config
from edgetrain.tasks import ClassificationTask
from edgetrain.tasks.augment import MixedBatch, augment_batch, augment_generator
from edgetrain.train import Callback, TrainState
from edgetrain.train.callbacks import CallbackList
from edgetrain.train.loop import train_step
from edgetrain.train.optim import autocast, build_optimizer, lr_factor, make_grad_scaler
from edgetrain.train.rundir import METRICS_COLUMNS

QUIET = {"progress": False, "monitor": {"enabled": False}}


def _state(model, micro, batch=24, **cfg):
    config = load_config({"batch_size": batch, "micro_batch_size": micro, "lr": 0.1, **cfg})
    opt = build_optimizer(model.parameters(), config)
    return TrainState(
        config=config,
        model=model,
        optimizer=opt,
        device=torch.device("cpu"),
        run=None,
        train_size=96,
        batch_size=batch,
        micro_batch_size=micro,
        base_lr=config.lr,
        task=ClassificationTask(),
    )


@pytest.mark.parametrize("micro", [1, 5, 8, 24])
def test_micro_batch_accumulation_equals_whole_batch(micro):
    data = Blobs()
    x, y = data.x[:24], data.y[:24]
    whole, split = tiny_net(), tiny_net()
    s_whole, s_split = _state(whole, 24), _state(split, micro)
    scaler = make_grad_scaler("fp32", torch.device("cpu"))
    r1 = train_step(s_whole, whole, (x, y), scaler)
    r2 = train_step(s_split, split, (x, y), scaler)
    assert r1.samples == r2.samples == 24
    assert math.isclose(r1.loss_sum, r2.loss_sum, rel_tol=1e-6)
    for p, q in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class _ChangeMicro(Callback):
    def on_batch_start(self, state: TrainState) -> None:
        state.micro_batch_size = [16, 3, 7, 16][state.batch_in_epoch % 4]


def test_micro_batch_may_change_between_steps(tmp_path):
    data = Blobs()
    base = edgetrain.fit(tiny_net(), data, epochs=2, batch_size=16, out=tmp_path / "a", **QUIET)
    changed = edgetrain.fit(
        tiny_net(),
        data,
        epochs=2,
        batch_size=16,
        out=tmp_path / "b",
        callbacks=[_ChangeMicro()],
        **QUIET,
    )
    for p, q in zip(base.model.parameters(), changed.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


class _GrowBatch(Callback):
    def on_epoch_end(self, state: TrainState) -> None:
        state.batch_size *= 2


def test_logical_batch_may_change_between_epochs(tmp_path):
    res = edgetrain.fit(
        tiny_net(),
        Blobs(),
        epochs=3,
        batch_size=8,
        out=tmp_path / "r",
        callbacks=[_GrowBatch()],
        **QUIET,
    )
    assert res.history["batch_size"].tolist() == [8, 16, 32]


def test_fit_writes_the_run_directory(tmp_path):
    res = edgetrain.fit(
        tiny_net(),
        Blobs(),
        Blobs(seed=1),
        test_data=Blobs(n=30, seed=2),
        epochs=2,
        batch_size=16,
        out=tmp_path / "r",
        **QUIET,
    )
    run = res.run_dir
    for name in (
        "config.yaml",
        "env.json",
        "metrics.csv",
        "summary.json",
        "checkpoints/last.pt",
        "model.pt",
    ):
        assert (run / name).exists(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns) == list(METRICS_COLUMNS)
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["val_acc"].notna().all() and metrics["energy_j"].isna().all()
    assert list(res.history.columns) == list(METRICS_COLUMNS)
    assert res.summary["status"] == "completed"
    assert 0 <= res.summary["test"]["test_acc"] <= 1
    state = torch.load(run / "model.pt")
    assert set(state) == set(res.model.state_dict())


def test_fit_accepts_a_dataloader(tmp_path):
    loader = torch.utils.data.DataLoader(Blobs(), batch_size=12, shuffle=True)
    res = edgetrain.fit(tiny_net(), loader, epochs=1, out=tmp_path / "r", **QUIET)
    assert res.history["batch_size"].tolist() == [12]


def test_fit_learns(tmp_path):
    res = edgetrain.fit(
        tiny_net(),
        Blobs(n=300),
        Blobs(n=100, seed=0),
        epochs=8,
        batch_size=16,
        lr=0.05,
        out=tmp_path / "r",
        **QUIET,
    )
    assert res.history["train_loss"].iloc[-1] < res.history["train_loss"].iloc[0]
    assert res.history["train_acc"].iloc[-1] > 0.6


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_each_optimizer_takes_effect(name):
    model = tiny_net()
    opt = build_optimizer(
        model.parameters(), load_config({"optimizer": name, "weight_decay": 0.01})
    )
    expected = {
        "sgd": torch.optim.SGD,
        "adam": torch.optim.Adam,
        "adamw": torch.optim.AdamW,
        "rmsprop": torch.optim.RMSprop,
    }
    assert type(opt) is expected[name]
    assert opt.param_groups[0]["weight_decay"] == 0.01


def test_optimizers_give_different_training(tmp_path):
    finals = {}
    for name in ("sgd", "adam"):
        res = edgetrain.fit(
            tiny_net(),
            Blobs(),
            epochs=1,
            batch_size=16,
            lr=0.01,
            optimizer=name,
            out=tmp_path / name,
            **QUIET,
        )
        finals[name] = res.history["train_loss"].iloc[-1]
    assert finals["sgd"] != finals["adam"]


def test_lr_schedules_and_warmup():
    def f(**kw):
        cfg = load_config({"epochs": 10, **kw})
        return [lr_factor(cfg, e) for e in range(10)]

    assert f(lr_schedule="constant") == [1.0] * 10
    assert f(lr_schedule="exponential", lr_gamma=0.5)[:3] == [1.0, 0.5, 0.25]
    poly = f(lr_schedule="polynomial", lr_power=1.0)
    assert poly[0] == 1.0 and poly[5] == pytest.approx(0.5)
    cos = f(lr_schedule="cosine")
    assert (
        cos[0] == 1.0
        and cos[5] == pytest.approx(0.505)
        and all(a > b for a, b in itertools.pairwise(cos))
    )
    warm = f(lr_schedule="constant", warmup_epochs=3)
    assert warm[:4] == [0.25, 0.5, 0.75, 1.0]


def test_logged_lr_is_the_optimizers(tmp_path):
    seen = []

    class Spy(Callback):
        def on_batch_end(self, state):
            seen.append(state.optimizer.param_groups[0]["lr"])

    res = edgetrain.fit(
        tiny_net(),
        Blobs(),
        epochs=3,
        batch_size=48,
        lr=0.1,
        lr_schedule="exponential",
        lr_gamma=0.5,
        out=tmp_path / "r",
        callbacks=[Spy()],
        **QUIET,
    )
    assert res.history["lr"].tolist() == pytest.approx([0.1, 0.05, 0.025])
    assert seen == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])


@pytest.mark.parametrize("method", ["flip", "crop", "flip_crop"])
def test_geometric_augmentation_changes_inputs_deterministically(method):
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8).repeat(8, 1, 1, 1)
    y = torch.zeros(16, dtype=torch.long)
    a = augment_batch(x, y, method, augment_generator(0, 1, 2))
    b = augment_batch(x, y, method, augment_generator(0, 1, 2))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


@pytest.mark.parametrize("method", ["mixup", "cutmix"])
def test_mixing_augmentation_mixes_labels(method):
    x = torch.randn(16, 3, 8, 8)
    y = torch.arange(16)
    out = augment_batch(x, y, method, augment_generator(0, 0, 0), mix_alpha=1.0)
    assert isinstance(out, MixedBatch)
    assert 0 <= out.lam <= 1 and not torch.equal(out.y_a, out.y_b)
    assert not torch.equal(out.x, x)


def test_augmentation_changes_training(tmp_path):
    losses = {}
    for aug in ("none", "flip", "mixup"):
        res = edgetrain.fit(
            tiny_net(),
            Blobs(),
            epochs=1,
            batch_size=16,
            augmentation=aug,
            out=tmp_path / aug,
            **QUIET,
        )
        losses[aug] = res.history["train_loss"].iloc[0]
    assert len(set(losses.values())) == 3


@pytest.mark.parametrize("method", ["standardize", "minmax", "robust"])
def test_preprocessing_fitted_on_training_data(tmp_path, method):
    from edgetrain.train.data import SubsetView, fit_normalizer

    data = Blobs(n=200)
    data.x = data.x * 3 + 5
    idx = torch.arange(200)
    view = SubsetView(data, idx, fit_normalizer(data, idx, method))
    x = torch.stack([view[i][0] for i in range(200)])
    per_channel = x.transpose(0, 1).reshape(2, -1)
    if method == "standardize":
        torch.testing.assert_close(per_channel.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
        torch.testing.assert_close(per_channel.std(1), torch.ones(2), atol=1e-3, rtol=0)
    elif method == "minmax":
        assert per_channel.min() == pytest.approx(
            0, abs=1e-6
        ) and per_channel.max() == pytest.approx(1, abs=1e-6)
    else:
        torch.testing.assert_close(per_channel.median(1).values, torch.zeros(2), atol=2e-2, rtol=0)


def test_precision_fp64_trains_in_double(tmp_path):
    res = edgetrain.fit(
        tiny_net(), Blobs(), epochs=1, batch_size=16, precision="fp64", out=tmp_path / "r", **QUIET
    )
    assert all(p.dtype == torch.float64 for p in res.model.parameters())


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)],
)
def test_autocast_precision_takes_effect(precision, dtype):
    lin = torch.nn.Linear(4, 4)
    with autocast(precision, torch.device("cpu")):
        out = lin(torch.randn(2, 4))
    assert out.dtype == dtype


def test_bf16_training_differs_from_fp32(tmp_path):
    a = edgetrain.fit(
        tiny_net(), Blobs(), epochs=1, batch_size=16, precision="fp32", out=tmp_path / "a", **QUIET
    )
    b = edgetrain.fit(
        tiny_net(), Blobs(), epochs=1, batch_size=16, precision="bf16", out=tmp_path / "b", **QUIET
    )
    assert a.history["train_loss"].iloc[0] != b.history["train_loss"].iloc[0]
    assert abs(a.history["train_loss"].iloc[0] - b.history["train_loss"].iloc[0]) < 0.1


@pytest.mark.slow
def test_compile_takes_effect(tmp_path):
    seen = []

    class Spy(Callback):
        def on_fit_start(self, state):
            seen.append(state)

    res = edgetrain.fit(
        tiny_net(),
        Blobs(),
        epochs=1,
        batch_size=16,
        compile=True,
        out=tmp_path / "r",
        callbacks=[Spy()],
        **QUIET,
    )
    assert res.summary["status"] == "completed"


def test_callback_hooks_called_in_order(tmp_path):
    calls = []

    class Rec(Callback):
        def on_fit_start(self, s):
            calls.append("fit_start")

        def on_epoch_start(self, s):
            calls.append("epoch_start")

        def on_batch_start(self, s):
            calls.append("batch_start")

        def on_batch_end(self, s):
            calls.append("batch_end")

        def on_epoch_end(self, s):
            calls.append("epoch_end")

        def on_fit_end(self, s):
            calls.append("fit_end")

    edgetrain.fit(
        tiny_net(),
        Blobs(n=32),
        epochs=1,
        batch_size=16,
        out=tmp_path / "r",
        callbacks=[Rec()],
        **QUIET,
    )
    assert calls == [
        "fit_start",
        "epoch_start",
        "batch_start",
        "batch_end",
        "batch_start",
        "batch_end",
        "epoch_end",
        "fit_end",
    ]
    assert isinstance(CallbackList([Rec()]).state_dict(), dict)


def test_failure_leaves_failed_summary(tmp_path):
    class Boom(Callback):
        def on_batch_end(self, s):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        edgetrain.fit(
            tiny_net(),
            Blobs(),
            epochs=1,
            batch_size=16,
            out=tmp_path / "r",
            callbacks=[Boom()],
            **QUIET,
        )
    import json

    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]


def test_out_of_memory_retries_the_same_batch_after_shrinking(tmp_path):
    """An OOM inside a step is retried with a smaller micro-batch; the update is unchanged."""

    class FlakyNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_net()
            self.fail_above = 8

        def forward(self, x):
            if x.shape[0] > self.fail_above:
                raise torch.OutOfMemoryError("simulated: micro-batch too large")
            return self.net(x)

    class Shrink(Callback):
        def __init__(self):
            self.ooms = 0

        def on_oom(self, state, error):
            self.ooms += 1
            state.micro_batch_size = max(1, state.micro_batch_size // 2)
            return True

    shrink = Shrink()
    flaky = FlakyNet()
    res = edgetrain.fit(
        flaky, Blobs(), epochs=1, batch_size=32, out=tmp_path / "a", callbacks=[shrink], **QUIET
    )
    plain = edgetrain.fit(tiny_net(), Blobs(), epochs=1, batch_size=32, out=tmp_path / "b", **QUIET)
    assert shrink.ooms == 2  # 32 -> 16 -> 8
    assert res.history["micro_batch_size"].tolist() == [8]
    assert res.history["accum_steps"].tolist() == [4]
    for p, q in zip(flaky.net.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_out_of_memory_without_a_handler_propagates(tmp_path):
    class Always(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise torch.OutOfMemoryError("simulated")

    with pytest.raises(torch.OutOfMemoryError):
        edgetrain.fit(Always(), Blobs(), epochs=1, batch_size=32, out=tmp_path / "a", **QUIET)


def test_a_callers_subclass_of_a_default_callback_runs_instead_of_it(tmp_path):
    from edgetrain.config import MonitorConfig
    from edgetrain.train.features.monitor import MonitorCallback

    class CountingMonitor(MonitorCallback):
        """A monitor that counts its epochs (a unique callback: only one may be active)."""

        def __init__(self) -> None:
            super().__init__(MonitorConfig(interval_s=0.05))
            self.epochs = 0

        def on_epoch_end(self, state: TrainState) -> None:
            super().on_epoch_end(state)
            self.epochs += 1

    mine = CountingMonitor()
    # the monitor is on by default: before, the default came first and the caller's
    # subclass was dropped as a second monitor
    res = edgetrain.fit(
        tiny_net(), Blobs(), epochs=2, out=tmp_path / "r", progress=False, callbacks=[mine]
    )
    assert mine.epochs == 2
    assert res.history.energy_source.notna().all()
