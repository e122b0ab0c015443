"""Analysis on synthetic studies with known structure (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState, create_trial

from edgetrain.safefs import MARKER_NAME
from edgetrain.sweep.analysis import (
    BEST_VALUE_COLUMNS,
    IMPORTANCE_COLUMNS,
    TOP_COLUMNS,
    analyze,
    analyze_study,
)
from edgetrain.sweep.heartbeat import FAIL_REASON_ATTR
from edgetrain.sweep.objectives import efficiency_acc_per_kj
from edgetrain.sweep.relevance import knee_index, kruskal_effect, pareto_front
from edgetrain.sweep.space import load_space
from edgetrain.sweep.study import TRIAL_COLUMNS, open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(tiny_base):
    return load_space(
        {
            "base": tiny_base,
            "params": {
                "precision": {"choices": ["fp32", "bf16"]},
                "lr": {"low": 0.001, "high": 0.1, "log": True},
                "batch_size": {"choices": [16, 32, 64]},
                "augmentation": {"choices": ["none", "flip"]},
            },
            "seed": 1,
        }
    )


def _add_synthetic_trials(study, space, n=40, seed=0):
    """precision drives energy (bf16 costs 4x), lr drives accuracy; the rest is noise."""
    rng = np.random.default_rng(seed)
    dists = space.distributions()
    for _ in range(n):
        params = {
            "precision": str(rng.choice(["fp32", "bf16"])),
            "lr": float(10 ** rng.uniform(-3, -1)),
            "batch_size": int(rng.choice([16, 32, 64])),
            "augmentation": str(rng.choice(["none", "flip"])),
        }
        energy = (400.0 if params["precision"] == "bf16" else 100.0) * (
            1 + 0.05 * rng.standard_normal()
        )
        acc = 0.5 + 0.2 * (math.log10(params["lr"]) + 3) + 0.01 * rng.standard_normal()
        time_s = energy / 15.0
        attrs = {
            "val_acc": acc,
            "energy_j": energy,
            "avg_power_w": energy / time_s,
            "time_s": time_s,
            "efficiency_acc_per_kj": efficiency_acc_per_kj(acc, energy),
            "energy_source": "estimated:cpu-tdp",
            "concurrent_trials": 1,
        }
        study.add_trial(
            create_trial(params=params, distributions=dists, values=[acc, energy], user_attrs=attrs)
        )
    study.add_trial(
        create_trial(
            state=TrialState.FAIL,
            params={"precision": "fp32", "lr": 0.01, "batch_size": 16, "augmentation": "none"},
            distributions=dists,
            user_attrs={"error": "boom"},
            system_attrs={FAIL_REASON_ATTR: "error"},
        )
    )


def _study(space):
    study = optuna.create_study(directions=["maximize", "minimize"])
    _add_synthetic_trials(study, space)
    return study


def test_the_parameter_that_drives_energy_is_ranked_first(tiny_base):
    space = _space(tiny_base)
    analysis = analyze_study(_study(space), space)
    imp = analysis.tables["importance"]
    energy = imp[imp["target"] == "energy"].sort_values("rank")
    assert energy["parameter"].iloc[0] == "precision"
    assert energy["fanova_importance"].iloc[0] > 0.8
    # the Kruskal-Wallis effect agrees: precision separates energy, the others do not
    eps = energy.set_index("parameter")["epsilon_sq"]
    assert eps["precision"] > 0.5 and eps.drop("precision").max() < 0.2
    assert energy.set_index("parameter").loc["precision", "kruskal_p"] < 1e-4
    accuracy = imp[imp["target"] == "accuracy"].sort_values("rank")
    assert accuracy["parameter"].iloc[0] == "lr"
    best = analysis.tables["best_values"].set_index("parameter")
    assert best.loc["precision", "best_for_energy"] == "fp32"
    assert best.loc["lr", "best_for_accuracy"] > 0.03
    assert analysis.summary["top_energy_driver"] == "precision"
    assert analysis.summary["top_accuracy_driver"] == "lr"
    assert list(imp.columns) == list(IMPORTANCE_COLUMNS)
    assert list(analysis.tables["best_values"].columns) == list(BEST_VALUE_COLUMNS)


def test_importance_is_reproducible(tiny_base):
    space = _space(tiny_base)
    a = analyze_study(_study(space), space).tables["importance"]
    b = analyze_study(_study(space), space).tables["importance"]
    pd.testing.assert_frame_equal(a, b)


def test_tables_rank_by_energy_not_power(tiny_base):
    space = _space(tiny_base)
    study = optuna.create_study(directions=["maximize", "minimize"])
    dists = space.distributions()
    params = {"precision": "fp32", "lr": 0.01, "batch_size": 16, "augmentation": "none"}
    # slow and low-power: 10 W for 100 s = 1000 J; fast and high-power: 50 W for 10 s = 500 J
    for acc, power, time_s in ((0.9, 10.0, 100.0), (0.9, 50.0, 10.0)):
        energy = power * time_s
        attrs = {
            "val_acc": acc,
            "energy_j": energy,
            "avg_power_w": power,
            "time_s": time_s,
            "efficiency_acc_per_kj": efficiency_acc_per_kj(acc, energy),
        }
        study.add_trial(
            create_trial(params=params, distributions=dists, values=[acc, energy], user_attrs=attrs)
        )
    t = analyze_study(study, space).tables
    assert t["top_energy"]["number"].tolist() == [1, 0]
    assert t["top_efficiency"]["number"].tolist() == [1, 0]
    assert t["top_accuracy"]["number"].tolist() == [1, 0]  # tie on accuracy: less energy first
    assert t["pareto"]["number"].tolist() == [1]


def test_top_tables_pareto_and_trials_table(tiny_base):
    space = _space(tiny_base)
    analysis = analyze_study(_study(space), space, top_k=5)
    t = analysis.tables
    assert len(t["trials"]) == 41 and (t["trials"]["state"] == "failed").sum() == 1
    assert t["trials"].loc[t["trials"]["state"] == "failed", "error"].iloc[0] == "boom"
    assert list(t["trials"].columns) == [*TRIAL_COLUMNS, *(f"param_{n}" for n in space.params)]
    for name in ("top_accuracy", "top_energy", "top_efficiency"):
        assert len(t[name]) == 5 and t[name]["rank"].tolist() == [1, 2, 3, 4, 5]
        assert list(t[name].columns) == [*TOP_COLUMNS, *(f"param_{n}" for n in space.params)]
    assert t["top_accuracy"]["val_acc"].is_monotonic_decreasing
    assert t["top_energy"]["energy_j"].is_monotonic_increasing
    assert t["top_efficiency"]["efficiency_acc_per_kj"].is_monotonic_decreasing
    # every Pareto point is non-dominated and every other completed trial is dominated
    done = t["trials"][t["trials"]["state"] == "complete"]
    front = set(t["pareto"]["number"])
    for _, r in done.iterrows():
        dominated = (
            (done["val_acc"] >= r["val_acc"])
            & (done["energy_j"] <= r["energy_j"])
            & ((done["val_acc"] > r["val_acc"]) | (done["energy_j"] < r["energy_j"]))
        ).any()
        assert dominated == (r["number"] not in front)
    assert t["pareto"]["knee"].sum() == 1
    assert analysis.knee_number in front
    assert analysis.summary["trials"] == {
        "complete": 40,
        "failed": 1,
        "lost_or_interrupted": 0,
        "running": 0,
    }


def test_pareto_front_and_knee_by_hand():
    frame = pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4],
            "val_acc": [0.9, 0.8, 0.85, 0.8, 0.5],
            "energy_j": [100.0, 50.0, 120.0, 60.0, 10.0],
        }
    )
    front = pareto_front(frame)
    assert front["number"].tolist() == [4, 1, 0]
    assert front.loc[knee_index(front), "number"] == 1


def test_kruskal_effect_sizes():
    values = pd.Series(["a"] * 10 + ["b"] * 10)
    separated = pd.Series(list(range(10)) + list(range(100, 110)), dtype=float)
    strong = kruskal_effect(values, separated)
    assert strong["n_groups"] == 2 and strong["kruskal_p"] < 1e-3
    assert strong["epsilon_sq"] == pytest.approx(strong["kruskal_h"] / 19)
    assert strong["epsilon_sq"] > 0.7 and strong["eta_sq_h"] > 0.7
    mixed = pd.Series([float(i % 10) for i in range(20)])
    assert kruskal_effect(values, mixed)["epsilon_sq"] < 0.05
    # a continuous range is cut into quantile bins
    lr = pd.Series(np.linspace(0.001, 0.1, 24))
    assert kruskal_effect(lr, pd.Series(np.arange(24.0)), kind="float")["n_groups"] == 4


def test_analyze_writes_tables_csv_and_xlsx(tmp_path: Path, tiny_base):
    space = _space(tiny_base)
    study = open_study(space, tmp_path / "sw", study_name="synthetic")
    _add_synthetic_trials(study, space, n=12)
    analysis = analyze(tmp_path / "sw", top_k=3)
    out = tmp_path / "sw" / "analysis"
    names = {
        "trials",
        "top_accuracy",
        "top_energy",
        "top_efficiency",
        "pareto",
        "importance",
        "best_values",
    }
    assert {p.name for p in out.iterdir() if p.name != MARKER_NAME} == {
        f"{n}.csv" for n in names
    } | {
        "summary.json",
        "results.xlsx",
    }
    assert len(pd.read_csv(out / "top_energy.csv")) == 3
    from openpyxl import load_workbook

    assert set(load_workbook(out / "results.xlsx").sheetnames) == names | {"summary"}
    assert analysis.out_dir == out and analysis.summary["study"] == "synthetic"


def test_analysis_of_a_study_without_completed_trials(tiny_base):
    space = _space(tiny_base)
    study = optuna.create_study(directions=["maximize", "minimize"])
    analysis = analyze_study(study, space)
    assert analysis.knee_number is None and analysis.tables["pareto"].empty
    assert analysis.tables["importance"]["fanova_importance"].isna().all()
