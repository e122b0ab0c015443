"""The memory planner as a pure function over measured lever costs (no torch, no model)."""

from __future__ import annotations

import math

import pytest

from edgetrain.adapt.memory_model import MemoryModel
from edgetrain.adapt.planner import (
    SMALLEST_SLACK_FRAC,
    LeverCost,
    Levers,
    PlanError,
    TimeModel,
    make_plan,
    shifted,
)
from edgetrain.adapt.state import BudgetState

MiB = 1 << 20
PLAIN = Levers()
RECOMPUTE = Levers(recompute="all")
LOSSLESS = Levers(activations="lossless")
STEP = Levers(optimizer_in_backward=True)


def cost(levers, static_mib, per_sample_mib, step_s=0.01, sample_s=0.001, **kw):
    return LeverCost(
        levers,
        MemoryModel(static_mib * MiB, per_sample_mib * MiB),
        TimeModel(step_s, sample_s),
        **kw,
    )


def test_the_whole_batch_without_levers_when_it_fits():
    costs = [cost(PLAIN, 10, 1), cost(RECOMPUTE, 10, 0.2, sample_s=0.0013)]
    plan = make_plan(costs, budget_bytes=100 * MiB, batch_size=64)
    assert plan.levers == PLAIN
    assert (plan.micro_batch_size, plan.accum_steps) == (64, 1)
    assert plan.predicted_peak_bytes == 74 * MiB
    assert plan.chosen.time_ratio == 1.0


def test_the_cheaper_lever_wins_and_the_choice_follows_the_measured_costs():
    # 40 MiB budget, limit 36 MiB: plain fits 26 samples (3 steps: evened out, 3 x 22),
    # recompute the whole batch
    plain, recompute = cost(PLAIN, 10, 1), cost(RECOMPUTE, 10, 0.3, sample_s=0.0013)
    expensive_steps = [
        cost(PLAIN, 10, 1, step_s=0.05),
        cost(RECOMPUTE, 10, 0.3, step_s=0.05, sample_s=0.0013),
    ]
    plan = make_plan(expensive_steps, budget_bytes=40 * MiB, batch_size=64)
    # plain: 3 x 0.05 + 64 x 0.001 = 0.214 s; recompute: 0.05 + 64 x 0.0013 = 0.1332 s
    assert plan.levers == RECOMPUTE and plan.micro_batch_size == 64
    by_levers = {o.levers: o for o in plan.options}
    assert by_levers[PLAIN].micro_batch_size == 22 and by_levers[PLAIN].accum_steps == 3
    assert math.isclose(by_levers[PLAIN].batch_seconds, 0.214)
    assert math.isclose(by_levers[RECOMPUTE].time_ratio, 0.1332 / 0.214)
    # steps nearly free (a CPU): shrinking the micro-batch beats recomputing
    plan = make_plan([plain, recompute], budget_bytes=40 * MiB, batch_size=64)
    assert plan.levers == PLAIN and plan.micro_batch_size == 22


def test_a_lever_that_saves_nothing_is_not_taken_even_if_it_timed_faster():
    # the codec measured the same memory as plain (saves nothing) and, by noise, faster
    costs = [cost(PLAIN, 10, 1, step_s=0.05), cost(LOSSLESS, 10, 1, step_s=0.04)]
    plan = make_plan(costs, budget_bytes=40 * MiB, batch_size=64)
    assert plan.levers == PLAIN
    assert not next(o for o in plan.options if o.levers == LOSSLESS).saves


def test_a_codec_is_never_predicted_faster_than_no_codec_at_the_same_micro_batch():
    # 60 MiB, limit 54: plain fits 44 (2 x 32), lossless 88 (the whole batch); lossless
    # timed, by noise, with less time per step and per sample than plain
    costs = [cost(PLAIN, 10, 1, step_s=0.05), cost(LOSSLESS, 10, 0.5, step_s=0.04, sample_s=0.0008)]
    plan = make_plan(costs, budget_bytes=60 * MiB, batch_size=64)
    by_levers = {o.levers: o for o in plan.options}
    # at the whole batch lossless costs at least what plain would: 0.05 + 64 x 0.001
    assert math.isclose(by_levers[LOSSLESS].batch_seconds, 0.05 + 64 * 0.001)
    assert plan.levers == LOSSLESS  # one step instead of two: still faster
    # with memory for plain's whole batch too, the two tie at the same micro-batch and
    # the set with fewer levers wins (lossless alone predicted 0.0912 s, plain 0.114 s)
    plan = make_plan(costs, budget_bytes=100 * MiB, batch_size=64)
    assert plan.levers == PLAIN and plan.micro_batch_size == 64


