"""The adaptive controller inside the training loop (tiny models, deterministic meter)."""

from __future__ import annotations

import logging
import weakref

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import QUIET, BatchMeter, Blobs, OomAbove, tiny_net
from edgetrain.config import load_config
from edgetrain.errors import EdgeTrainError
from edgetrain.train import Callback, TrainState, fit
from edgetrain.train.features.budget import (
    AdaptiveCallback,
    PruneCallback,
    _in_optimizer_step,
    adapt_callbacks,
)

MiB = 2**20
# the micro-batch controller alone (the planner has its own tests: test_planner*.py)
BUDGET = {"budget": {"memory": "30MiB", "levers": "micro_batch"}, "adapt": {"policy": "budget"}}


def _fit(model, data, out, callbacks, **config):
    settings = {"epochs": 2, "batch_size": 32, "lr": 0.1, **QUIET, **config}
    return fit(model, data, Blobs(n=48, seed=1), out=out, callbacks=callbacks, **settings)


def _budget_run(tmp_path, name="run", epochs=2, resume=False, extra=()):
    data = Blobs()
    model = tiny_net()
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    cb = AdaptiveCallback(probe_data=data, meter=meter)
    result = _fit(
        model, data, tmp_path / name, [cb, *extra], epochs=epochs, resume=resume, **BUDGET
    )
    return result, cb, meter


def test_budget_fits_the_micro_batch_and_keeps_the_effective_batch(tmp_path):
    result, _, _ = _budget_run(tmp_path)
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    first = decisions.iloc[0]
    assert (first.epoch, first.parameter, first.old, first.new) == (0, "micro_batch_size", 32, 16)
    assert "probed micro-batches 2, 8, 16;" in first.reason
    history = result.history
    assert history.micro_batch_size.tolist() == [16, 16]
    assert history.accum_steps.tolist() == [2, 2]
    assert history.batch_size.tolist() == [32, 32]
    adapt = result.summary["adapt"]
    assert adapt["within_budget"] is True
    assert adapt["measured_peak_bytes"] == 26 * MiB <= adapt["budget_bytes"] == 30 * MiB
    assert adapt["budget_violations"] == 0
    memory = pd.read_csv(result.run_dir / "adapt.csv")
    assert memory.peak_bytes.max() <= 30 * MiB
    assert memory.predicted_peak_bytes.iloc[0] >= memory.peak_bytes.iloc[0]


