"""resources.csv writer and atomic JSON."""

from __future__ import annotations

import json
from pathlib import Path

from edgetrain.measure import ResourcesCsv, resources_columns, write_json_atomic


def test_rows_are_flushed_one_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "run" / "resources.csv"
    columns = resources_columns(["t_s", "cpu_pct", "proc_rss_bytes", "energy_j"])
    assert columns == ["t_s", "epoch", "cpu_pct", "proc_rss_bytes", "energy_j"]
    writer = ResourcesCsv(path, columns)
    writer.write(
        {"t_s": 0.1234567891, "cpu_pct": 50.0, "proc_rss_bytes": 1048576.0, "other_w": 1.0}
    )
    # readable while still open (a run killed now leaves a valid file)
    assert path.read_text().splitlines() == [
        "t_s,epoch,cpu_pct,proc_rss_bytes,energy_j",
        "0.123457,,50,1048576,",
    ]
    writer({"t_s": 0.3, "energy_j": float("nan")}, epoch=2)
    writer.close()
    assert path.read_text().splitlines()[-1] == "0.3,2,,,"


def test_appending_keeps_the_existing_header(tmp_path: Path) -> None:
    path = tmp_path / "resources.csv"
    with ResourcesCsv(path, ["t_s", "epoch", "cpu_pct"]) as writer:
        writer.write({"t_s": 1.0, "cpu_pct": 5.0}, epoch=0)
    with ResourcesCsv(path, ["t_s", "epoch", "gpu_power_w", "cpu_pct"]) as writer:
        writer.write({"t_s": 2.0, "cpu_pct": 6.0, "gpu_power_w": 1.0}, epoch=1)
    assert path.read_text().splitlines() == ["t_s,epoch,cpu_pct", "1,0,5", "2,1,6"]


def test_json_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2, "b": [1.5, None]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1.5, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
