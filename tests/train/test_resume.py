"""A run killed with SIGKILL mid-epoch, then resumed, ends like an uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

import edgetrain
from edgetrain.safefs import DirLock
from edgetrain.train.rundir import METRICS_COLUMNS

CONFIG = {
    "model": "cnn",
    "data": "digits",
    "epochs": 4,
    "batch_size": 64,
    "lr": 0.05,
    "lr_schedule": "cosine",
    "augmentation": "flip",
    "monitor": {"interval_s": 0.05},
}

KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import edgetrain
    from edgetrain.train import Callback

    class Kill(Callback):
        def on_batch_end(self, state):
            if state.epoch == 2 and state.batch_in_epoch == 5:
                os.kill(os.getpid(), signal.SIGKILL)

    config = dict(eval(sys.argv[2]), out=sys.argv[1])
    edgetrain.train(config, callbacks=[Kill()], progress=False)
    """
)


@pytest.mark.keep
@pytest.mark.slow
def test_kill_then_resume_matches_uninterrupted(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "killed"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), str(run), repr(CONFIG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr
    partial = pd.read_csv(run / "metrics.csv")
    assert partial["epoch"].tolist() == [1, 2]  # epoch 3 was cut short
    # the killed process could not say so: its summary still says running, and its lock is
    # free (the kernel released it), which is how readers tell a dead run from a live one
    assert '"status": "running"' in (run / "summary.json").read_text()
    assert DirLock.is_free(run)

    resumed = subprocess.run(
        [sys.executable, "-m", "edgetrain", "train", "--resume", str(run), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    reference = edgetrain.train({**CONFIG, "out": str(tmp_path / "ref")}, progress=False)

    got = pd.read_csv(run / "metrics.csv")
    assert list(got.columns) == list(METRICS_COLUMNS)
    assert got["epoch"].tolist() == [1, 2, 3, 4]  # no duplicated or missing epochs
    cols = ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    pd.testing.assert_frame_equal(
        got[cols], reference.history[cols].astype(float), check_exact=True
    )
    a = torch.load(run / "model.pt")
    b = reference.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
    summary = (run / "summary.json").read_text()
    assert '"status": "completed"' in summary
    res = pd.read_csv(run / "resources.csv")
    assert res["t_s"].is_monotonic_increasing
    assert set(res["epoch"].dropna().astype(int)) <= {1, 2, 3, 4}
