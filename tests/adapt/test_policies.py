"""Policies and scores as pure functions: every rule and bound, without training."""

from __future__ import annotations

import math

import pytest

from edgetrain.adapt import (
    EpochObservation,
    MemoryModel,
    accuracy_score,
    budget_policy,
    clamp_lr,
    decide,
    edgetrain_policy,
    fit_to_budget,
    memory_score,
    none_policy,
    priorities,
    scale_lr,
    shrink_after_oom,
    shrink_after_overrun,
    stagnant_epochs,
)
from edgetrain.config import AdaptConfig

MiB = 2**20


def obs(**kw) -> EpochObservation:
    base = dict(
        epoch=3,
        batch_size=64,
        micro_batch_size=64,
        lr=0.1,
        train_size=1000,
        configured_batch_size=64,
        peak_bytes=60 * MiB,
        budget_bytes=100 * MiB,
        val_accs=(0.5, 0.6, 0.6),
        epochs_since_lr_change=3,
    )
    base.update(kw)
    return EpochObservation(**base)


def cfg(**kw) -> AdaptConfig:
    return AdaptConfig(policy="edgetrain", **kw)


# -- scores --------------------------------------------------------------------------------


def test_memory_score_is_a_fraction_of_the_capacity():
    assert memory_score(75, 100) == 0.75
    assert memory_score(150, 100) == 1.5  # not clipped: above 1 = over capacity
    assert memory_score(None, 100) is None
    assert memory_score(10, None) is None


def test_accuracy_score_uses_the_change_in_validation_accuracy():
    assert accuracy_score([0.5, 0.7]) == pytest.approx(0.8)  # improved by 0.2
    assert accuracy_score([0.7, 0.6]) == 1.0  # fell: counts as no gain
    assert accuracy_score([0.7]) is None  # nothing to compare yet
    assert accuracy_score([0.5, None]) is None


def test_priorities_are_weights_times_scores():
    assert priorities(0.5, 0.9, 0.4, 0.6) == pytest.approx((0.2, 0.54))
    assert priorities(None, 0.9, 0.4, 0.6) == (None, pytest.approx(0.54))


def test_stagnant_epochs_counts_epochs_without_a_new_best():
    assert stagnant_epochs([0.5, 0.6, 0.7], 0.005) == 0
    assert stagnant_epochs([0.5, 0.7, 0.69, 0.702], 0.005) == 2  # +0.002 is below min_delta
    assert stagnant_epochs([0.5, 0.7, 0.69, 0.71], 0.005) == 0
    assert stagnant_epochs([0.5], 0.0) == 0


@pytest.mark.parametrize(("rule", "expected"), [("linear", 0.4), ("sqrt", 0.2), ("none", 0.1)])
def test_lr_scaling_rules(rule, expected):
    assert scale_lr(0.1, 32, 128, rule) == pytest.approx(expected)


def test_lr_bounds():
    assert clamp_lr(1e-9, 1e-6, None) == 1e-6
    assert clamp_lr(5.0, 1e-6, 1.0) == 1.0


# -- edgetrain policy: priorities ---------------------------------------------------------


def test_top_priority_follows_the_users_weights():
    o = obs(peak_bytes=90 * MiB, val_accs=(0.5, 0.6, 0.6))  # mem 0.9, acc 1.0
    default = edgetrain_policy(o, cfg())  # 0.4 x 0.9 = 0.36 < 0.6 x 1.0
    assert default.chosen == "learning_rate"
    assert default.priority_batch_size == pytest.approx(0.36)
    assert default.priority_learning_rate == pytest.approx(0.6)
    heavy = edgetrain_policy(o, cfg(weights={"batch_size": 0.9, "learning_rate": 0.1}))
    assert heavy.chosen == "batch_size"  # 0.81 > 0.1
    assert heavy.priority_batch_size == pytest.approx(0.81)


