"""Per-batch timing: a known delay in the data set shows up as stall, and only then."""

from __future__ import annotations

import pytest

from edgetrain.bench.timing import BatchTimer
from edgetrain.train import train

DELAY_S = 0.01  # per item
BATCH = 4  # -> at least 40 ms of fetching per batch


def _train(module: str, *, delay_s: float, workers: int = 0, model_delay_s: float = 0.0, n=32):
    timer = BatchTimer()
    config = {
        "model": f"{module}:net",
        "model_args": {"delay_s": model_delay_s},
        "data": f"{module}:make",
        "data_args": {"n": n, "delay_s": delay_s},
        "epochs": 1,
        "batch_size": BATCH,
        "split": [1.0, 0.0, 0.0],
        "preprocessing": "none",  # statistics would read every slow item once
        "num_workers": workers,
        "monitor": {"enabled": False},
        "out": "run",
    }
    train(config, callbacks=[timer], overwrite=True, progress=False)
    return timer


def _slow_config(slow_module: str) -> dict:
    """Two epochs of two batches of the slow test model, monitor off, into ./run."""
    return {
        "model": f"{slow_module}:net",
        "data": f"{slow_module}:make",
        "data_args": {"n": 8},
        "epochs": 2,
        "batch_size": 4,
        "split": [1.0, 0.0, 0.0],
        "preprocessing": "none",
        "monitor": {"enabled": False},
        "out": "run",
    }


def test_slow_data_set_stalls_every_batch(slow_module):
    timer = _train(slow_module, delay_s=DELAY_S)
    assert len(timer.batches) == 8
    for record in timer.batches:
        assert record.stall_s == record.wait_s
        # time.sleep guarantees the lower bound: BATCH items of DELAY_S each
        assert record.stall_s >= 0.95 * BATCH * DELAY_S
    epoch = timer.epochs[0]
    assert epoch.stall_s == pytest.approx(sum(r.stall_s for r in timer.batches))
    assert epoch.batches == 8 and epoch.samples == 32


def test_fast_data_set_has_no_stall(slow_module):
    timer = _train(slow_module, delay_s=0.0)
    mean_stall_s = sum(r.stall_s for r in timer.batches) / len(timer.batches)
    assert mean_stall_s < 0.25 * BATCH * DELAY_S  # far below what the slow set costs


def test_workers_hide_the_delay_behind_slower_compute(slow_module):
    # two workers make a batch every 20 ms on average; each step computes for >= 60 ms,
    # so after the pipeline has filled the data are always ready
    timer = _train(slow_module, delay_s=DELAY_S, workers=2, model_delay_s=0.06, n=24)
    first, rest = timer.batches[0], timer.batches[1:]
    assert first.stall_s >= 0.95 * BATCH * DELAY_S  # nothing to overlap the first fetch with
    assert all(r.compute_s >= 0.06 for r in rest)
    assert sum(r.stall_s for r in rest) / len(rest) < 0.25 * BATCH * DELAY_S


def test_components_add_up_to_the_training_wall_time(slow_module):
    timer = _train(slow_module, delay_s=DELAY_S)
    epoch = timer.epochs[0]
    parts = epoch.wait_s + epoch.copy_s + epoch.compute_s
    # the parts are disjoint pieces of the span they are compared with
    assert parts <= epoch.train_wall_s + 1e-9
    assert epoch.accounted_frac == pytest.approx(parts / epoch.train_wall_s)
    assert epoch.accounted_frac > 0.9
    assert epoch.loader_start_s >= 0.0


def test_timer_turns_on_sync_timing_and_numbers_from_one(slow_module):
    seen = []

    class Probe(BatchTimer):
        def on_epoch_start(self, state):
            seen.append(state.sync_timing)
            super().on_epoch_start(state)

    timer = Probe()
    rows = []
    timer.on_batch = rows.append
    train(
        _slow_config(slow_module),
        callbacks=[timer],
        overwrite=True,
        progress=False,
    )
    assert seen == [True, True]
    assert [(r.epoch, r.batch) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert [e.epoch for e in timer.epochs] == [1, 2]


def test_rows_are_handed_on_at_epoch_end_and_on_interrupt(slow_module):
    delivered = []

    class Stop(BatchTimer):
        def on_batch_end(self, state):
            super().on_batch_end(state)
            delivered.append(("batch", len(rows)))
            if state.epoch == 1 and state.batch_in_epoch == 1:
                raise KeyboardInterrupt

    rows = []
    timer = Stop(on_batch=rows.append)
    with pytest.raises(KeyboardInterrupt):
        train(
            _slow_config(slow_module),
            callbacks=[timer],
            overwrite=True,
            progress=False,
        )
    # nothing is written inside the loop; epoch 1's rows at its end; epoch 2's on interrupt
    assert delivered == [("batch", 0), ("batch", 0), ("batch", 2)]
    assert [(r.epoch, r.batch) for r in rows] == [(1, 1), (1, 2), (2, 1)]


def test_live_hands_each_record_on_at_once(slow_module):
    rows = []
    timer = BatchTimer(on_batch=rows.append, live=True)

    class Probe(BatchTimer):
        def on_batch_end(self, state):
            assert len(rows) == len(timer.batches)

    train(
        {**_slow_config(slow_module), "epochs": 1},
        callbacks=[timer, Probe()],
        overwrite=True,
        progress=False,
    )
    assert len(rows) == 2
