"""The memory planner inside training: probes each lever set, applies the choice, logs
it, re-plans when measured memory drifts, refuses a budget no plan reaches.

The meter is a fake at the sensor boundary (like ``BatchMeter``): it 'measures' static
bytes + per-sample bytes x the largest training batch, the per-sample bytes x
``recompute_factor`` while the model's blocks are recomputed, plus ``extra`` (memory the
probes did not see, set by a test to simulate drift).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import QUIET, BatchMeter, Blobs
from edgetrain.adapt.planner import Levers, PlanError
from edgetrain.errors import EdgeTrainError
from edgetrain.memory.recompute import recomputed_blocks
from edgetrain.train import Callback, TrainState, fit
from edgetrain.train.features.budget import AdaptiveCallback

MiB = 2**20


#: the probes' clock in these tests (see work_clock)
_WORK = {"now": 0.0, "on": False}


def _tick(module: nn.Module, args: tuple, out: object) -> None:
    _WORK["now"] += 1e-3 + 1e-5 * args[0].shape[0]


@pytest.fixture(autouse=True)
def work_clock(monkeypatch):
    """Once a test made a LeverMeter, the probes' clock counts work instead of reading
    the wall: each leaf module's forward costs 1 ms plus 10 us a sample (a recomputed
    block's run twice), so the choices that rest on measured time do not change with the
    machine's load (under load the wall clock once timed micro-batch 5 x 7 faster than
    one recomputed step of 32)."""
    _WORK.update(now=0.0, on=False)
    real = time.perf_counter
    clock = SimpleNamespace(perf_counter=lambda: _WORK["now"] if _WORK["on"] else real())
    monkeypatch.setattr("edgetrain.adapt.probe.time", clock)


class LeverMeter(BatchMeter):
    source = "fake:levers"

    def __init__(self, model: nn.Module, static: float, per_sample: float, factor: float) -> None:
        super().__init__(model, int(static * MiB), int(per_sample * MiB))
        _WORK["on"] = True
        for m in model.modules():
            if not list(m.children()):
                m.register_forward_hook(_tick)
        self.model = model
        self.factor = factor
        self.extra = 0

    def peak_bytes(self) -> int:
        per_sample = self.per_sample_bytes
        if recomputed_blocks(self.model):
            per_sample = int(per_sample * self.factor)
        return self.static_bytes + per_sample * self.largest + self.extra


def two_blocks(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(128, 3)),
    )


class Drift(Callback):
    """From the first training step on, the meter sees ``extra`` bytes more."""

    def __init__(self, meter: LeverMeter, extra: int) -> None:
        self.meter, self.extra_bytes = meter, extra

    def on_batch_start(self, state: TrainState) -> None:
        self.meter.extra = self.extra_bytes


def _fit(model, out, callbacks, budget, epochs=1, **config):
    settings = {"epochs": epochs, "batch_size": 32, "lr": 0.1, **QUIET}
    settings |= {"adapt": {"policy": "budget"}, **config}
    return fit(
        model,
        Blobs(),
        Blobs(n=48, seed=1),
        out=out,
        callbacks=callbacks,
        budget=budget,
        **settings,
    )


def _plan_rows(run_dir):
    decisions = pd.read_csv(run_dir / "decisions.csv")
    return decisions[decisions.parameter == "levers"]


def test_the_plan_recomputes_when_the_micro_batch_alone_would_take_many_steps(tmp_path):
    model = two_blocks()
    # 4 MiB + 1 MiB/sample: within 90% of 10 MiB plain fits 5 samples (7 steps a batch);
    # recomputed blocks keep 0.1 MiB/sample: the whole batch of 32 in one step
    meter = LeverMeter(model, static=4, per_sample=1, factor=0.1)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    result = _fit(model, tmp_path / "r", [cb], {"memory": "10MiB"}, epochs=2)
    plan = cb.plan
    assert plan is not None and plan.levers.recompute == "all"
    assert plan.levers.activations == "none"  # the codec 'measured' no saving: not taken
    by = {o.levers.describe(): o for o in plan.options}
    assert by["micro-batch only"].micro_batch_size in (4, 5)  # the calibration may add a bit
    assert by["recompute=all"].micro_batch_size == 32
    # (the work clock: 7 steps of 5 samples cost more than one of 32 recomputed)
    assert by["recompute=all"].time_ratio < by["micro-batch only"].time_ratio
    assert not by["activations=lossless"].saves
    assert result.history.micro_batch_size.tolist() == [32, 32]
    # the plan is in decisions.csv (one row per option, the chosen one marked) and summary
    rows = _plan_rows(result.run_dir)
    assert len(rows) == len(plan.options)
    chosen = rows[rows.chosen == "plan"]
    assert chosen.new.tolist() == ["recompute=all"]
    assert "micro-batch 32 x 1" in chosen.reason.iloc[0]
    summary = json.loads((result.run_dir / "summary.json").read_text())
    adapt = summary["adapt"]
    assert adapt["plan"]["levers"]["recompute"] == "all"
    assert adapt["plan"]["recomputed_blocks"] == ["0", "1", "2"]
    assert adapt["within_budget"] is True and adapt["budget_violations"] == 0
    # the model's forwards are its own again after training
    assert recomputed_blocks(model) == []
    # the report's first page names the plan
    from edgetrain.report import load_run
    from edgetrain.report.keyfigures import key_figures
    from edgetrain.report.tables import run_totals

    run = load_run(result.run_dir)
    items = dict(key_figures(run, run_totals(run)).itertuples(index=False))
    assert items["memory plan"] == "recompute=all"


def test_a_plan_changes_nothing_but_memory_and_time(tmp_path):
    """Recomputation is exact: the planned run trains the same weights as a plain one."""
    planned_model, plain_model = two_blocks(), two_blocks()
    meter = LeverMeter(planned_model, static=4, per_sample=1, factor=0.1)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    _fit(planned_model, tmp_path / "p", [cb], {"memory": "10MiB"}, epochs=2)
    assert cb.plan is not None and cb.plan.levers.recompute == "all"
    _fit(plain_model, tmp_path / "q", [], {"memory": None}, epochs=2)
    for a, b in zip(planned_model.parameters(), plain_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_the_whole_batch_fitting_without_levers_probes_nothing_else(tmp_path):
    model = two_blocks()
    meter = LeverMeter(model, static=2, per_sample=0.1, factor=0.1)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    result = _fit(model, tmp_path / "r", [cb], {"memory": "10MiB"})
    assert [o.levers.describe() for o in cb.plan.options] == ["micro-batch only"]
    assert result.history.micro_batch_size.tolist() == [32]


def test_measured_drift_re_plans_to_other_levers(tmp_path):
    model = two_blocks()
    # plain fits the whole batch (2 + 0.2 x 32 = 8.4 MiB of 9); then 6.2 MiB appear that
    # the probes did not see: plain would need micro-batch 4, recomputation keeps 32
    meter = LeverMeter(model, static=2, per_sample=0.2, factor=0.1)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    drift = Drift(meter, int(6.2 * MiB))
    result = _fit(model, tmp_path / "r", [cb, drift], {"memory": "10MiB"}, epochs=2)
    assert cb.controller.state.replans == 1
    assert cb.controller.state.levers.recompute == "all"
    rows = _plan_rows(result.run_dir)
    replan = rows[rows.reason.str.startswith("re-plan")]
    assert (replan.chosen == "plan").sum() == 1
    assert replan[replan.chosen == "plan"].new.iloc[0] == "recompute=all"
    assert result.history.micro_batch_size.tolist()[-1] == 32
    assert meter.peak_bytes() <= 10 * MiB


def test_a_budget_no_plan_reaches_names_the_smallest(tmp_path):
    model = two_blocks()
    meter = LeverMeter(model, static=8, per_sample=1, factor=0.5)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    with pytest.raises(PlanError, match=r"smallest any reaches is .*raise budget.memory") as info:
        _fit(model, tmp_path / "r", [cb], {"memory": "8MiB"})
    # recomputation at micro-batch 1 (8.5 MiB measured, plus what a whole logical batch
    # holds beyond one pass) with the 10% margin
    smallest = info.value.smallest_bytes
    assert 8.5 * MiB / 0.9 <= smallest <= 8 * MiB / 0.9 + 2 * MiB
    assert isinstance(info.value, EdgeTrainError)
    assert recomputed_blocks(model) == []
    # and that budget is enough
    model = two_blocks()
    meter = LeverMeter(model, static=8, per_sample=1, factor=0.5)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    _fit(model, tmp_path / "s", [cb], {"memory": smallest})
    assert cb.plan.levers.recompute == "all" and cb.plan.micro_batch_size in (1, 2)  # 3% slack


def test_levers_the_config_sets_are_kept(tmp_path):
    model = two_blocks()
    meter = LeverMeter(model, static=4, per_sample=1, factor=0.1)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    _fit(model, tmp_path / "r", [cb], {"memory": "10MiB"}, recompute="all")
    assert {o.levers.recompute for o in cb.plan.options} == {"all"}
    assert cb.plan.micro_batch_size == 32


def test_micro_batch_levers_plan_nothing(tmp_path):
    model = two_blocks()
    meter = LeverMeter(model, static=4, per_sample=1, factor=0.1)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    result = _fit(model, tmp_path / "r", [cb], {"memory": "10MiB", "levers": "micro_batch"})
    assert cb.plan is None and cb.controller.state.levers is None
    assert result.history.micro_batch_size.tolist() in ([4], [5])


class ShareMeter(LeverMeter):
    """Scales what it 'measures' by the share of parameter elements that require
    gradients: a sparse plan's frozen tensors hold no gradient or optimizer state."""

    def peak_bytes(self) -> int:
        params = list(self.model.parameters())
        share = sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)
        return int((self.static_bytes + self.per_sample_bytes * self.largest) * share) + self.extra