def test_ties_go_to_the_learning_rate_and_only_one_parameter_changes():
    o = obs(peak_bytes=100 * MiB, val_accs=(0.6, 0.6))
    d = edgetrain_policy(o, cfg(weights={"batch_size": 0.5, "learning_rate": 0.5}))
    assert d.chosen == "learning_rate"
    assert {c.parameter for c in d.changes} <= {"lr"}


def test_first_epoch_has_no_accuracy_score_so_memory_decides():
    d = edgetrain_policy(obs(epoch=1, val_accs=(0.5,), peak_bytes=90 * MiB), cfg())
    assert d.accuracy_score is None and d.chosen == "batch_size"


def test_no_scores_keeps_everything():
    d = edgetrain_policy(obs(epoch=1, val_accs=(0.5,), peak_bytes=None), cfg())
    assert d.chosen == "" and d.changes == ()


# -- edgetrain policy: the batch rule -----------------------------------------------------

BATCH_FIRST = {"weights": {"batch_size": 1.0, "learning_rate": 0.0}}


def test_high_memory_shrinks_the_micro_batch_and_keeps_the_effective_batch():
    d = edgetrain_policy(obs(peak_bytes=80 * MiB, micro_batch_size=64), cfg(**BATCH_FIRST))
    assert [(c.parameter, c.old, c.new) for c in d.changes] == [("micro_batch_size", 64, 32)]
    assert d.new("batch_size", 64) == 64
    assert "accumulating 2 steps" in d.reason


def test_high_memory_at_the_micro_batch_floor_changes_nothing():
    d = edgetrain_policy(
        obs(peak_bytes=80 * MiB, micro_batch_size=4),
        cfg(min_micro_batch_size=4, **BATCH_FIRST),
    )
    assert d.changes == () and "minimum" in d.reason


def test_memory_between_thresholds_keeps():
    d = edgetrain_policy(obs(peak_bytes=60 * MiB), cfg(**BATCH_FIRST))
    assert d.changes == () and "within" in d.reason


def test_low_memory_grows_the_micro_batch_first():
    d = edgetrain_policy(obs(peak_bytes=30 * MiB, micro_batch_size=16), cfg(**BATCH_FIRST))
    assert [(c.parameter, c.new) for c in d.changes] == [("micro_batch_size", 32)]


def test_low_memory_growth_is_blocked_by_the_model_and_by_a_past_overrun():
    model = MemoryModel(static_bytes=20 * MiB, per_sample_bytes=2 * MiB)  # 32 -> 84 MiB
    blocked = edgetrain_policy(
        obs(peak_bytes=30 * MiB, micro_batch_size=16, memory=model), cfg(**BATCH_FIRST)
    )
    assert blocked.changes == () and "predicted" in blocked.reason
    ceiling = edgetrain_policy(
        obs(peak_bytes=30 * MiB, micro_batch_size=16, micro_ceiling=32), cfg(**BATCH_FIRST)
    )
    assert ceiling.changes == () and "already ran out" in ceiling.reason


@pytest.mark.parametrize(("rule", "lr"), [("linear", 0.2), ("sqrt", 0.1 * math.sqrt(2))])
def test_low_memory_at_full_micro_batch_grows_the_effective_batch_and_rescales_lr(rule, lr):
    d = edgetrain_policy(
        obs(peak_bytes=30 * MiB, micro_batch_size=64, batch_size=64),
        cfg(max_batch_size=256, lr_scaling=rule, **BATCH_FIRST),
    )
    changes = {c.parameter: (c.old, c.new) for c in d.changes}
    assert changes["batch_size"] == (64, 128)
    assert changes["lr"] == pytest.approx((0.1, lr))
    assert "micro_batch_size" not in changes  # same memory; accumulation 2


def test_lr_scaling_none_changes_only_the_batch():
    d = edgetrain_policy(
        obs(peak_bytes=30 * MiB), cfg(max_batch_size=256, lr_scaling="none", **BATCH_FIRST)
    )
    assert [c.parameter for c in d.changes] == ["batch_size"]


