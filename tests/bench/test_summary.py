"""Warm-up exclusion, mean and standard deviation, and the plot's table."""

from __future__ import annotations

import pandas as pd
import pytest
from rich.console import Console

from edgetrain.bench.plot import breakdown_table, draw_breakdown
from edgetrain.bench.summary import summarize_epochs, summary_columns, summary_table


def _epochs():
    return pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "stall_s": [10.0, 1.0, 3.0, 2.0],
            "copy_s": [0.5, 0.1, 0.1, 0.1],
            "compute_s": [20.0, 4.0, 4.0, 4.0],
            "accounted_frac": [0.99, 1.0, 1.0, 1.0],
            "energy_j": [None, None, None, None],
            "energy_source": [None, "measured:nvml", "measured:nvml", None],
        }
    )


def test_warmup_epoch_is_left_out_and_shown_apart():
    s = summarize_epochs(_epochs(), warmup_epochs=1)
    assert s["measured_epochs"] == 3 and s["warmup_epochs"] == 1
    assert s["stall_s_mean"] == pytest.approx(2.0)
    assert s["stall_s_std"] == pytest.approx(1.0)  # sample std of 1, 3, 2
    assert s["warmup_stall_s"] == pytest.approx(10.0)
    assert s["warmup_compute_s"] == pytest.approx(20.0)
    assert s["compute_s_std"] == pytest.approx(0.0)
    assert s["stall_frac"] == pytest.approx(2.0 / 6.1)
    assert s["energy_j_mean"] is None and s["warmup_energy_j"] is None
    assert s["energy_source"] == "measured:nvml"
    assert s["peak_rss_bytes_mean"] is None  # column absent: empty, not an error


def test_two_warmup_epochs_and_one_measured():
    s = summarize_epochs(_epochs(), warmup_epochs=2)
    assert s["stall_s_mean"] == pytest.approx(2.5)
    assert s["warmup_stall_s"] == pytest.approx(5.5)
    assert s["measured_epochs"] == 2


def test_no_warmup():
    s = summarize_epochs(_epochs().iloc[1:2], warmup_epochs=0)
    assert s["stall_s_mean"] == 1.0 and s["stall_s_std"] is None
    assert s["warmup_stall_s"] is None


def _summary():
    rows = [
        {"config": 0, "status": "completed", "num_workers": 0, "stall_s_mean": 2.0,
         "copy_s_mean": 0.1, "compute_s_mean": 4.0, "energy_source": "estimated:cpu-tdp"},
        {"config": 1, "status": "completed", "num_workers": 2, "stall_s_mean": 0.5,
         "copy_s_mean": None, "compute_s_mean": 4.2},
        {"config": 2, "status": "failed", "num_workers": 4, "note": "boom"},
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=summary_columns(["num_workers"]))


def test_breakdown_table_holds_the_means_of_completed_configurations():
    table = breakdown_table(_summary(), ["num_workers"])
    assert list(table.index) == ["0: num_workers=0", "1: num_workers=2"]
    assert list(table.columns) == ["stall_s", "copy_s", "compute_s"]
    assert table.loc["0: num_workers=0"].tolist() == [2.0, 0.1, 4.0]
    assert table.loc["1: num_workers=2", "copy_s"] == 0.0


def test_plot_is_written(tmp_path):
    path = draw_breakdown(breakdown_table(_summary(), ["num_workers"]), tmp_path / "b.png")
    assert path.stat().st_size > 1000


def test_rich_table_renders_every_configuration():
    console = Console(width=200, record=True)
    console.print(summary_table(_summary(), ["num_workers"]))
    text = console.export_text()
    assert "num_workers=2" in text and "failed" in text
    assert "estimated:cpu-tdp (an estimate, not a measurement)" in text


def test_summary_columns_hold_mean_std_and_warmup():
    cols = summary_columns(["batch_size"])
    assert cols[:4] == ["config", "status", "note", "batch_size"]
    for name in ("stall_s_mean", "stall_s_std", "warmup_stall_s", "energy_j_mean", "run_dir"):
        assert name in cols
    assert len(cols) == len(set(cols))
