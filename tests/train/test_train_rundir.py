from __future__ import annotations

import json

import pytest

from edgetrain.errors import EdgeTrainError
from edgetrain.train.rundir import CsvLog, RunDir, read_csv_rows


def test_csv_rows_flushed_and_half_line_dropped(tmp_path):
    log = CsvLog(tmp_path / "m.csv", ["epoch", "loss", "note"])
    log.append({"epoch": 1, "loss": 0.5, "note": "a,b"})
    log.append({"epoch": 2, "loss": float("nan")})  # nan and missing -> empty
    # readable while still open (flushed), before close
    header, rows = read_csv_rows(tmp_path / "m.csv")
    assert header == ["epoch", "loss", "note"]
    assert rows == [
        {"epoch": "1", "loss": "0.5", "note": "a,b"},
        {"epoch": "2", "loss": "", "note": ""},
    ]
    log.close()
    with open(tmp_path / "m.csv", "a") as fh:
        fh.write("3,0.2")  # a kill in the middle of a write
    assert len(read_csv_rows(tmp_path / "m.csv")[1]) == 2


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_json("summary.json", {"status": "completed"})
    run.close()
    with pytest.raises(EdgeTrainError, match=r"already exists; use --resume .* or --overwrite"):
        RunDir(tmp_path / "r")
    assert RunDir(tmp_path / "r", "overwrite").read_json("summary.json") == {}
    with pytest.raises(EdgeTrainError, match="no checkpoint"):
        RunDir(tmp_path / "r", "resume")


def test_json_written_atomically(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_json("summary.json", {"a": 1})
    run.write_json("summary.json", {"a": 2})
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == {"a": 2}
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_truncate_log_keeps_selected_complete_rows(tmp_path):
    run = RunDir(tmp_path / "r")
    log = run.log("metrics.csv", ["epoch", "x"])
    for e in range(1, 5):
        log.append({"epoch": e, "x": e * 10})
    kept = run.truncate_log("metrics.csv", lambda r: int(r["epoch"]) <= 2)
    assert [r["epoch"] for r in kept] == ["1", "2"]
    run.log("metrics.csv", ["epoch", "x"]).append({"epoch": 3, "x": 1})
    assert [r["epoch"] for r in read_csv_rows(tmp_path / "r" / "metrics.csv")[1]] == ["1", "2", "3"]
