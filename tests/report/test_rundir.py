"""Reading run directories: missing files, empty columns, cut-off rows, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.report import KINDS, detect_kind, load_run
from edgetrain.report.rundir import METRICS_COLUMNS, read_csv_rows


def test_full_run_is_read_with_every_file(full_run: Path) -> None:
    run = load_run(full_run)
    assert run.name == "full"
    assert list(run.metrics.columns) == list(METRICS_COLUMNS)
    assert run.metrics["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert run.metrics["energy_source"].tolist() == ["measured:nvml"] * 6
    assert {"gpu_util_pct", "gpu_mem_bytes", "gpu1_util_pct", "energy_j"} <= set(run.resources)
    assert len(run.decisions) == 4
    assert run.decisions["parameter"].tolist()[0] == "batch_size"
    assert run.decisions["old"].tolist()[0] == 64
    assert run.summary["status"] == "completed"
    assert run.config["optim"]["lr"] == 0.1
    assert run.env["versions"]["torch"] == "2.5.1"
    assert run.problems == ()


def test_optional_columns_are_empty_not_missing(plain_run: Path) -> None:
    run = load_run(plain_run)
    assert run.metrics["peak_device_mem_bytes"].isna().all()
    assert run.metrics["activation_bytes"].isna().all()
    assert "gpu_util_pct" not in run.resources.columns
    assert run.decisions.empty


def test_interrupted_run_drops_cut_rows(interrupted_run: Path) -> None:
    run = load_run(interrupted_run)
    assert run.metrics["epoch"].tolist() == [1, 2, 3]  # epoch 4 was cut mid-line
    assert run.resources["t_s"].is_monotonic_increasing
    assert run.summary["status"] == "interrupted"
    assert len(run.problems) == 2
    assert all("dropped 1 incomplete row" in problem for problem in run.problems)


def test_rows_with_wrong_field_count_and_bad_numbers(tmp_path: Path) -> None:
    path = tmp_path / "resources.csv"
    path.write_text("t_s,epoch,cpu_pct\n0,1,50\n0.5,1\n1.0,1,oops\n1.5,2,70\n", encoding="utf-8")
    problems: list[str] = []
    frame = read_csv_rows(path, ("t_s", "epoch", "cpu_pct"), problems)
    assert frame["t_s"].tolist() == [0, 1.0, 1.5]
    assert frame["cpu_pct"].isna().tolist() == [False, True, False]
    assert any("dropped 1" in p for p in problems)
    assert any("not numbers" in p for p in problems)


def test_unterminated_quote_at_the_end_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "decisions.csv"
    path.write_text('epoch,reason\n1,"ok, fine"\n2,"cut in the mid', encoding="utf-8")
    frame = read_csv_rows(path, ("epoch", "reason"))
    assert frame["reason"].tolist() == ["ok, fine"]


def test_missing_and_empty_files_give_empty_tables(tmp_path: Path) -> None:
    assert read_csv_rows(tmp_path / "absent.csv", ("a", "b")).columns.tolist() == ["a", "b"]
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    assert read_csv_rows(tmp_path / "empty.csv", ("a",)).empty


def test_run_without_metrics_has_empty_metrics(make_run: Callable[..., Path]) -> None:
    path = make_run("early")
    (path / "metrics.csv").unlink()
    run = load_run(path)
    assert run.metrics.empty
    assert list(run.metrics.columns) == list(METRICS_COLUMNS)


def test_repeated_epochs_keep_the_last_row(make_run: Callable[..., Path]) -> None:
    path = make_run("resumed", epochs=3, metrics_overrides={"epoch": [1, 2, 2]})
    run = load_run(path)
    assert run.metrics["epoch"].tolist() == [1, 2]
    assert run.metrics["time_s"].tolist() == [10.0, 11.0]


def test_broken_summary_is_a_problem_not_a_crash(make_run: Callable[..., Path]) -> None:
    path = make_run("broken")
    (path / "summary.json").write_text('{"status": "compl', encoding="utf-8")
    (path / "env.json").write_text(json.dumps([1, 2]), encoding="utf-8")
    run = load_run(path)
    assert run.summary == {}
    assert run.env == {}
    assert any("summary.json could not be read" in p for p in run.problems)
    assert any("env.json holds a list" in p for p in run.problems)


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(EdgeTrainError, match="nowhere does not exist"):
        load_run(missing)


def test_not_a_run_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(EdgeTrainError, match=r"is not a run directory \(no metrics.csv\)"):
        load_run(tmp_path)
    with pytest.raises(EdgeTrainError, match="is a file"):
        load_run(tmp_path / "notes.txt")


def test_detect_kind(tmp_path: Path, make_run: Callable[..., Path]) -> None:
    run = make_run("one")
    make_run("two")
    assert detect_kind(run) == "run"
    assert detect_kind(tmp_path) == "compare"
    sweep = tmp_path / "sweep"
    (sweep / "trials").mkdir(parents=True)
    assert detect_kind(sweep) == "sweep"
    assert detect_kind(sweep / "trials") == "unknown"


def test_detect_every_kind(
    tmp_path: Path, sweep_dir: Path, bench_dir: Path, sparse_dir: Path
) -> None:
    assert detect_kind(sweep_dir) == "sweep"
    assert detect_kind(sweep_dir / "analysis") == "sweep"  # the analysis tables themselves
    assert detect_kind(bench_dir) == "bench"
    assert detect_kind(sparse_dir) == "sparse-compare"
    assert detect_kind(sweep_dir / "trials" / "2") == "run"
    assert set(KINDS) == {"run", "sweep", "bench", "sparse-compare", "compare"}
    # only an analysis table: still a sweep
    (tmp_path / "only-analysis" / "analysis").mkdir(parents=True)
    (tmp_path / "only-analysis" / "analysis" / "trials.csv").write_text("number\n0\n")
    assert detect_kind(tmp_path / "only-analysis") == "sweep"
    # a summary.csv alone is not a benchmark; with stall columns it is
    other = tmp_path / "other"
    other.mkdir()
    (other / "summary.csv").write_text("config,status\n0,completed\n")
    assert detect_kind(other) == "unknown"
    (other / "summary.csv").write_text("config,status,stall_s_mean\n0,completed,0.1\n")
    assert detect_kind(other) == "bench"
    # a results.csv without a scheme column is not a sparse-update comparison
    results = tmp_path / "results"
    results.mkdir()
    (results / "results.csv").write_text("a,b\n1,2\n")
    assert detect_kind(results) == "unknown"
    (results / "runs.csv").write_text("scheme,budget,seed\nfull,,0\n")
    assert detect_kind(results) == "sparse-compare"