def test_ties_go_to_fewer_levers():
    costs = [
        cost(PLAIN, 10, 0.5, sample_s=0.001),
        cost(RECOMPUTE, 10, 0.2, sample_s=0.00101),
    ]
    plan = make_plan(costs, budget_bytes=100 * MiB, batch_size=64)
    assert plan.levers == PLAIN


def test_the_optimizer_step_in_backward_acts_only_on_the_whole_batch():
    # 64 samples need 10 + 64 = 74 MiB; freeing 20 MiB of gradients brings it to 54
    costs = [
        cost(PLAIN, 10, 1, step_s=0.05),
        cost(STEP, 10, 1, step_s=0.05, grad_free_bytes=20 * MiB),
    ]
    plan = make_plan(costs, budget_bytes=61 * MiB, batch_size=64)  # limit 54.9 MiB
    assert plan.levers == STEP
    assert (plan.micro_batch_size, plan.predicted_peak_bytes) == (64, 54 * MiB)
    assert plan.chosen.saved_bytes == 20 * MiB
    # a budget that needs accumulation: the step in backward cannot act
    plan = make_plan(costs, budget_bytes=40 * MiB, batch_size=64)
    assert plan.levers == PLAIN
    assert not next(o for o in plan.options if o.levers == STEP).fits


def test_a_folding_step_in_backward_frees_the_gradients_at_every_micro_batch():
    """SGD with momentum folds accumulated gradients (edgetrain.memory.fold): the step in
    backward then saves the gradients at any micro-batch, not only at the whole batch."""
    # 40 MiB of parameters + momentum + 20 MiB of gradients, 1 MiB per sample
    plain = cost(PLAIN, 60, 1, step_s=0.05)
    folding = cost(STEP, 60, 1, step_s=0.05, grad_free_bytes=20 * MiB, accumulates=True)
    whole_only = cost(STEP, 60, 1, step_s=0.05, grad_free_bytes=20 * MiB)
    assert folding.predict_bytes(16, 64) == 56 * MiB  # 60 + 16 - 20
    assert whole_only.predict_bytes(16, 64) == 76 * MiB  # accumulation keeps them
    # measured with accumulation (no whole-batch pass): no saving claimed at the whole batch
    assert folding.predict_bytes(64, 64) == 124 * MiB
    # limit 72 MiB: plain fits micro-batch 12 (6 steps), folding 32 (2 steps): faster
    plan = make_plan([plain, folding], budget_bytes=80 * MiB, batch_size=64)
    assert plan.levers == STEP
    assert (plan.micro_batch_size, plan.accum_steps) == (32, 2)
    assert plan.predicted_peak_bytes == 72 * MiB
    assert plan.chosen.saved_bytes == 20 * MiB
    options = {o.levers: o for o in plan.options}
    assert options[PLAIN].micro_batch_size < 32
    # the same set that cannot fold does not fit below the whole batch
    plan = make_plan([plain, whole_only], budget_bytes=80 * MiB, batch_size=64)
    assert plan.levers == PLAIN
    # below plain's micro-batch-1 floor (61 MiB) only the folding set trains, and the
    # smallest budget it names is at micro-batch 1, not at the whole batch
    with pytest.raises(PlanError, match="at micro-batch 1") as info:
        make_plan([plain, folding], budget_bytes=40 * MiB, batch_size=64, limit_frac=0.9)
    assert info.value.smallest_bytes == math.ceil(41 * MiB / 0.9 * (1 + SMALLEST_SLACK_FRAC))
    plan = make_plan([plain, folding], budget_bytes=55 * MiB, batch_size=64, limit_frac=0.9)
    assert (plan.levers, plan.micro_batch_size) == (STEP, 8)  # 40 + 9 MiB, evened to 8 x 8