def test_fine_tuning_updates_a_static_share_when_nothing_exact_fits(tmp_path):
    """20 MiB + 0.1 MiB/sample: no exact set fits 90% of 20 MiB. Fine-tuning with lossy
    levers allowed, a static sparse update of half the parameters (the head and the first
    convolution, the cheapest neurons by weight norm per parameter: 48% of the elements
    keep gradients) fits the whole batch; 25% and 10% are less than the head alone and
    are not considered."""
    init = tmp_path / "pretrained"
    init.mkdir()
    torch.save(two_blocks().state_dict(), init / "model.pt")
    model = two_blocks()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    meter = ShareMeter(model, static=20, per_sample=0.1, factor=1.0)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    budget = {"memory": "20MiB", "lossy": "allow"}
    result = _fit(model, tmp_path / "r", [cb], budget, epochs=2, init_from=init)
    plan = cb.plan
    assert plan is not None and plan.levers.sparse == 0.5
    assert {o.levers.sparse for o in plan.options} == {1.0, 0.5}
    assert plan.micro_batch_size == 32
    after = {k: v.clone() for k, v in model.state_dict().items()}
    assert torch.equal(after["1.0.weight"], before["1.0.weight"])  # frozen
    assert torch.equal(after["1.0.bias"], before["1.0.bias"])
    assert not torch.equal(after["0.0.weight"], before["0.0.weight"])  # selected
    assert not torch.equal(after["2.1.weight"], before["2.1.weight"])  # the head trains
    assert all(p.requires_grad for p in model.parameters())  # given back after training
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["adapt"]["plan"]["levers"]["sparse"] == 0.5
    # resumed, the same rows train (chosen before training, kept in the checkpoint)
    meter = ShareMeter(model, static=20, per_sample=0.1, factor=1.0)
    cb2 = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    settings = {"epochs": 3, "batch_size": 32, "lr": 0.1, **QUIET}
    fit(model, Blobs(), Blobs(n=48, seed=1), out=tmp_path / "r", callbacks=[cb2],
        budget=budget, adapt={"policy": "budget"}, init_from=init, resume=True, **settings)  # fmt: skip
    again = model.state_dict()
    assert torch.equal(again["1.0.weight"], before["1.0.weight"])
    assert not torch.equal(again["0.0.weight"], after["0.0.weight"])
    # without init_from (not fine-tuning) no sparse set is offered: nothing fits
    with pytest.raises(PlanError):
        _fit(two_blocks(), tmp_path / "s", [AdaptiveCallback(probe_data=Blobs(),
             meter=ShareMeter(model, 20, 0.1, 1.0))], budget)  # fmt: skip


