"""A monitor directory (edgetrain monitor --out DIR -- CMD) is reported as a run, one phase an epoch."""

from __future__ import annotations

import sys

import pytest

from edgetrain.measure.command import run_monitored
from edgetrain.report import detect_kind, load_run, make_report, plot_resources

CHILD = """
import time
from edgetrain.mark import mark
for label in ("load", "epoch 1", "epoch 2"):
    mark(label)
    t = time.time()
    while time.time() - t < 0.3:
        pass
"""


@pytest.mark.parametrize("marked", [True, False])
def test_monitor_directory_report(tmp_path, marked):
    out = tmp_path / "mon"
    code = CHILD if marked else "import time; time.sleep(0.5)"
    result = run_monitored([sys.executable, "-c", code], interval_s=0.05, out=out)
    assert detect_kind(out) == "run"
    run = load_run(out)
    labels = ["(start)", "load", "epoch 1", "epoch 2"] if marked else ["command"]
    assert run.metrics["phase"].tolist() == labels
    assert run.metrics["epoch"].tolist() == [float(i + 1) for i in range(len(labels))]
    assert run.metrics["energy_j"].sum() == pytest.approx(result.window.energy_j, rel=1e-6)
    assert run.resources["epoch"].notna().all()
    report = make_report(out)
    names = sorted(p.name for p in report.iterdir())
    print(names)
    assert "report.pdf" in names and "resources.png" in names and "energy.png" in names
    assert plot_resources(out).name == "resources.png"