def test_the_effective_batch_never_passes_its_bounds():
    default = edgetrain_policy(obs(peak_bytes=30 * MiB), cfg(**BATCH_FIRST))
    assert default.changes == ()  # max_batch_size None: never above the configured 64
    capped = edgetrain_policy(
        obs(peak_bytes=30 * MiB, train_size=100), cfg(max_batch_size=1000, **BATCH_FIRST)
    )
    assert capped.new("batch_size", 64) == 100  # never above the training set


def test_memory_score_uses_the_device_total_without_a_budget():
    d = edgetrain_policy(
        obs(budget_bytes=None, device_total_bytes=1000 * MiB, peak_bytes=100 * MiB),
        cfg(**BATCH_FIRST),
    )
    assert d.memory_score == pytest.approx(0.1)


# -- edgetrain policy: the learning-rate rule ----------------------------------------------


def test_stagnation_reduces_the_learning_rate():
    d = edgetrain_policy(obs(val_accs=(0.5, 0.6, 0.6)), cfg())
    assert [(c.parameter, c.old, c.new) for c in d.changes] == [("lr", 0.1, 0.05)]


def test_high_accuracy_never_raises_the_learning_rate():
    # EdgeTrain raised the rate above 0.95 accuracy; ours only lowers it on stagnation
    for accs in [(0.96, 0.97), (0.96, 0.99), (0.99, 0.99)]:
        d = edgetrain_policy(obs(val_accs=accs), cfg())
        assert all(c.new <= c.old for c in d.changes if c.parameter == "lr")


def test_improving_accuracy_keeps_the_learning_rate():
    d = edgetrain_policy(obs(val_accs=(0.5, 0.6, 0.7)), cfg())
    assert d.chosen == "learning_rate" and d.changes == ()


def test_patience_and_time_since_the_last_change():
    waiting = edgetrain_policy(obs(val_accs=(0.5, 0.6, 0.6)), cfg(patience=2))
    assert waiting.changes == ()
    recent = edgetrain_policy(
        obs(val_accs=(0.6, 0.6, 0.6), epochs_since_lr_change=1), cfg(patience=2)
    )
    assert recent.changes == () and "changed 1 epoch" in recent.reason
    due = edgetrain_policy(obs(val_accs=(0.6, 0.6, 0.6), epochs_since_lr_change=2), cfg(patience=2))
    assert due.new("lr", 0.1) == pytest.approx(0.05)


def test_learning_rate_floor():
    d = edgetrain_policy(obs(lr=1e-6), cfg(min_lr=1e-6))
    assert d.changes == () and "minimum" in d.reason
    half = edgetrain_policy(obs(lr=1.5e-6), cfg(min_lr=1e-6))
    assert half.new("lr", 1.5e-6) == 1e-6


# -- budget and none policies -------------------------------------------------------------


def test_budget_policy_keeps_within_the_budget_and_never_grows():
    d = budget_policy(obs(peak_bytes=20 * MiB, micro_batch_size=8), AdaptConfig(policy="budget"))
    assert d.changes == () and d.memory_score == pytest.approx(0.2)


def test_budget_policy_shrinks_after_an_overrun_and_keeps_the_effective_batch():
    model = MemoryModel(static_bytes=40 * MiB, per_sample_bytes=1 * MiB)
    d = budget_policy(
        obs(peak_bytes=110 * MiB, micro_batch_size=64, memory=model), AdaptConfig(policy="budget")
    )
    assert [(c.parameter, c.old, c.new) for c in d.changes] == [("micro_batch_size", 64, 50)]
    assert d.new("batch_size", 64) == 64 and d.new("lr", 0.1) == 0.1