def bn_blocks(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(128, 3)),
    )


def test_batch_norm_models_keep_micro_batches_of_16_unless_the_budget_forbids(tmp_path, caplog):
    from edgetrain.adapt.levers import BATCH_NORM_MIN_MICRO, auto_min_micro

    assert auto_min_micro(bn_blocks()) == BATCH_NORM_MIN_MICRO == 16
    assert auto_min_micro(two_blocks()) == 1
    # 4 MiB + 1 MiB/sample, 90% of 24 MiB: 17 samples fit; a plain model would take 32 x 1
    # with recompute, but recomputation saves nothing here (factor 1): micro-batch 16 x 2
    model = bn_blocks()
    cb = AdaptiveCallback(probe_data=Blobs(), meter=LeverMeter(model, 4, 1, 1.0))
    result = _fit(model, tmp_path / "r", [cb], {"memory": "24MiB"})
    assert result.history.micro_batch_size.tolist()[0] >= 16
    # 90% of 12 MiB fits 6 samples: below 16, taken with a warning rather than failing
    model = bn_blocks()
    cb = AdaptiveCallback(probe_data=Blobs(), meter=LeverMeter(model, 4, 1, 1.0))
    with caplog.at_level("WARNING"):
        result = _fit(model, tmp_path / "s", [cb], {"memory": "12MiB"})
    assert result.history.micro_batch_size.tolist()[0] in (5, 6)
    assert "automatic minimum for batch-norm" in caplog.text
    # a number given is a hard floor: the budget that needs 6 fails at 8
    model = bn_blocks()
    cb = AdaptiveCallback(probe_data=Blobs(), meter=LeverMeter(model, 4, 1, 1.0))
    with pytest.raises(EdgeTrainError):
        _fit(model, tmp_path / "t", [cb], {"memory": "12MiB"},
             adapt={"policy": "budget", "min_micro_batch_size": 8})  # fmt: skip