def test_a_folding_set_whose_whole_batch_pass_measured_over_the_limit_accumulates():
    folding = cost(STEP, 10, 1, grad_free_bytes=8 * MiB, whole_bytes=90 * MiB, accumulates=True)
    # the line says 66 MiB at the whole batch, the pass measured 90: micro-batch 32 instead
    assert folding.largest_micro_batch(70 * MiB, 64, 1) == 32
    assert folding.predict_bytes(32, 64) == 34 * MiB


def test_an_impossible_budget_names_the_smallest_reachable_one():
    costs = [cost(PLAIN, 10, 1), cost(RECOMPUTE, 8, 0.25)]
    with pytest.raises(PlanError, match=r"smallest any reaches is 9\.6 MiB") as info:
        make_plan(costs, budget_bytes=5 * MiB, batch_size=64, limit_frac=0.9)
    # recompute at micro-batch 1: 8.25 MiB / 0.9, and 5% for the next run's noise
    assert info.value.smallest_bytes == math.ceil(8.25 * MiB / 0.9 * (1 + SMALLEST_SLACK_FRAC))
    assert "recompute=all at micro-batch 1" in str(info.value)
    # that budget is indeed enough
    plan = make_plan(costs, budget_bytes=info.value.smallest_bytes, batch_size=64, limit_frac=0.9)
    assert plan.levers == RECOMPUTE and plan.micro_batch_size == 2  # the slack fits 2


def test_a_probe_that_ran_out_of_memory_caps_the_micro_batch():
    costs = [cost(PLAIN, 10, 0.1, ceiling=16)]
    plan = make_plan(costs, budget_bytes=1000 * MiB, batch_size=64)
    assert plan.micro_batch_size == 13  # below 16; 15 evened out: 5 micro-batches of 13


def test_drift_raises_every_set_and_can_change_the_plan():
    costs = [
        cost(PLAIN, 10, 1, step_s=0.05),
        cost(RECOMPUTE, 10, 0.1, step_s=0.05, sample_s=0.0013),
    ]
    plan = make_plan(costs, budget_bytes=90 * MiB, batch_size=64)
    assert plan.levers == PLAIN and plan.micro_batch_size == 64  # 74 MiB of a limit of 81
    # training measured 94 MiB at 64: 20 MiB the probes did not see
    corrected = shifted(costs, PLAIN, 20 * MiB)
    assert [c.memory.static_bytes for c in corrected] == [30 * MiB, 30 * MiB]
    replanned = make_plan(corrected, budget_bytes=90 * MiB, batch_size=64)
    assert replanned.levers == RECOMPUTE and replanned.micro_batch_size == 64
    # a measurement below the prediction never lowers the costs
    assert shifted(costs, PLAIN, -5 * MiB)[0].memory == costs[0].memory


def test_time_model_fit():
    exact = TimeModel.fit([(8, 0.05 + 8 * 0.002), (16, 0.05 + 16 * 0.002), (32, 0.05 + 32 * 0.002)])
    assert math.isclose(exact.step_seconds, 0.05) and math.isclose(exact.sample_seconds, 0.002)
    one = TimeModel.fit([(16, 0.32)])
    assert (one.step_seconds, one.sample_seconds) == (0.0, 0.02)
    through_origin = TimeModel.fit([(8, 0.01), (16, 0.05)])  # would need negative overhead
    assert through_origin.step_seconds == 0.0 and through_origin.sample_seconds > 0
    assert TimeModel(0.05, 0.002).batch_seconds(64, 20) == pytest.approx(4 * 0.05 + 64 * 0.002)
    with pytest.raises(ValueError):
        TimeModel.fit([(0, 1.0), (4, math.nan)])


def test_make_plan_refuses_inconsistent_arguments():
    with pytest.raises(ValueError):
        make_plan([], budget_bytes=MiB, batch_size=4)
    with pytest.raises(ValueError):
        make_plan([cost(PLAIN, 1, 1)], budget_bytes=MiB, batch_size=4, min_micro=8)


