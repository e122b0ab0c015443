"""The memory planner inside training: probes each lever set, applies the choice, logs
it, re-plans when measured memory drifts, refuses a budget no plan reaches.

The meter is a fake at the sensor boundary (like ``BatchMeter``): it 'measures' static
bytes + per-sample bytes x the largest training batch, the per-sample bytes x
``recompute_factor`` while the model's blocks are recomputed, plus ``extra`` (memory the
probes did not see, set by a test to simulate drift).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from conftest import QUIET, BatchMeter, Blobs
from edgetrain.adapt.planner import PlanError
from edgetrain.errors import EdgeTrainError
from edgetrain.memory.recompute import recomputed_blocks
from edgetrain.train import Callback, TrainState, fit
from edgetrain.train.features.budget import AdaptiveCallback

MiB = 2**20


class LeverMeter(BatchMeter):
    source = "fake:levers"

    def __init__(self, model: nn.Module, static: float, per_sample: float, factor: float) -> None:
        super().__init__(model, int(static * MiB), int(per_sample * MiB))
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
    settings = {"epochs": epochs, "batch_size": 32, "lr": 0.1, **QUIET, **config}
    return fit(
        model,
        Blobs(),
        Blobs(n=48, seed=1),
        out=out,
        callbacks=callbacks,
        budget=budget,
        adapt={"policy": "budget"},
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
    assert cb.plan.levers.recompute == "all" and cb.plan.micro_batch_size == 1


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