def test_a_sparse_lever_freezes_batch_norm_statistics_and_gives_them_back():
    from edgetrain.adapt.levers import apply_levers
    from edgetrain.adapt.planner import Levers
    from edgetrain.tasks import make_task

    model = bn_blocks().train()
    x = torch.randn(4, 2, 4, 4)
    y = torch.tensor([0, 1, 2, 0])
    bn = model[0][1]
    mean = bn.running_mean.clone()
    handle = apply_levers(
        model, Levers(sparse=0.9), task=make_task("classification"), example=lambda: (x, y)
    )
    model(x).sum().backward()
    assert torch.equal(bn.running_mean, mean)  # running statistics used, not updated
    # the micro-batch changes nothing: one sample's output is the same alone or in a batch
    with torch.no_grad():
        assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-6)
    assert model.training
    handle.remove()
    assert bn.training and all(p.requires_grad for p in model.parameters())
    model(x)
    assert not torch.equal(bn.running_mean, mean)


class LateMeter(LeverMeter):
    """Once ``armed`` (after the plan), recomputed blocks 'measure' ``late`` bytes more
    (``everything``: every set does): what the planner's probes did not see for a set."""

    def __init__(self, *args, late: float, everything: bool = False) -> None:
        super().__init__(*args)
        self.late, self.everything, self.armed = int(late * MiB), everything, False

    def peak_bytes(self) -> int:
        hit = self.armed and (self.everything or bool(recomputed_blocks(self.model)))
        return super().peak_bytes() + (self.late if hit else 0)


class ArmAfterPlan(AdaptiveCallback):
    def _log_plan(self, state, plan, **kwargs) -> None:
        super()._log_plan(state, plan, **kwargs)
        self.meter.armed = True


