"""The benchmark report: time breakdown, throughput, energy per sample, warm-up, device."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

from edgetrain.report import bench as bn
from edgetrain.report import bench_figures as bfig
from edgetrain.report import load_bench, make_report

SHEETS = [
    "overview",
    "configurations",
    "time_breakdown",
    "throughput_energy",
    "warmup",
    "summary",
    "epochs",
    "batches",
    "device",
    "cpus",
]


@pytest.fixture(scope="module")
def bench(bench_dir: Path) -> bn.Bench:
    return load_bench(bench_dir)


def test_load_finds_grid_and_warmup(bench: bn.Bench) -> None:
    assert bench.grid_keys == ["num_workers"]
    assert bench.warmup_epochs == 1
    assert bench.summary["status"].tolist() == ["completed", "completed", "failed"]
    assert len(bench.epochs) == 6 and len(bench.batches) == 18
    assert bench.energy_sources == ["estimated:cpu-tdp"]


def test_overview_and_configurations(bench: bn.Bench) -> None:
    overview = dict(bn.bench_overview(bench).itertuples(index=False))
    assert overview["configurations"] == "3 (2 completed, 1 failed)"
    assert overview["grid"] == "num_workers = 0, 2, 4"
    assert overview["epochs per configuration"] == "3"
    assert overview["energy source"] == "estimated:cpu-tdp (an estimate, not a measurement)"
    configs = bn.configurations_table(bench)
    assert configs["settings"].tolist() == ["num_workers=0", "num_workers=2", "num_workers=4"]
    assert configs["page_cache"].iloc[0] == "fadvise resident 100%→0%"
    assert configs["note"].iloc[2] == "out of memory"


def test_time_breakdown(bench: bn.Bench) -> None:
    table = bn.time_breakdown(bench)
    assert table["label"].tolist() == ["0: num_workers=0", "1: num_workers=2"]  # failed one out
    first = table.iloc[0]
    assert [first[p] for p in bn.BREAKDOWN_PARTS] == [0.05, 0.5, 0.1, 2.0]
    assert first["rest_s"] == pytest.approx(3.0 - 2.65)
    assert first["stall_s_std"] == pytest.approx(0.1)
    assert first["stall_frac"] == pytest.approx(0.5 / 2.6)
    assert table["rest_s"].iloc[1] == pytest.approx(2.6 - 2.5)


def test_throughput_and_energy_per_sample(bench: bn.Bench) -> None:
    table = bn.throughput_energy(bench).set_index("config")
    # measured epochs 2 and 3: 27 J and 33 J over 300 samples each
    assert table.loc[0, "energy_per_sample_j"] == pytest.approx(0.1)
    assert table.loc[0, "energy_per_sample_j_std"] == pytest.approx(np.std([0.09, 0.11], ddof=1))
    assert table.loc[1, "energy_per_sample_j"] == pytest.approx(26 / 300)
    assert table.loc[0, "samples_per_epoch"] == 300
    assert table.loc[0, "samples_per_s"] == 100.0
    assert table.loc[0, "avg_power_w"] == 10.0


def test_energy_per_sample_without_epochs_csv(bench: bn.Bench) -> None:
    bare = bn.Bench(bench.path, bench.summary, pd.DataFrame(), pd.DataFrame(), {}, ["num_workers"])
    table = bn.throughput_energy(bare).set_index("config")
    assert table.loc[0, "energy_per_sample_j"] == pytest.approx(30.0 / (100.0 * 3.0))
    assert np.isnan(table.loc[0, "energy_per_sample_j_std"])
    assert bn.batch_times(bare).empty and bn.epoch_series(bare).empty


def test_warmup_against_measured(bench: bn.Bench) -> None:
    table = bn.warmup_comparison(bench)
    row = table[(table["config"] == 0) & (table["metric"] == "epoch_time_s")].iloc[0]
    assert (row["warmup"], row["measured"], row["ratio"]) == (6.0, 3.0, 2.0)
    epochs = bn.epoch_series(bench)
    assert epochs["warmup"].tolist() == [True, False, False] * 2
    batches = bn.batch_times(bench)
    assert len(batches) == 12 and batches["epoch"].min() == 2  # warm-up batches left out


def test_device_tables(bench: bn.Bench) -> None:
    tables = bn.device_tables(bench)
    settings = dict(tables["settings"].itertuples(index=False))
    assert settings["cpu.governors"] == '["performance"]'
    assert settings["nvidia.reason"] == "no NVIDIA GPU"
    assert "cpu.cpus" not in settings
    assert tables["cpus"]["governor"].tolist() == ["performance", "performance"]
    assert dict(tables["bench"].itertuples(index=False))["warmup_epochs"] == "1"


def test_bench_report(bench_dir: Path) -> None:
    out = make_report(bench_dir)
    assert out == bench_dir / "report"
    assert {p.name for p in out.glob("*.png")} == {f"{n}.png" for n in bn.BENCH_FIGURES}
    # 1 title page + 1 device page + 4 figures + 1 page of tables
    pdf = (out / "report.pdf").read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 7
    workbook = openpyxl.load_workbook(out / "report.xlsx", read_only=True)
    assert workbook.sheetnames == SHEETS


def test_figures_skip_empty_tables_and_show_units(bench: bn.Bench) -> None:
    empty = pd.DataFrame()
    assert bfig.breakdown_figure(bn.time_breakdown(bench).iloc[0:0], "b") is None
    assert bfig.throughput_figure(bn.throughput_energy(bench).iloc[0:0], "b", []) is None
    assert bfig.warmup_figure(bn.epoch_series(bench).iloc[0:0], empty, "b", 1) is None
    assert bfig.batches_figure(bn.batch_times(bench).iloc[0:0], "b") is None
    figure = bfig.breakdown_figure(bn.time_breakdown(bench), "b")
    ax = figure.axes[0]
    assert ax.get_xlabel() == "time per measured epoch (s)"
    assert ax.get_xlim()[0] == 0 and ax.get_xlim()[1] > 3.0 + 0.3
    figure = bfig.throughput_figure(bn.throughput_energy(bench), "b", ["estimated:cpu-tdp"])
    labels = [ax.get_xlabel() for ax in figure.axes]
    assert labels == ["throughput (samples/s)", "energy per training sample (mJ, estimated)"]