def test_overruns_that_shrinking_did_not_lower_keep_the_micro_batch():
    model = MemoryModel(static_bytes=40 * MiB, per_sample_bytes=1 * MiB)
    seen = obs(
        peak_bytes=110 * MiB, micro_batch_size=32, memory=model, unbatched_peak_bytes=120 * MiB
    )
    d = budget_policy(seen, AdaptConfig(policy="budget"))
    assert d.changes == () and "not the micro-batch's" in d.reason
    assert "at least 122.2 MiB" in d.reason  # 110 MiB with the 10% margin to spare
    # a higher peak is new pressure: shrink again
    higher = obs(
        peak_bytes=130 * MiB, micro_batch_size=32, memory=model, unbatched_peak_bytes=120 * MiB
    )
    assert budget_policy(higher, AdaptConfig(policy="budget")).changes
    # the EdgeTrain rule does not halve for it either
    d = edgetrain_policy(
        obs(
            peak_bytes=99 * MiB,
            micro_batch_size=32,
            unbatched_peak_bytes=120 * MiB,
        ),
        cfg(**BATCH_FIRST),
    )
    assert d.changes == () and "did not lower the peak" in d.reason


def test_budget_policy_without_a_budget_only_recovers_from_oom():
    d = budget_policy(obs(budget_bytes=None), AdaptConfig(policy="budget"))
    assert d.changes == () and "out-of-memory" in d.reason


def test_none_policy_and_decide_dispatch():
    assert none_policy(obs(), AdaptConfig()).changes == ()
    assert decide(obs(val_accs=(0.6, 0.6)), cfg()).policy == "edgetrain"
    assert decide(obs(), AdaptConfig(policy="budget")).policy == "budget"


# -- before training and inside steps -----------------------------------------------------


def test_fit_to_budget_picks_the_largest_micro_batch_within_the_margin():
    model = MemoryModel(static_bytes=40 * MiB, per_sample_bytes=1 * MiB)
    d = fit_to_budget(
        model, budget_bytes=100 * MiB, limit_frac=0.9, batch_size=256, micro_batch_size=256
    )
    # 50 fit (40 + 50 = 90 MiB): 6 micro-batches per 256, evened out to 43
    assert d.new("micro_batch_size", 256) == 43
    assert "accumulating 6 steps" in d.reason
    capped = fit_to_budget(
        model,
        budget_bytes=100 * MiB,
        limit_frac=0.9,
        batch_size=256,
        micro_batch_size=256,
        max_micro_batch_size=32,
    )
    assert capped.new("micro_batch_size", 256) == 32
    whole = fit_to_budget(
        model, budget_bytes=1000 * MiB, limit_frac=0.9, batch_size=64, micro_batch_size=64
    )
    assert whole.changes == ()  # everything fits: kept


def test_oom_halves_down_to_the_floor():
    d = shrink_after_oom(micro_batch_size=64)
    assert d.new("micro_batch_size", 64) == 32 and "same logical batch" in d.reason
    assert (
        shrink_after_oom(micro_batch_size=3, min_micro_batch_size=2).new("micro_batch_size", 3) == 2
    )
    assert shrink_after_oom(micro_batch_size=1).changes == ()


def test_overrun_shrinks_one_step_at_a_time_at_most():
    nothing_fits = MemoryModel(static_bytes=200 * MiB, per_sample_bytes=1 * MiB)
    d = shrink_after_overrun(
        micro_batch_size=64,
        peak_bytes=120 * MiB,
        budget_bytes=100 * MiB,
        memory=nothing_fits,
        limit_frac=0.9,
    )
    assert d.new("micro_batch_size", 64) == 32
    assert (
        shrink_after_overrun(
            micro_batch_size=1,
            peak_bytes=120 * MiB,
            budget_bytes=100 * MiB,
            memory=None,
            limit_frac=0.9,
        ).changes
        == ()
    )


def test_decision_rows_match_the_decisions_csv_columns():
    d = edgetrain_policy(obs(val_accs=(0.6, 0.6)), cfg())
    (row,) = d.rows()
    assert set(row) == {
        "memory_score",
        "accuracy_score",
        "priority_batch_size",
        "priority_learning_rate",
        "chosen",
        "parameter",
        "old",
        "new",
        "reason",
    }
    kept = budget_policy(obs(peak_bytes=1), AdaptConfig(policy="budget")).rows()
    assert kept[0]["parameter"] == "" and kept[0]["reason"].startswith("kept")