class AccumulationMeter(BatchMeter):
    """Measures ``extra`` bytes more when micro-batches of ``size`` accumulate (more than
    one training forward since the reset): what single passes cannot show."""

    def __init__(self, model, size: int, extra: int) -> None:
        super().__init__(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
        self.size, self.extra, self.forwards = size, extra, 0

    def _seen(self, module, args, kwargs) -> None:
        super()._seen(module, args, kwargs)
        self.forwards += torch.is_grad_enabled()

    def reset_peak(self) -> None:
        super().reset_peak()
        self.forwards = 0

    def peak_bytes(self) -> int:
        bump = self.extra if self.largest == self.size and self.forwards > 1 else 0
        return super().peak_bytes() + bump


def test_the_chosen_micro_batch_is_measured_as_a_whole_logical_batch_and_lowered(tmp_path):
    data, model = Blobs(), tiny_net()
    # probes double to 16; the limit (90% of 38 MiB) allows 24 = 48 / 2 by the single
    # passes, but 24 x 2 measures 40 MiB
    meter = AccumulationMeter(model, size=24, extra=6 * MiB)
    cb = AdaptiveCallback(probe_data=data, meter=meter)
    budget = {"budget": {"memory": "38MiB", "levers": "micro_batch"}, "adapt": {"policy": "budget"}}
    result = _fit(model, data, tmp_path / "run", [cb], epochs=1, batch_size=48, **budget)
    first = pd.read_csv(result.run_dir / "decisions.csv").iloc[0]
    assert "a logical batch at 24 measured 40.0 MiB" in first.reason
    assert first.new < 24
    assert f"a logical batch at {int(first.new)} measured" in first.reason
    assert result.history.micro_batch_size.tolist() == [first.new]
    assert result.summary["adapt"]["budget_violations"] == 0


def _checked_run(tmp_path, monkeypatch, measure):
    """Batch 48 under 38 MiB (limit 34.2 MiB): the model chooses 24, which ``measure``
    (standing in for the whole-batch check) measures; returns the run and the decision."""
    from edgetrain.train.features import budget as adapt_callback

    monkeypatch.setattr(adapt_callback, "measure_logical_batch", measure)
    data, model = Blobs(), tiny_net()
    cb = AdaptiveCallback(probe_data=data, meter=BatchMeter(model, 10 * MiB, MiB))
    budget = {"budget": {"memory": "38MiB", "levers": "micro_batch"}, "adapt": {"policy": "budget"}}
    result = _fit(model, data, tmp_path / "run", [cb], epochs=1, batch_size=48, **budget)
    return result, pd.read_csv(result.run_dir / "decisions.csv").iloc[0]


def test_a_logical_batch_that_runs_out_of_memory_when_checked_lowers_the_choice(
    tmp_path, monkeypatch
):
    from edgetrain.train.features import budget as adapt_callback

    real = adapt_callback.measure_logical_batch
    tried: list[int] = []

    def measure(model, optimizer, task, batch, micro, **kw):
        tried.append(micro)
        if micro == 24:
            raise torch.OutOfMemoryError("simulated")
        return real(model, optimizer, task, batch, micro, **kw)

    result, first = _checked_run(tmp_path, monkeypatch, measure)
    assert tried[0] == 24 and len(tried) == 2 and tried[1] < 24
    assert "a logical batch at 24 ran out of memory" in first.reason
    assert result.history.micro_batch_size.tolist() == [tried[1]]


def test_a_smaller_micro_batch_that_measures_no_less_keeps_the_larger(tmp_path, monkeypatch):
    from edgetrain.adapt import Probe

    tried: list[int] = []

    def measure(model, optimizer, task, batch, micro, **kw):
        tried.append(micro)  # over the limit, within the budget, at any size
        return Probe(micro, 0, 35 * MiB)

    result, first = _checked_run(tmp_path, monkeypatch, measure)
    assert tried[0] == 24 and len(tried) == 2 and tried[1] < 24
    assert f"a logical batch at {tried[1]} measured 35.0 MiB, no less" in first.reason
    assert result.history.micro_batch_size.tolist() == [24]


def test_a_budget_below_the_static_bytes_is_an_error_naming_both(tmp_path):
    data = Blobs()
    with pytest.raises(EdgeTrainError, match=r"budget.memory 1.0 KiB \(1024 bytes\).*static"):
        _fit(
            tiny_net(),
            data,
            tmp_path / "r",
            [AdaptiveCallback(probe_data=data)],
            budget={"memory": "1KiB"},
            adapt={"policy": "budget"},
        )


def test_a_budget_too_small_for_one_sample_says_what_is_needed(tmp_path):
    data = Blobs()
    model = tiny_net()
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    with pytest.raises(EdgeTrainError, match=r"measured for micro-batch 1.*raise it to"):
        _fit(
            model,
            data,
            tmp_path / "r",
            [AdaptiveCallback(probe_data=data, meter=meter)],
            budget={"memory": "10MiB", "levers": "micro_batch"},
            adapt={"policy": "budget"},
        )


def test_simulated_oom_retries_the_same_logical_batch(tmp_path):
    data = Blobs()
    adaptive = OomAbove(tiny_net(batch_norm=True), limit=8)
    result = _fit(adaptive, data, tmp_path / "a", [AdaptiveCallback()], adapt={"policy": "budget"})
    fixed = _fit(
        OomAbove(tiny_net(batch_norm=True), limit=10**9),
        data,
        tmp_path / "b",
        [],
        micro_batch_size=8,
    )
    assert adaptive.raised == 2  # 32 -> 16 -> 8, once
    assert result.history.micro_batch_size.tolist() == [8, 8]
    assert result.history.accum_steps.tolist() == [4, 4]
    # no sample lost or counted twice, and batch-norm statistics restored after each OOM
    for a, b in zip(
        result.model.state_dict().values(), fixed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)
    assert result.history.train_loss.tolist() == pytest.approx(fixed.history.train_loss.tolist())
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    oom = decisions[decisions.reason.str.contains("out of memory")]
    assert oom[["old", "new"]].values.tolist() == [[32, 16], [16, 8]]
    assert result.summary["adapt"]["oom_retries"] == 2


def test_oom_without_the_controller_is_raised(tmp_path):
    with pytest.raises(torch.OutOfMemoryError):
        _fit(OomAbove(tiny_net(), limit=8), Blobs(), tmp_path / "r", [])


def test_oom_inside_the_optimizer_step_is_not_retried():
    class Boom(torch.optim.SGD):
        def step(self, closure=None):
            raise torch.OutOfMemoryError("simulated")

    opt = Boom(tiny_net().parameters(), lr=0.1)
    with pytest.raises(torch.OutOfMemoryError) as info:
        opt.step()
    assert _in_optimizer_step(info.value)
    try:
        raise torch.OutOfMemoryError("in a forward")
    except torch.OutOfMemoryError as exc:
        assert not _in_optimizer_step(exc)


class _Pressure(Callback):
    """Doubles the meter's bytes per sample from the second epoch on (memory pressure)."""

    def __init__(self) -> None:
        self.meter: BatchMeter | None = None

    def on_epoch_start(self, state: TrainState) -> None:
        if state.epoch == 1 and self.meter is not None:
            self.meter.per_sample_bytes *= 2


def test_an_overrun_shrinks_mid_epoch_and_training_is_unchanged(tmp_path):
    data = Blobs()
    pressure = _Pressure()
    model = tiny_net()
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    pressure.meter = meter
    cb = AdaptiveCallback(probe_data=data, meter=meter)
    result = _fit(model, data, tmp_path / "a", [cb, pressure], epochs=3, **BUDGET)
    plain = _fit(tiny_net(), data, tmp_path / "b", [], epochs=3)
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    overrun = decisions[decisions.reason.str.contains("passed the budget")]
    assert overrun[["epoch", "old", "new"]].values.tolist() == [[2, 16, 8]]
    assert result.history.micro_batch_size.tolist() == [16, 8, 8]
    assert result.summary["adapt"]["budget_violations"] == 1
    # accumulation keeps the update the whole logical batch's whatever the micro-batch
    for p, q in zip(result.model.parameters(), plain.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class _LrProbe(Callback):
    def __init__(self) -> None:
        self.seen: dict[int, set[float]] = {}

    def on_batch_end(self, state: TrainState) -> None:
        lr = state.optimizer.param_groups[0]["lr"]
        self.seen.setdefault(state.epoch + 1, set()).add(lr)


def test_edgetrain_policy_lr_reaches_the_optimizer_and_priorities_follow_weights(tmp_path):
    data = Blobs()
    probe = _LrProbe()
    adapt = {
        "policy": "edgetrain",
        "min_delta": 1.0,  # every epoch counts as stagnant
        "weights": {"batch_size": 0.0, "learning_rate": 0.7},
    }
    result = _fit(
        tiny_net(),
        data,
        tmp_path / "r",
        [AdaptiveCallback(probe_data=data, has_validation=True), probe],
        epochs=4,
        adapt=adapt,
    )
    logged = result.history.lr.tolist()
    assert logged == pytest.approx([0.1, 0.1, 0.05, 0.025])  # lowered, never raised
    assert [probe.seen[e] for e in (1, 2, 3, 4)] == [{lr} for lr in logged]
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    later = decisions[decisions.epoch >= 2]
    assert (later.chosen == "learning_rate").all()
    assert later.priority_learning_rate.tolist() == pytest.approx(
        (0.7 * later.accuracy_score).tolist()
    )
    assert (later.priority_batch_size == 0).all()
    assert later.parameter.tolist()[:2] == ["lr", "lr"]


def test_edgetrain_policy_needs_validation(tmp_path):
    data = Blobs()
    with pytest.raises(EdgeTrainError, match="validation"):
        fit(
            tiny_net(),
            data,
            out=tmp_path / "r",
            callbacks=[AdaptiveCallback(probe_data=data, has_validation=False)],
            adapt={"policy": "edgetrain"},
            **QUIET,
        )


def test_resume_restores_the_controller_state(tmp_path):
    first, cb1, _ = _budget_run(tmp_path, epochs=2)
    saved = torch.load(first.run_dir / "checkpoints/last.pt", weights_only=True)["callbacks"]
    resumed, cb2, _ = _budget_run(tmp_path, epochs=3, resume=True)
    assert cb2.fitted and cb2.memory == cb1.memory and cb2.probes == cb1.probes
    assert {k: v for k, v in cb2.state_dict().items() if k != "points"} == {
        k: v for k, v in saved["adapt"].items() if k != "points"
    }
    decisions = pd.read_csv(resumed.run_dir / "decisions.csv")
    assert (decisions.epoch == 0).sum() == 1  # no second probing
    assert resumed.history.micro_batch_size.tolist() == [16, 16, 16]
    assert (pd.read_csv(resumed.run_dir / "adapt.csv").epoch.tolist()) == [1, 2, 3]


def test_evaluation_is_chunked_exactly_under_a_budget():
    model = tiny_net(batch_norm=True).eval()
    cb = AdaptiveCallback()
    cb._eval_chunk = 5
    forward = cb.wrap_forward(model)
    x = torch.randn(23, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(forward(x), model(x))


def test_adapt_callbacks_wiring(caplog):
    cfg = load_config({"adapt": {"policy": "budget"}, "prune": {"ratio": 0.5}})
    callbacks = adapt_callbacks(cfg, Blobs(), Blobs(n=10))
    assert [type(c) for c in callbacks] == [PruneCallback, AdaptiveCallback]
    assert callbacks[1].has_validation is True
    assert adapt_callbacks(load_config({})) == []
    with caplog.at_level(logging.WARNING):
        assert adapt_callbacks(load_config({"budget": {"memory": "1GiB"}})) == []
    assert "not enforced" in caplog.text


def test_only_one_controller_acts(tmp_path):
    data = Blobs()
    model = tiny_net()
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    first = AdaptiveCallback(probe_data=data, meter=meter)
    second = AdaptiveCallback(probe_data=data, meter=meter)
    result = _fit(model, data, tmp_path / "r", [first, second], epochs=1, **BUDGET)
    assert first.active and not second.active  # the second is dropped from the run
    saved = torch.load(result.run_dir / "checkpoints/last.pt", weights_only=True)
    assert saved["callbacks"]["adapt"]["fitted"] is True


@pytest.mark.slow
def test_done_when_vgg11_digits_under_a_real_rss_budget(tmp_path):
    """The issue's acceptance run, with the real CPU meter (process RSS)."""
    from edgetrain.config import load_config as load
    from edgetrain.train import prepare_data, train

    overrides = [
        "model=vgg11",
        "data=digits",
        "batch_size=256",
        "budget.memory=64MiB",
        "adapt.policy=budget",
        "epochs=3",
        f"out={tmp_path / 'run'}",
    ]
    cfg = load(overrides=overrides)
    data, _ = prepare_data(cfg)
    result = train(cfg, callbacks=adapt_callbacks(cfg, data.train, data.val), progress=False)
    first = pd.read_csv(result.run_dir / "decisions.csv").iloc[0]
    assert first.parameter == "micro_batch_size" and first.new < first.old == 256
    assert (result.history.batch_size == 256).all()
    assert (result.history.accum_steps > 1).all()
    adapt = result.summary["adapt"]
    assert adapt["memory_source"] == "cpu:rss-above-baseline"
    assert adapt["measured_peak_bytes"] <= adapt["budget_bytes"]


class _Floor(Callback):
    """From the second epoch on, the meter never reads below ``floor`` bytes, whatever the
    micro-batch: memory over the budget that shrinking cannot free."""

    def __init__(self, meter: BatchMeter, floor: int) -> None:
        self.meter, self.floor = meter, floor
        self._peak = meter.peak_bytes

    def on_epoch_start(self, state: TrainState) -> None:
        if state.epoch == 1:
            peak = self._peak
            self.meter.peak_bytes = lambda: max(self.floor, peak())  # type: ignore[method-assign]


def test_a_shrink_that_does_not_lower_the_peak_is_not_repeated(tmp_path, caplog):
    data = Blobs()
    model = tiny_net()
    meter = BatchMeter(model, static_bytes=10 * MiB, per_sample_bytes=MiB)
    cb = AdaptiveCallback(probe_data=data, meter=meter)
    with caplog.at_level(logging.WARNING, logger="edgetrain.train.features.budget"):
        result = _fit(
            model, data, tmp_path / "a", [cb, _Floor(meter, 31 * MiB)], epochs=4, **BUDGET
        )
    decisions = pd.read_csv(result.run_dir / "decisions.csv")
    shrinks = decisions[decisions.parameter == "micro_batch_size"]
    # one shrink (16 -> 12, the model's choice) that freed nothing, then 12 is kept
    assert shrinks[["old", "new"]].values.tolist() == [[32, 16], [16, 12]]
    assert result.history.micro_batch_size.tolist() == [16, 12, 12, 12]
    kept = decisions[decisions.reason.str.contains("did not lower the peak", na=False)]
    assert len(kept) == 1 and "raise budget.memory to at least 34.4 MiB" in kept.reason.iloc[0]
    adapt = result.summary["adapt"]
    assert adapt["budget_violations"] > 3 and adapt["within_budget"] is False
    # one warning per epoch at most, not one per step
    warnings = [r for r in caplog.records if "not the micro-batch's" in r.getMessage()]
    assert 1 <= len(warnings) <= 3


class _KeepsActivations(torch.nn.Module):
    """Runs ``inner``, keeps a weak reference to its output, then runs out of memory when a
    training forward gets more than 8 samples."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_net()
        self.outputs: list[weakref.ref] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.outputs.append(weakref.ref(out))
        if torch.is_grad_enabled() and x.shape[0] > 8:
            raise torch.OutOfMemoryError("simulated")
        return out


class _SeesMemory(Callback):
    """Records, at each out-of-memory error, whether the failed pass's output is still alive."""

    def __init__(self, model: _KeepsActivations) -> None:
        self.model, self.alive = model, []

    def on_oom(self, state: TrainState, error: BaseException) -> bool:
        self.alive.append(self.model.outputs[-1]() is not None)
        return False  # the controller, after this one, decides


def test_the_failed_pass_is_freed_before_callbacks_see_the_oom(tmp_path):
    model = _KeepsActivations()
    sees = _SeesMemory(model)
    _fit(model, Blobs(), tmp_path / "a", [sees, AdaptiveCallback()], adapt={"policy": "budget"})
    assert sees.alive == [False, False]  # 32 -> 16 -> 8: both failed passes already freed


class _BoomInStep(Callback):
    """Makes the optimizer's step run out of memory (after the forward and backward passes)."""

    def on_fit_start(self, state: TrainState) -> None:
        def step(closure=None):
            raise torch.OutOfMemoryError("simulated, in the step")

        state.optimizer.step = step  # type: ignore[method-assign]


def test_oom_in_the_optimizer_step_of_a_run_is_raised_not_retried(tmp_path):
    with pytest.raises(torch.OutOfMemoryError, match="in the step"):
        _fit(
            tiny_net(),
            Blobs(),
            tmp_path / "a",
            [_BoomInStep(), AdaptiveCallback()],
            adapt={"policy": "budget"},
        )
    decisions = pd.read_csv(tmp_path / "a" / "decisions.csv")
    assert decisions.reason.str.contains("inside the optimizer step").any()


class OomOnCall(nn.Module):
    """Wraps a model; its ``at``-th training forward raises torch.OutOfMemoryError."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.at:
                raise torch.OutOfMemoryError("simulated")
        return self.inner(x)


def test_oom_after_gradients_were_folded_into_momentum_is_not_retried(tmp_path):
    """Folded momentum cannot be taken back (edgetrain.memory.fold): an out-of-memory
    error in the second micro-batch is inside the step, not retried with the momentum
    folded twice."""
    model = OomOnCall(tiny_net(), at=2)
    settings = {"optimizer": "sgd", "momentum": 0.9, "optimizer_in_backward": True}
    with pytest.raises(torch.OutOfMemoryError):
        _fit(
            model,
            Blobs(),
            tmp_path / "r",
            [AdaptiveCallback()],
            adapt={"policy": "budget"},
            micro_batch_size=8,
            **settings,
        )
    decisions = pd.read_csv(tmp_path / "r" / "decisions.csv")
    assert decisions.reason.str.contains("inside the optimizer step").any()
    # the same error before any fold (the first micro-batch) is retried
    model = OomOnCall(tiny_net(), at=1)
    result = _fit(
        model, Blobs(), tmp_path / "s", [AdaptiveCallback()], adapt={"policy": "budget"},
        micro_batch_size=8, **settings,
    )  # fmt: skip
    assert result.summary["adapt"]["oom_retries"] == 1
