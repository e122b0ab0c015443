"""Phases marked with edgetrain.mark split a monitored command's energy (measure/phases.py)."""

from __future__ import annotations

import json
import sys

import pytest
from rich.console import Console

from edgetrain.mark import Mark
from edgetrain.measure.command import render_summary, run_monitored
from edgetrain.measure.phases import BEFORE_FIRST_MARK, PhaseRecorder, split_phases

CHILD = """
import time
from edgetrain.mark import mark
time.sleep(0.3)
mark("load")
time.sleep(0.4)
mark("train")
t = time.time()
while time.time() - t < 0.6:
    pass
mark("save")
time.sleep(0.2)
"""


def test_split_phases_interpolates_energy_at_the_edges():
    rec = PhaseRecorder()
    for t in range(11):  # 10 W: energy_j = 10 t
        rec({"t_s": float(t), "energy_j": 10.0 * t, "proc_rss_bytes": 100 + t})
    marks = [Mark(1002.5, "a"), Mark(1006.25, "b")]
    phases = split_phases(marks, origin_s=1000.0, end_s=10.0, recorder=rec)
    assert [p.label for p in phases] == [BEFORE_FIRST_MARK, "a", "b"]
    assert [p.start_s for p in phases] == [0.0, 2.5, 6.25]
    assert [p.energy_j for p in phases] == pytest.approx([25.0, 37.5, 37.5])
    assert [p.avg_power_w for p in phases] == pytest.approx([10.0, 10.0, 10.0])
    assert [p.peak_rss_bytes for p in phases] == [102, 106, 110]
    assert sum(p.energy_j for p in phases) == pytest.approx(100.0)
    assert split_phases([], 0.0, 10.0, rec) == []
    # marks before the window and after it are clipped; no energy gives None
    empty = PhaseRecorder()
    clipped = split_phases([Mark(-5.0, "x"), Mark(50.0, "y")], 0.0, 10.0, empty)
    assert [(p.label, p.start_s, p.end_s, p.energy_j) for p in clipped] == [
        ("x", 0.0, 10.0, None),
        ("y", 10.0, 10.0, None),
    ]


@pytest.mark.parametrize("with_out", [True, False])
def test_monitor_splits_energy_per_phase(tmp_path, with_out):
    out = tmp_path / "mon" if with_out else None
    result = run_monitored([sys.executable, "-c", CHILD], interval_s=0.05, out=out)
    assert result.status == "completed"
    phases = result.phases
    assert [p.label for p in phases] == [BEFORE_FIRST_MARK, "load", "train", "save"]
    # (start) holds the interpreter's start-up too, the last phase its exit
    assert phases[0].time_s >= 0.3 and phases[3].time_s >= 0.2
    assert [p.time_s for p in phases[1:3]] == pytest.approx([0.4, 0.6], abs=0.1)
    energies = [p.energy_j for p in phases]
    assert all(e is not None and e >= 0 for e in energies)
    assert sum(energies) == pytest.approx(result.window.energy_j, rel=1e-6)
    # the sleeping phases may see an idle machine (0 W above idle from the estimate); the
    # busy loop cannot
    assert all(p.avg_power_w is not None and p.avg_power_w >= 0 for p in phases)
    assert phases[2].avg_power_w > 0
    console = Console(width=140, record=True)
    console.print(render_summary(result))
    text = console.export_text()
    assert "phase train" in text and "phase (start)" in text
    if with_out:
        summary = json.loads((out / "summary.json").read_text())
        assert [p["label"] for p in summary["phases"]] == [p.label for p in phases]
        assert (out / "marks.tsv").read_text().count("\n") == 3
