"""The budget controller on numbers alone: no model, no optimizer, no torch."""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import replace

import pytest

from edgetrain.adapt.controller import (
    SHRINK_EFFECT_FRAC,
    BudgetController,
    BudgetDecision,
    ControllerError,
    Settings,
)
from edgetrain.adapt.measurements import BudgetFit, Probe, StaticBytes
from edgetrain.adapt.memory_model import MemoryModel
from edgetrain.adapt.policies import Decision
from edgetrain.adapt.state import BudgetState, StateFormatError
from edgetrain.config.adapt import AdaptConfig, AdaptWeights
from edgetrain.errors import EdgeTrainError

MiB = 2**20
BUDGET = 30 * MiB  # limit 27 MiB with the default margin 0.1
START = Settings(batch_size=32, micro_batch_size=32, lr=0.1)
_EPOCH = {"train_size": 96, "configured_batch_size": 32, "val_accs": (0.5,)}
STATIC = StaticBytes(param_bytes=MiB, buffer_bytes=0, grad_bytes=MiB, optimizer_state_bytes=MiB)


def _fit(static: StaticBytes = STATIC, per_sample: float = MiB) -> BudgetFit:
    """Probes at 2, 4, 8, 16 of a step that needs 10 MiB + ``per_sample`` per sample."""
    probes = tuple(Probe(m, 0, int(10 * MiB + per_sample * m)) for m in (2, 4, 8, 16))
    return BudgetFit(
        static=static,
        probes=probes,
        memory=MemoryModel(10 * MiB, per_sample),
        ceiling=None,
        verified=16,
        calibration=probes[-1],
        probe_peak_bytes=26 * MiB,
    )


def _linear(micro: int) -> int:
    return 10 * MiB + micro * MiB


def _fitted(
    budget: int | None = BUDGET, measure=_linear, **cfg
) -> tuple[BudgetController, BudgetDecision]:
    ctl = BudgetController(AdaptConfig(policy="budget", **cfg), budget)
    return ctl, ctl.fit_budget(_fit(), START, epoch=0, measure=measure)


def _reason(outcome: BudgetDecision) -> str:
    return outcome.rows(step=0)[0]["reason"]