def test_levers_describe_and_checkpoint_round_trip():
    assert PLAIN.describe() == "micro-batch only" and PLAIN.count == 0
    both = Levers("int8", "all", True)
    assert both.describe() == "recompute=all + activations=int8 + optimizer_in_backward"
    assert both.count == 3 and both.lossy and not LOSSLESS.lossy
    state = BudgetState(levers=both, plan_costs=[cost(RECOMPUTE, 10, 0.5, ceiling=9)], replans=2)
    again = BudgetState.from_dict(state.to_dict())
    assert again == state
    assert BudgetState.from_dict({}).levers is None  # an older checkpoint


def test_every_lever_of_a_set_must_pay_its_way():
    # the codec on top of recomputation saves nothing more: recomputation alone is taken,
    # even though the pair timed faster (noise)
    both = Levers(activations="lossless", recompute="all")
    costs = [
        cost(PLAIN, 10, 1, step_s=0.05),
        cost(RECOMPUTE, 10, 0.3, step_s=0.05, sample_s=0.0013),
        cost(both, 10, 0.3, step_s=0.05, sample_s=0.0012),
    ]
    plan = make_plan(costs, budget_bytes=40 * MiB, batch_size=64)
    assert plan.levers == RECOMPUTE
    assert not next(o for o in plan.options if o.levers == both).saves


def test_lossy_sets_only_when_no_exact_one_fits_and_then_the_least_lossy():
    int8 = Levers(activations="int8")
    half, tenth = Levers(sparse=0.5), Levers(sparse=0.1)
    assert half.lossy and half.count == 1 and half.short() == "sparse 50%"
    assert tenth.describe() == "sparse_update=static 0.1"
    costs = [
        cost(PLAIN, 10, 1, step_s=0.05),
        cost(int8, 10, 0.25, step_s=0.01),  # faster than plain: still not taken while exact fits
        cost(half, 6, 0.5, step_s=0.01),
        cost(tenth, 3, 0.2, step_s=0.005),
    ]
    # 40 MiB, limit 36: plain fits 26 samples (exact), so no lossy set is taken
    assert make_plan(costs, budget_bytes=40 * MiB, batch_size=64).levers == PLAIN
    # 20 MiB, limit 18: plain fits 8; exact still wins over faster lossy sets
    assert make_plan(costs, budget_bytes=20 * MiB, batch_size=64).levers == PLAIN
    # 10 MiB, limit 9: nothing exact fits; the largest updated share that fits is taken
    # (half: 6 + 0.5 x 6), not the faster, smaller tenth
    plan = make_plan(costs, budget_bytes=10 * MiB, batch_size=64)
    assert plan.levers == half and plan.micro_batch_size == 6
    # 7 MiB, limit 6.3: only the tenth fits (3 + 0.2 x 16)
    plan = make_plan(costs, budget_bytes=7 * MiB, batch_size=64)
    assert plan.levers == tenth and plan.micro_batch_size == 16
    # codecs: fewer lost bits first
    codecs = [cost(PLAIN, 10, 1), cost(int8, 5, 0.1), cost(Levers(activations="int2"), 5, 0.05)]
    assert make_plan(codecs, budget_bytes=8 * MiB, batch_size=16).levers == int8
    # a sparse set contains the plain set's levers (it must save over it to be taken)
    useless = [cost(PLAIN, 10, 1), cost(half, 10, 1)]
    with pytest.raises(PlanError):
        make_plan(useless, budget_bytes=5 * MiB, batch_size=16)
    plan = make_plan(useless, budget_bytes=40 * MiB, batch_size=16)
    assert not next(o for o in plan.options if o.levers == half).saves


