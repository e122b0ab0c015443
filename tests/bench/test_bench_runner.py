"""The bench workflow end to end on a tiny grid: files, columns, warm-up, eviction, CLI."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from edgetrain.bench import run_bench
from edgetrain.bench.summary import summary_columns
from edgetrain.bench.timing import BATCH_COLUMNS
from edgetrain.cli import main
from edgetrain.errors import EdgeTrainError


@pytest.fixture
def advised(monkeypatch):
    calls = []
    real = os.posix_fadvise

    def record(fd, offset, length, advice):
        calls.append(os.fstat(fd).st_ino)
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    return calls


def test_grid_run_writes_every_file(tiny_config, tmp_path, advised, no_drop_caches):
    lines = []
    result = run_bench(
        tiny_config,
        ["batch_size=8,16"],
        drop_cache=True,
        out=tmp_path / "b",
        progress=lines.append,
        drop_caches_path=no_drop_caches,
    )
    out = tmp_path / "b"
    for name in ("batches.csv", "epochs.csv", "summary.csv", "device.json", "breakdown.png"):
        assert (out / name).exists(), name
    # the in-memory synthetic set was exported and read from files
    files = sorted((out / "data").rglob("*.npy"))
    assert len(files) == 48
    assert any("exported 48 samples" in n for n in result.notes)
    # every data file was evicted once per configuration, without root
    assert sorted(advised) == sorted([f.stat().st_ino for f in files] * 2)

    batches = pd.read_csv(out / "batches.csv")
    assert list(batches.columns) == ["config", *BATCH_COLUMNS]
    assert len(batches) == 2 * (48 // 8) + 2 * (48 // 16)  # 2 epochs each
    assert (batches["stall_s"] == batches["wait_s"]).all()

    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) == 4
    assert epochs["warmup"].tolist() == [True, False, True, False]
    assert epochs["energy_source"].notna().all() or epochs["energy_source"].isna().all()

    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == summary_columns(["batch_size"])
    assert summary["status"].tolist() == ["completed", "completed"]
    assert summary["batch_size"].tolist() == [8, 16]
    for k in (0, 1):
        measured = epochs[(epochs["config"] == k) & (epochs["epoch"] == 2)]
        warm = epochs[(epochs["config"] == k) & (epochs["epoch"] == 1)]
        row = summary[summary["config"] == k].iloc[0]
        assert row["stall_s_mean"] == pytest.approx(measured["stall_s"].iloc[0])
        assert row["warmup_stall_s"] == pytest.approx(warm["stall_s"].iloc[0])
        assert row["compute_s_mean"] == pytest.approx(measured["compute_s"].iloc[0])
        assert row["measured_epochs"] == 1 and row["warmup_epochs"] == 1
        assert row["cache_method"] == "fadvise"
        assert (out / "runs" / str(k) / "metrics.csv").exists()  # a normal run directory

    device = json.loads((out / "device.json").read_text())
    assert device["bench"]["epochs"] == 2 and device["bench"]["drop_cache"] is True
    assert str(out / "data") in device["storage"]
    assert {"cpu", "jetson", "nvidia", "versions"} <= set(device)
    assert len([ln for ln in lines if ln.startswith("[")]) == 4  # start and result per config


def test_rerun_needs_overwrite_and_reuses_the_export(tiny_config, tmp_path):
    out = tmp_path / "b"
    run_bench(tiny_config, out=out, epochs=2, warmup_epochs=1)
    with pytest.raises(EdgeTrainError, match="already holds results"):
        run_bench(tiny_config, out=out)
    result = run_bench(tiny_config, out=out, overwrite=True)
    assert any("reused the export in" in n for n in result.notes)
    assert result.summary["cache_method"].tolist() == ["kept"]


def test_in_memory_without_export(tiny_config, tmp_path):
    result = run_bench(tiny_config, out=tmp_path / "m", export=False, drop_cache=True)
    assert result.summary["cache_method"].tolist() == ["none (in memory)"]
    assert any("held in memory: no file I/O" in n for n in result.notes)
    assert not (tmp_path / "m" / "data").exists()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"epochs": 2, "warmup_epochs": 2}, "warmup_epochs must be < epochs"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"cache_method": "drop"}, "cache_method must be one of"),
        ({"grid": ["batch_size=8,sixteen"]}, "--grid 'batch_size=8,sixteen'"),
    ],
)
def test_bad_settings(tiny_config, kwargs, fragment):
    with pytest.raises(EdgeTrainError, match=fragment):
        run_bench(tiny_config, **kwargs)


def test_unknown_bench_section_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("bench:\n  epoch: 3\n")
    with pytest.raises(EdgeTrainError, match=r"unknown key 'bench.epoch'.*did you mean 'epochs'"):
        run_bench(path)


def test_cli_prints_the_table(tiny_config, tmp_path, capsys):
    main(
        [
            "bench", str(tiny_config), "--grid", "num_workers=0", "--epochs", "2",
            "--drop-cache", "--cache-method", "fadvise", "--out", str(tmp_path / "c"),
        ]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert "stall s" in captured.out and "num_workers=0" in captured.out
    assert "warm-up" in captured.out
    assert "[1/1] num_workers=0: done" in captured.err


def test_cli_grid_error_is_one_line(tiny_config, capsys):
    with pytest.raises(SystemExit) as info:
        main(["bench", str(tiny_config), "--grid", "num_worker=0,2"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "--grid 'num_worker=0,2': unknown config key" in err
    assert "did you mean 'num_workers'" in err