def test_a_planned_set_the_controller_measures_over_the_budget_is_replaced(tmp_path):
    model = two_blocks()
    # as in the first test, recomputation is planned at 32 x 1 (7.2 MiB of 10); the
    # controller's own probes then measure it 6.5 MiB higher: over the budget even at
    # micro-batch 1 (10.6 MiB). Before, training exited 2; now that set's cost is raised
    # and the next plan (the micro-batch alone, 4 or 5 samples) trains within the budget
    meter = LateMeter(model, 4, 1, 0.1, late=6.5)
    cb = ArmAfterPlan(probe_data=Blobs(), meter=meter)
    result = _fit(model, tmp_path / "r", [cb], {"memory": "10MiB"}, epochs=2)
    assert cb.controller.state.levers.describe() == "micro-batch only"
    assert result.history.micro_batch_size.tolist()[0] in (4, 5)
    assert recomputed_blocks(model) == []
    rows = _plan_rows(result.run_dir)
    chosen = rows[rows.chosen == "plan"]
    # the sets that add levers to recomputation were raised alike; the codec saves nothing
    assert chosen.new.tolist() == ["recompute=all", "micro-batch only"]
    assert chosen.reason.iloc[1].startswith("re-plan: recompute=all measured")
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["adapt"]["within_budget"] is True
    assert summary["adapt"]["plan"]["describe"] == "micro-batch only"


def test_when_every_set_measures_over_the_budget_training_stops_with_the_rule(tmp_path):
    from edgetrain.adapt.interface import BudgetUnmetError

    model = two_blocks()
    meter = LateMeter(model, 4, 1, 0.1, late=6.5, everything=True)
    cb = ArmAfterPlan(probe_data=Blobs(), meter=meter)
    with pytest.raises(BudgetUnmetError, match=r"is below the .* measured for micro-batch 1"):
        _fit(model, tmp_path / "r", [cb], {"memory": "10MiB"})
    rows = _plan_rows(tmp_path / "r")
    assert (rows.chosen == "plan").sum() >= 2  # the first plan and at least one re-plan
    assert recomputed_blocks(model) == []