def test_batch_norm_sets_prefer_micro_batches_of_16_and_frozen_norms_are_exempt():
    from edgetrain.adapt.planner import make_plan_preferring

    sparse = Levers(sparse=0.1)
    assert sparse.frozen_norm and not PLAIN.frozen_norm
    costs = [cost(PLAIN, 10, 1), cost(sparse, 4, 1, step_s=0.02)]
    # 30 MiB, limit 27: plain fits 17 >= 16 (evened out: 2 x 16): the preference holds,
    # exact wins
    plan, held = make_plan_preferring(costs, budget_bytes=30 * MiB, batch_size=32, preferred_min=16)
    assert held and plan.levers == PLAIN and plan.micro_batch_size == 16
    # the smallest budget named is that of any micro-batch (sparse at 1: 5 MiB / 0.9 + 3%)
    assert plan.smallest_bytes == math.ceil(5 * MiB / 0.9 * (1 + SMALLEST_SLACK_FRAC))
    # 20 MiB, limit 18: plain fits only 8 (< 16); the sparse set (running statistics) is
    # exempt and fits 14 (3 x 11 evened out): taken, the preference held
    plan, held = make_plan_preferring(costs, budget_bytes=20 * MiB, batch_size=32, preferred_min=16)
    assert held and plan.levers == sparse and plan.micro_batch_size == 11
    # without the sparse set: plain at 8, the preference dropped
    plan, held = make_plan_preferring(
        costs[:1], budget_bytes=20 * MiB, batch_size=32, preferred_min=16
    )
    assert not held and plan.levers == PLAIN and plan.micro_batch_size == 8
    with pytest.raises(PlanError):
        make_plan_preferring(costs, budget_bytes=5 * MiB, batch_size=32, preferred_min=16)


def test_low_precision_optimizer_state_is_the_least_lossy_lever():
    state = Levers(state="bf16")
    assert state.lossy and state.count == 1 and state.short() == "bf16 state"
    assert state.describe() == "optimizer_state=bf16"
    int8, half = Levers(activations="int8"), Levers(sparse=0.5)
    costs = [
        cost(PLAIN, 10, 1),
        cost(int8, 10, 0.2),
        cost(half, 6, 1),
        cost(state, 8, 1),
        cost(Levers(activations="int8", state="bf16"), 7, 0.2),
    ]
    # limit 9 MiB: nothing exact fits at 16 per micro-batch (10 + 16); all lossy sets
    # fit something; the rounded state is taken first, though int8 fits more samples
    plan = make_plan(costs, budget_bytes=10 * MiB, batch_size=16)
    assert plan.levers == state and plan.micro_batch_size == 1
    # where the state alone does not fit, a codec (+ the state where it pays) is next
    plan = make_plan(costs, budget_bytes=9 * MiB, batch_size=16)
    assert plan.levers == Levers(activations="int8", state="bf16")
    # a set with the state contains the one without it: the state must pay its way
    same = [cost(PLAIN, 10, 1), cost(state, 10, 1)]
    plan = make_plan(same, budget_bytes=40 * MiB, batch_size=16)
    assert plan.levers == PLAIN
    assert not next(o for o in plan.options if o.levers == state).saves
    saved = BudgetState(levers=state, plan_costs=[cost(state, 8, 1)])
    assert BudgetState.from_dict(saved.to_dict()) == saved  # checkpointed


def test_a_measured_whole_batch_pass_bounds_the_step_in_backward_from_below():
    # the line through small probes says 10 + 0.5 x 64 - 8 freed = 34 MiB at the whole
    # batch; the whole-batch pass with gradients freed measured 50 MiB
    low = cost(STEP, 10, 0.5, grad_free_bytes=8 * MiB)
    measured = cost(STEP, 10, 0.5, grad_free_bytes=8 * MiB, whole_bytes=50 * MiB)
    assert low.predict_bytes(64, 64) == 34 * MiB
    assert measured.predict_bytes(64, 64) == 50 * MiB
    assert measured.predict_bytes(32, 64) == 26 * MiB  # (no step in backward there)
    costs = [cost(PLAIN, 10, 1), measured]
    assert make_plan(costs, budget_bytes=45 * MiB, batch_size=64).levers == PLAIN
    assert make_plan([cost(PLAIN, 10, 1), low], budget_bytes=45 * MiB, batch_size=64).levers == STEP
    # drift and the bf16 state's saving move both
    up = measured.raised(2 * MiB)
    assert up.predict_bytes(64, 64) == 52 * MiB and up.predict_bytes(8, 64) == 16 * MiB
    assert shifted([measured], STEP, 3 * MiB)[0].whole_bytes == 53 * MiB
