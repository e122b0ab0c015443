"""Table functions, checked against the known numbers of the synthetic runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from edgetrain.report import (
    activation_table,
    controller_table,
    correlation_matrix,
    energy_per_epoch,
    epoch_boundaries,
    load_run,
    resource_usage,
    run_totals,
    strongest_pairs,
    totals_table,
    training_curves,
)
from edgetrain.report.labels import axis_label, format_value
from edgetrain.report.tables import config_table, downsample, flatten_mapping, sensors_table


def test_training_curves_keep_columns_with_data(full_run: Path) -> None:
    curves = training_curves(load_run(full_run))
    assert list(curves.columns) == ["epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr"]
    assert curves["train_loss"].tolist()[:2] == [2.0, 1.0]


def test_epoch_boundaries_are_first_samples(full_run: Path, known: SimpleNamespace) -> None:
    boundaries = epoch_boundaries(load_run(full_run))
    starts = known.setup_s + np.concatenate([[0.0], np.cumsum(known.epoch_times)[:-1]])
    assert boundaries["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert boundaries["start_t_s"].tolist() == pytest.approx(starts.tolist())


def test_resource_usage_drops_absent_sensors(full_run: Path, plain_run: Path) -> None:
    full = resource_usage(load_run(full_run))
    plain = resource_usage(load_run(plain_run))
    assert {"gpu_util_pct", "gpu_power_w", "gpu1_util_pct"} <= set(full.columns)
    assert list(plain.columns) == ["t_s", "epoch", "cpu_pct", "ram_used_bytes", "proc_rss_bytes"]
    assert len(resource_usage(load_run(full_run), max_rows=10)) == 10


def test_downsample_keeps_first_and_last_rows() -> None:
    frame = pd.DataFrame({"t_s": range(101)})
    thinned = downsample(frame, 10)
    assert len(thinned) <= 10
    assert thinned["t_s"].iloc[0] == 0
    assert thinned["t_s"].iloc[-1] == 100
    assert downsample(frame, 500) is frame


def test_energy_and_energy_per_sample(full_run: Path, known: SimpleNamespace) -> None:
    energy = energy_per_epoch(load_run(full_run))
    times = np.array(known.epoch_times)
    assert energy["energy_j"].tolist() == pytest.approx((known.gpu_power_w * times).tolist())
    assert energy["samples"].tolist() == [4500] * 6  # samples_per_s * time_s
    expected = known.gpu_power_w * times / 4500
    assert energy["energy_per_sample_j"].tolist() == pytest.approx(expected.tolist())


def test_energy_falls_back_to_the_cumulative_counter(
    make_run: Callable[..., Path], known: SimpleNamespace
) -> None:
    path = make_run("no-energy", metrics_overrides={"energy_j": [None] * 6})
    energy = energy_per_epoch(load_run(path))
    # From epoch 2 on, the counter difference between epoch ends is exactly power * time.
    expected = [known.gpu_power_w * t for t in known.epoch_times[1:]]
    assert energy["energy_j"].tolist()[1:] == pytest.approx(expected)
    assert energy["energy_source"].iloc[0] == "measured:nvml (resources.csv)"


def test_controller_table(full_run: Path, plain_run: Path) -> None:
    table = controller_table(load_run(full_run))
    assert table["batch_size"].tolist() == [64, 32, 32, 32, 32, 32]
    assert table["accum_steps"].tolist() == [2] * 6
    assert table["changes"].tolist() == [1, 0, 1, 0, 0, 0]
    assert table["decisions"].tolist()[0] == "batch_size 64→32"
    assert table["decisions"].tolist()[2] == "lr 0.1→0.05"
    assert table["memory_score"].tolist()[0] == pytest.approx(0.82)
    assert controller_table(load_run(plain_run)).empty


def test_correlation_of_proportional_columns_is_one(full_run: Path) -> None:
    corr = correlation_matrix(load_run(full_run))
    assert corr.loc["time_s", "energy_j"] == pytest.approx(1.0)  # energy = 40 W * time
    assert corr.loc["time_s", "samples_per_s"] == pytest.approx(-1.0, abs=0.02)
    assert "epoch" not in corr.columns
    assert "avg_power_w" not in corr.columns  # constant
    assert "param_sparsity" not in corr.columns  # empty
    assert "mean_cpu_pct" in corr.columns  # per-epoch resource means join in


def test_correlation_needs_three_epochs(make_run: Callable[..., Path]) -> None:
    assert correlation_matrix(load_run(make_run("short", epochs=2))).empty


def test_strongest_pair_is_found() -> None:
    rng = np.random.default_rng(0)
    cpu = rng.normal(size=30)
    frame = pd.DataFrame(
        {
            "mean_cpu_pct": cpu,
            "val_acc": 0.5 + 0.1 * cpu,  # the only perfect cost/performance pair
            "train_loss": rng.normal(size=30),
            "time_s": rng.normal(size=30),
            "energy_j": 2 * rng.normal(size=30),
        }
    )
    frame["samples_per_s"] = -frame["time_s"]  # perfect, but cost vs cost: not a candidate
    pairs = strongest_pairs(frame.corr())
    assert (pairs.loc[0, "cost"], pairs.loc[0, "performance"]) == ("mean_cpu_pct", "val_acc")
    assert pairs.loc[0, "r"] == pytest.approx(1.0)
    assert set(pairs["performance"]) <= {"val_acc", "train_loss"}
    assert pairs["abs_r"].is_monotonic_decreasing
    assert strongest_pairs(pd.DataFrame()).empty


def test_totals_from_summary(full_run: Path, known: SimpleNamespace) -> None:
    totals = run_totals(load_run(full_run))
    total_time = known.setup_s + sum(known.epoch_times)
    assert totals["status"] == "completed"
    assert totals["epochs"] == 6
    assert totals["wall_time_s"] == pytest.approx(total_time)
    assert totals["total_energy_j"] == pytest.approx(known.gpu_power_w * sum(known.epoch_times))
    assert totals["energy_source"] == "measured:nvml"
    assert totals["avg_power_w"] == pytest.approx(totals["total_energy_j"] / total_time)
    assert totals["peak_rss_bytes"] == 623 * known.mib  # resources' proc RSS beats metrics' 560 MiB
    assert totals["peak_gpu_mem_bytes"] == 2 * known.gib
    assert totals["best_val_acc"] == pytest.approx(0.97)
    assert totals["best_epoch"] == 6
    assert totals["test_acc"] == pytest.approx(0.8)


def test_totals_fall_back_to_the_csv_files(
    make_run: Callable[..., Path], known: SimpleNamespace
) -> None:
    run = load_run(make_run("no-summary", status=None, adapt=False, gpu=False))
    totals = run_totals(run)
    assert totals["status"].startswith("unknown")
    assert totals["wall_time_s"] == pytest.approx(sum(known.epoch_times))
    assert totals["total_energy_j"] == pytest.approx(5.0 * sum(known.epoch_times))
    assert totals["energy_source"] == "estimated:cpu-tdp"
    assert totals["best_val_acc"] == pytest.approx(0.97)
    assert totals["peak_device_mem_bytes"] is None


def test_totals_show_the_memory_budget_outcome(make_run: Callable[..., Path]) -> None:
    path = make_run("budgeted", gpu=False)
    summary = json.loads((path / "summary.json").read_text())
    summary["adapt"] = {
        "policy": "budget",
        "budget_bytes": 160 * 2**20,
        "measured_peak_bytes": 117 * 2**20,
        "budget_violations": 0,
        "micro_batch_size": 128,
        "accum_steps": 2,
    }
    (path / "summary.json").write_text(json.dumps(summary))
    table = totals_table(load_run(path)).set_index("quantity")["text"]
    assert table["memory budget"] == "160.0 MiB"
    assert table["training memory peak (budgeted)"] == "117.0 MiB"
    assert table["steps over the budget"] == "0"
    assert table["micro-batch (last)"] == "128 x 2 accumulated"


def test_totals_without_a_budget_have_no_budget_rows(plain_run: Path) -> None:
    totals = run_totals(load_run(plain_run))
    assert totals["memory_budget_bytes"] is None and totals["micro_batch"] is None
    assert "memory budget" not in set(totals_table(load_run(plain_run))["quantity"])


def test_totals_table_marks_estimates(plain_run: Path, interrupted_run: Path) -> None:
    table = totals_table(load_run(plain_run)).set_index("quantity")
    assert table.loc["total energy", "text"].endswith("(estimated)")
    assert "peak device memory (allocated)" not in table.index
    interrupted = totals_table(load_run(interrupted_run)).set_index("quantity")
    assert interrupted.loc["status", "value"] == "interrupted"
    assert interrupted.loc["epochs completed", "value"] == 3


def test_activation_table(full_run: Path, plain_run: Path, known: SimpleNamespace) -> None:
    table = activation_table(load_run(full_run))
    assert list(table.columns) == ["epoch", "activation_bytes", "trainable_frac"]
    assert table["activation_bytes"].iloc[0] == 110 * known.mib
    assert activation_table(load_run(plain_run)).empty


def test_config_and_sensors(full_run: Path) -> None:
    run = load_run(full_run)
    config = dict(config_table(run).itertuples(index=False))
    assert config["optim.lr"] == "0.1"
    assert config["budget.energy"] == "null"
    assert config["data.augment"].startswith('["random_crop')
    sensors = sensors_table(run).set_index("name")
    assert not sensors.loc["rapl", "available"]
    assert flatten_mapping({"a": {"b": {"c": True}}, "d": {}}) == {"a.b.c": "true", "d": "{}"}


def test_labels_and_formatting(known: SimpleNamespace) -> None:
    assert axis_label("peak_rss_bytes", [2 * known.gib]) == (known.gib, "peak RSS (GiB)")
    assert axis_label("gpu_mem_bytes", [300 * known.mib]) == (known.mib, "GPU memory (MiB)")
    assert axis_label("val_acc", [0.9])[1] == "val accuracy (fraction)"
    assert axis_label("val_acc", [90.0])[1] == "val accuracy (%)"
    assert axis_label("mean_gpu_power_w")[1] == "mean GPU power (W)"
    assert format_value("peak_rss_bytes", 1536.0) == "1.5 KiB"
    assert format_value("lr", float("nan")) == "-"
    assert format_value("batch_size", 64.0) == "64"