def wide_head(seed: int = 0) -> nn.Module:
    """two_blocks with a 2 MiB hidden layer in the head: 2 MiB of SGD momentum."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(128, 4096, bias=False), nn.Linear(4096, 3)),
    )


def _smallest(train) -> int:
    """The bytes of the smallest budget named by the exit-2 error ``train()`` raises."""
    with pytest.raises(EdgeTrainError, match="smallest") as info:
        train()
    return int(re.search(r"smallest .*?\((\d+) bytes", str(info.value)).group(1))


class StateDtypes(Callback):
    """Records the dtypes of the optimizer's momentum at each step's end."""

    def __init__(self) -> None:
        self.seen: set[torch.dtype] = set()

    def on_batch_end(self, state: TrainState) -> None:
        for s in state.optimizer.state.values():
            self.seen.add(s["momentum_buffer"].dtype)


def test_low_precision_optimizer_state_is_planned_when_nothing_exact_fits(tmp_path):
    """The static floor: recomputation saves nothing here (factor 1), the codecs nothing
    the fake meter sees; only bf16 momentum (1 MiB less, exact accounting) goes below
    the smallest budget the exact sets reach, and only with budget.lossy: allow."""
    settings = {"optimizer": "sgd", "momentum": 0.9}

    def planned(out, budget, record=None):
        model = wide_head()
        meter = LeverMeter(model, static=4, per_sample=0.2, factor=1.0)
        cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
        callbacks = [cb] if record is None else [cb, record]
        return cb, _fit(model, tmp_path / out, callbacks, budget, **settings)

    exact_smallest = _smallest(lambda: planned("exact", {"memory": "6MiB"}))
    lossy_smallest = _smallest(lambda: planned("lossy", {"memory": "4.5MiB", "lossy": "allow"}))
    # half of the momentum's bytes (behind the 10% margin and the 5% slack)
    saved = (exact_smallest - lossy_smallest) * 0.9 / 1.05
    momentum = sum(p.numel() for p in wide_head().parameters()) * 4
    assert saved == pytest.approx(momentum / 2, abs=8)
    record = StateDtypes()
    budget = {"memory": (exact_smallest + lossy_smallest) // 2, "lossy": "allow"}
    cb, result = planned("fit", budget, record)
    assert cb.plan is not None and cb.plan.levers.state == "bf16"
    assert cb.plan.levers.short().endswith("bf16 state")
    option = next(o for o in cb.plan.options if o.levers == cb.plan.levers)
    assert not option.time_measured  # the fp32 set's time
    assert record.seen == {torch.bfloat16}
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["adapt"]["plan"]["levers"]["state"] == "bf16"
    assert summary["adapt"]["within_budget"] is True
    rows = _plan_rows(result.run_dir)
    assert rows[rows.chosen == "plan"].new.iloc[0] == "optimizer_state=bf16"


def test_candidate_sets_with_low_precision_state():
    from edgetrain.adapt.levers import candidate_levers

    model = two_blocks()
    exact = candidate_levers(model=model)
    assert {lv.state for lv in exact} == {"fp32"}
    lossy = candidate_levers(model=model, lossy=True, sparse=(0.5,))
    full = [lv for lv in lossy if lv.sparse == 1]
    assert {lv for lv in full if lv.state == "bf16"} == {
        replace(lv, state="bf16") for lv in full if lv.state == "fp32"
    }
    assert [lv.state for lv in lossy if lv.sparse < 1] == ["fp32"]  # not with a sparse share
    assert lossy[-1] == Levers()  # the fewest levers last
    fixed = candidate_levers(model=model, lossy=True, state="bf16", sparse=(0.5,))
    assert {lv.state for lv in fixed} == {"bf16"} and all(lv.sparse == 1 for lv in fixed)
    assert candidate_levers(model=model, lossy=False, low_state=True)[-2] == Levers(state="bf16")


def test_low_precision_state_the_config_sets_is_kept_and_measured(tmp_path):
    model = wide_head()
    meter = LeverMeter(model, static=4, per_sample=0.2, factor=0.1)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    record = StateDtypes()
    settings = {"optimizer": "sgd", "momentum": 0.9, "optimizer_state": "bf16"}
    _fit(model, tmp_path / "r", [cb, record], {"memory": "10MiB"}, **settings)
    assert {o.levers.state for o in cb.plan.options} == {"bf16"}
    assert all(o.time_measured for o in cb.plan.options if not o.levers.optimizer_in_backward)
    # the probes measured it in effect: the static bytes count half the momentum
    static = next(iter(cb._fits.values())).static
    assert static.optimizer_state_bytes == sum(p.numel() for p in model.parameters()) * 2
    assert record.seen == {torch.bfloat16}


def test_a_planned_low_precision_state_resumes_exactly(tmp_path):
    """The planner's bf16 state keeps its rounding generator in the checkpoint: one epoch,
    then a resumed second, ends with the weights of two epochs in one run."""
    settings = {"optimizer": "sgd", "momentum": 0.9}

    def run(out, epochs, budget, resume=False):
        model = wide_head()
        meter = LeverMeter(model, static=4, per_sample=0.2, factor=1.0)
        cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
        _fit(model, out, [cb], budget, epochs=epochs, resume=resume, **settings)
        return cb, model

    exact = _smallest(lambda: run(tmp_path / "exact", 1, {"memory": "6MiB"}))
    lossy = _smallest(lambda: run(tmp_path / "lossy", 1, {"memory": "4.5MiB", "lossy": "allow"}))
    budget = {"memory": (exact + lossy) // 2, "lossy": "allow"}
    cb, whole = run(tmp_path / "whole", 2, budget)
    assert cb.plan is not None and cb.plan.levers.state == "bf16"
    run(tmp_path / "parts", 1, budget)
    cb, resumed = run(tmp_path / "parts", 2, budget, resume=True)
    assert cb.controller.state.levers.state == "bf16"
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


class GradMeter(LeverMeter):
    """LeverMeter plus ``grads`` MiB while two parameters' gradients coexist (one is
    accumulated while another's is kept): plain accumulation pays them at every
    micro-batch, a step that frees each gradient when it is ready never does."""

    def __init__(self, model: nn.Module, static: float, per_sample: float, grads: float) -> None:
        self.coexist = False
        super().__init__(model, static, per_sample, factor=1.0)
        self.grads = int(grads * MiB)
        params = list(model.parameters())
        for p in params:  # before any of training's hooks: sees the gradient just made
            p.register_post_accumulate_grad_hook(
                lambda p, params=params: self._accumulated(p, params)
            )

    def _accumulated(self, p: torch.Tensor, params: list[torch.Tensor]) -> None:
        if any(q.grad is not None for q in params if q is not p):
            self.coexist = True

    def reset_peak(self) -> None:
        super().reset_peak()
        self.coexist = False

    def peak_bytes(self) -> int:
        return super().peak_bytes() + (self.grads if self.coexist else 0)


def _wide(seed: int = 0) -> nn.Module:
    """0.8 MiB of parameters in five layers (the gradients the fold frees: all but the
    largest layer's, which must exist at once)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(32, 256)]
    for _ in range(3):
        layers += [nn.ReLU(), nn.Linear(256, 256)]
    return nn.Sequential(*layers, nn.ReLU(), nn.Linear(256, 3))


def test_sgd_with_momentum_folds_accumulated_gradients_where_the_batch_does_not_fit(tmp_path):
    """Plain accumulation keeps 0.8 MiB of gradients beside every micro-batch; folding
    them into the momentum (edgetrain.memory.fold) frees them, so the plan takes larger
    micro-batches (fewer steps) under the same budget, and trains what accumulation
    trains."""
    model = _wide()
    meter = GradMeter(model, static=2, per_sample=0.1, grads=0.8)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    sgd = {"optimizer": "sgd", "momentum": 0.9}
    result = _fit(model, tmp_path / "r", [cb], {"memory": "5MiB"}, epochs=2, **sgd)
    plan = cb.plan
    assert plan is not None and plan.levers == Levers(optimizer_in_backward=True)
    by = {o.levers: o for o in plan.options}
    plain_micro = by[Levers()].micro_batch_size
    # limit 4.5 MiB: plain 2 + 0.8 gradients + 0.8 momentum (the probes add the state a
    # real step makes) + 0.1 x 8; folded, the 0.8 MiB of gradients freed (measured by a
    # pass with accumulation): micro-batch 16 (2 steps against 4)
    assert plain_micro == 8
    assert (plan.micro_batch_size, plan.accum_steps) == (16, 2)
    assert plan.predicted_peak_bytes == pytest.approx(4.4 * MiB, rel=0.01)
    assert plan.chosen.short() == "gradients folded into momentum"
    steps = result.summary["adapt"]["plan"]
    assert steps["steps_folded"] == steps["steps_in_backward"] == 6  # 96 / 32 x 2 epochs
    assert result.summary["adapt"]["budget_violations"] == 0
    assert result.history.micro_batch_size.tolist() == [16, 16]
    # the same weights as plain accumulation at that micro-batch (up to rounding)
    plain = _wide()
    _fit(
        plain,
        tmp_path / "q",
        [],
        {"memory": None},
        epochs=2,
        micro_batch_size=plan.micro_batch_size,
        **sgd,
    )
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # Adam cannot fold: the step in backward is only offered at the whole batch
    model = _wide()
    meter = GradMeter(model, static=2, per_sample=0.1, grads=0.8)
    cb = AdaptiveCallback(probe_data=Blobs(), meter=meter)
    _fit(model, tmp_path / "a", [cb], {"memory": "5MiB"}, optimizer="adam", lr=1e-3)
    assert cb.plan is not None and cb.plan.levers == Levers()
    assert not {o.levers: o for o in cb.plan.options}[Levers(optimizer_in_backward=True)].fits