def test_the_controller_imports_without_torch():
    code = (
        "import sys, edgetrain.adapt, edgetrain.adapt.controller, edgetrain.adapt.state; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- state ---------------------------------------------------------------------------------


def _plain_only(value) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_only(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def test_the_state_round_trips_through_plain_types():
    ctl, _ = _fitted()
    ctl.step_measured(Settings(32, 16, 0.1), epoch=1, peak_bytes=31 * MiB)
    saved = ctl.state.to_dict()
    assert _plain_only(saved)
    assert saved["points"] == [[16, 31.0 * MiB]]
    assert saved["memory"] == {
        "static_bytes": 15.0 * MiB,
        "per_sample_bytes": 1.0 * MiB,
        "single_bytes": None,
    }
    assert BudgetState.from_dict(saved) == ctl.state


def test_the_state_loads_with_torch_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    ctl, _ = _fitted()
    torch.save({"adapt": ctl.state.to_dict()}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["adapt"]
    assert BudgetState.from_dict(loaded) == ctl.state


def test_an_older_state_loads_with_defaults_and_a_bad_one_is_an_error():
    old = {
        "memory": {"static_bytes": 10486844.0, "per_sample_bytes": 1048576.0},
        "static": {"param_bytes": 1084, "buffer_bytes": 0, "grad_bytes": 1084,
                   "optimizer_state_bytes": 1084},
        "probes": [{"micro_batch_size": 2, "saved_bytes": 4892, "measured_bytes": 12583996}],
        "points": [[16, 27262976.0]],
        "fitted": True,
        "retired_field": 1,
    }  # fmt: skip
    state = BudgetState.from_dict(old)
    assert state.memory == MemoryModel(10486844.0, 1048576.0)
    assert state.probes == [Probe(2, 4892, 12583996)] and state.points == [(16, 27262976.0)]
    assert state.fitted and state.violations == 0 and state.calibration is None
    assert BudgetState.from_dict({}) == BudgetState()
    with pytest.raises(StateFormatError, match="expected a dict for MemoryModel"):
        BudgetState.from_dict({"memory": [1, 2]})
    with pytest.raises(StateFormatError, match="expected 2 items"):
        BudgetState.from_dict({"points": [[16]]})


# -- before training -----------------------------------------------------------------------


def test_fit_budget_chooses_the_micro_batch_and_keeps_the_batch():
    ctl, out = _fitted()
    assert out.settings == Settings(32, 16, 0.1) and out.changed and out.epoch == 0
    assert "probed micro-batches 2, 4, 8, 16; a logical batch at 16 measured 26.0 MiB" in (
        _reason(out)
    )
    state = ctl.state
    assert state.fitted and state.memory == MemoryModel(10 * MiB, MiB)
    assert state.static == STATIC and len(state.probes) == 4
    assert state.probe_peak_bytes == 26 * MiB


def test_a_budget_below_the_static_bytes_or_one_sample_says_so():
    ctl = BudgetController(AdaptConfig(policy="budget"), 2 * MiB)
    with pytest.raises(EdgeTrainError, match=r"2.0 MiB \(2097152 bytes\) is below the static"):
        ctl.fit_budget(_fit(), START, epoch=0, measure=_linear)
    ctl = BudgetController(AdaptConfig(policy="budget"), 10 * MiB)
    with pytest.raises(EdgeTrainError, match=r"micro-batch 1.*raise it to at least 12.2 MiB"):
        ctl.fit_budget(_fit(), START, epoch=0, measure=_linear)
    assert not ctl.state.fitted


@pytest.mark.parametrize(
    ("measure", "micro", "said"),
    [
        # 16 over the limit (27 MiB): 11 (32 in 3 steps) is measured and lower
        (lambda m: 28 * MiB if m == 16 else _linear(m), 11, "at 11 measured 21.0 MiB"),
        # out of memory at 16: the smaller choice
        (lambda m: -1 if m == 16 else _linear(m), 11, "at 16 ran out of memory"),
        # 11 measures no less: what passes the limit is not the micro-batch's; 16 is
        # within the budget, so it stays
        (lambda m: 28 * MiB, 16, "at 11 measured 28.0 MiB, no less"),
        # the same, but 16 passes the whole budget: the smaller one
        (lambda m: 31 * MiB, 11, "at 11 measured 31.0 MiB, no less"),
        # no reading: the model's choice stands
        (lambda m: None, 16, "probed micro-batches 2, 4, 8, 16"),
    ],
)
def test_the_choice_is_checked_as_a_whole_logical_batch(measure, micro, said):
    tried: list[int] = []

    def counted(m: int) -> int | None:
        tried.append(m)
        return measure(m)

    _, out = _fitted(measure=counted)
    assert out.settings is not None and out.settings.micro_batch_size == micro
    assert said in _reason(out)
    assert tried[0] == 16 and len(tried) <= 3


def test_the_shrink_rule_is_a_quarter_of_the_expected_drop():
    assert SHRINK_EFFECT_FRAC == 0.25
    # 16 -> 11 is expected to free 5 MiB: a drop of just over 1.25 MiB counts as lowered
    lowered = lambda m: 28 * MiB if m == 16 else 28 * MiB - int(1.3 * MiB)  # noqa: E731
    _, out = _fitted(measure=lowered)
    assert "no less" not in _reason(out)
    flat = lambda m: 28 * MiB if m == 16 else 28 * MiB - int(1.2 * MiB)  # noqa: E731
    _, out = _fitted(measure=flat)
    assert "no less" in _reason(out)


def test_resumed_shrinks_only_when_the_model_says_it_must():
    ctl, out = _fitted()
    assert out.settings is not None
    assert ctl.resumed(out.settings, epoch=2) is None
    smaller = BudgetController(AdaptConfig(policy="budget"), 24 * MiB, ctl.state)
    again = smaller.resumed(out.settings, epoch=2)
    assert again is not None and again.settings == Settings(32, 11, 0.1)
    assert again.epoch == 2 and _reason(again).endswith("; resumed")


# -- inside epochs -------------------------------------------------------------------------


def test_an_overrun_shrinks_and_a_shrink_that_frees_nothing_is_not_repeated():
    ctl, out = _fitted()
    settings = out.settings
    assert settings is not None
    ctl.epoch_started(1, None)
    assert ctl.step_measured(settings, epoch=1, peak_bytes=26 * MiB) is None
    assert ctl.train_peak_bytes == 26 * MiB and ctl.state.violations == 0
    shrink = ctl.step_measured(settings, epoch=1, peak_bytes=31 * MiB)
    assert shrink is not None and shrink.settings == Settings(32, 12, 0.1)
    assert ctl.state.ceiling == 16 and ctl.state.points == [(16, 31.0 * MiB)]
    assert ctl.state.memory == MemoryModel(15 * MiB, MiB)  # recalibrated, slope kept
    settings = shrink.settings
    # the same peak at 12: shrinking did not lower it, so 12 is kept, said once an epoch
    stuck = [ctl.step_measured(settings, epoch=1, peak_bytes=31 * MiB) for _ in range(3)]
    assert all(s is not None and s.settings is None and not s.changed for s in stuck)
    assert [(s.logged, s.level) for s in stuck] == [
        (True, logging.WARNING),
        (False, None),
        (False, None),
    ]
    assert "did not lower the peak" in _reason(stuck[0])
    assert "raise budget.memory to at least 34.4 MiB" in _reason(stuck[0])
    later = ctl.step_measured(settings, epoch=2, peak_bytes=31 * MiB)
    assert later is not None and (later.logged, later.level) == (True, logging.WARNING)
    # new pressure, beyond what 12 samples could hold on top: shrinking may help again
    more = ctl.step_measured(settings, epoch=2, peak_bytes=50 * MiB)
    assert more is not None and more.changed and more.settings.micro_batch_size < 12
    assert ctl.state.violations == 6 and ctl.state.peak_bytes == 50 * MiB


def test_out_of_memory_halves_until_the_minimum():
    ctl = BudgetController(AdaptConfig(policy="budget"), None)
    assert not ctl.chunks_evaluation
    out = ctl.out_of_memory(Settings(32, 2, 0.1), epoch=1)
    assert out.settings == Settings(32, 1, 0.1) and out.changed
    assert ctl.state.oom_retries == 1 and ctl.state.ceiling == 2 and ctl.chunks_evaluation
    last = ctl.out_of_memory(Settings(32, 1, 0.1), epoch=1)
    assert not last.changed and last.settings is None
    assert "cannot retry" in _reason(last) and ctl.state.oom_retries == 1


def test_out_of_memory_in_the_optimizer_step_is_not_retried():
    ctl = BudgetController(AdaptConfig(policy="budget"), None)
    out = ctl.out_of_memory(START, epoch=3, in_optimizer_step=True)
    assert not out.changed and out.settings is None and out.level == logging.ERROR
    assert "inside the optimizer step" in _reason(out) and out.epoch == 3
    assert ctl.state.oom_retries == 0


def test_peaks_between_epochs_are_counted_apart():
    ctl, _ = _fitted()
    ctl.epoch_started(1, 99 * MiB)  # before the first epoch: the probes' doing
    ctl.epoch_ended(START, epoch=1, peak_bytes=20 * MiB, **_EPOCH)
    ctl.epoch_started(2, 12 * MiB)  # the checkpoint write after epoch 1
    ctl.fit_ended(99 * MiB)  # interrupted inside epoch 2: not between epochs
    assert ctl.state.outside_peak_bytes == 12 * MiB
    ctl.epoch_ended(START, epoch=2, peak_bytes=20 * MiB, **_EPOCH)
    ctl.fit_ended(13 * MiB)
    assert ctl.state.outside_peak_bytes == 13 * MiB


# -- epoch end -----------------------------------------------------------------------------


def test_the_epoch_end_records_the_training_peak_and_asks_the_policy():
    ctl, out = _fitted()
    settings = out.settings
    assert settings is not None
    ctl.epoch_started(1, None)
    ctl.step_measured(settings, epoch=1, peak_bytes=27 * MiB)
    end = ctl.epoch_ended(settings, epoch=1, peak_bytes=27 * MiB, **_EPOCH)
    assert end.settings == settings and not end.changed and end.epoch == 1
    assert _reason(end) == "kept: peak 27.0 MiB is 90% of the budget 30.0 MiB"
    assert ctl.state.points == [(16, 27.0 * MiB)] and ctl.state.peak_bytes == 27 * MiB
    assert ctl.predict_bytes(16) == 27 * MiB  # recalibrated on the step
    summary = ctl.summary(16)
    assert summary["within_budget"] is True and summary["predicted_peak_bytes"] == 27 * MiB
    assert summary["static"] == {
        "param_bytes": MiB,
        "buffer_bytes": 0,
        "grad_bytes": MiB,
        "optimizer_state_bytes": MiB,
    }
    assert len(summary["probes"]) == 4 and summary["budget_violations"] == 0


def test_edgetrain_lowers_the_lr_and_remembers_when():
    weights = AdaptWeights(batch_size=0.0, learning_rate=0.7)
    cfg = AdaptConfig(policy="edgetrain", min_delta=1.0, weights=weights)
    ctl = BudgetController(cfg, None)
    first = ctl.epoch_ended(START, epoch=1, peak_bytes=None, **_EPOCH)
    assert first.settings == START and _reason(first) == "kept: no score yet"
    epoch = {**_EPOCH, "val_accs": (0.5, 0.5)}
    second = ctl.epoch_ended(START, epoch=2, peak_bytes=None, **epoch)
    assert second.settings == replace(START, lr=0.05)
    assert ctl.state.last_lr_change_epoch == 2
    rows = second.rows(step=7)
    assert [(r["epoch"], r["step"], r["parameter"], r["new"]) for r in rows] == [(2, 7, "lr", 0.05)]


def test_edgetrain_without_validation_is_refused():
    ctl = BudgetController(AdaptConfig(policy="edgetrain"), None)
    ctl.require_validation(None)  # unknown: allowed
    with pytest.raises(EdgeTrainError, match="no validation data"):
        ctl.require_validation(False)


def test_misuse_raises_a_controller_error_not_an_assertion():
    ctl = BudgetController(AdaptConfig(policy="budget"), None)
    with pytest.raises(ControllerError, match="no memory budget"):
        ctl.step_measured(START, epoch=1, peak_bytes=MiB)
    with pytest.raises(ControllerError, match="no memory budget"):
        ctl.fit_budget(_fit(), START, epoch=0, measure=_linear)
    assert issubclass(ControllerError, RuntimeError)


def test_decision_rows_carry_the_note():
    decision = Decision("budget", "micro_batch_size", (), "kept")
    row = BudgetDecision(decision, epoch=3, note="resumed").rows(step=9)[0]
    assert (row["epoch"], row["step"], row["reason"]) == (3, 9, "kept; resumed")
    assert BudgetDecision(Decision("budget"), 1, note="n").rows(0)[0]["reason"] == "n"
