"""TensorBoard and MLflow loggers, read back with the real libraries (skipped without them)."""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import Blobs, tiny_net

import edgetrain
from edgetrain.config.log import LogConfig
from edgetrain.contract import DECISIONS_COLUMNS, DECISIONS_FILE
from edgetrain.errors import DivergedError, EdgeTrainError, MissingExtraError
from edgetrain.train import Callback, TrainState
from edgetrain.train.features.loggers import (
    MLflowCallback,
    TensorBoardCallback,
    epoch_scalars,
    flatten_config,
    logger_callbacks,
    mlflow_name,
    tensorboard_tag,
)

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="needs the tensorboard extra"
)
needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None, reason="needs the mlflow extra"
)

QUIET = {"progress": False, "monitor": {"enabled": False}}


def _fit(out, callbacks, epochs=3, **config):
    settings = {"epochs": epochs, "batch_size": 16, "lr": 0.1, **QUIET, **config}
    return edgetrain.fit(
        tiny_net(), Blobs(), Blobs(n=48, seed=1), out=out, callbacks=callbacks, **settings
    )


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A local MLflow file store in tmp_path, and a client reading it."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    # MLflow 3 keeps the file store behind this switch; no telemetry from tests
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    uri = (tmp_path / "mlruns").as_uri()
    return uri, MlflowClient(tracking_uri=uri)


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _texts(acc, tag):
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]


def _history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


class _Costs(Callback):
    """Fills the monitor's columns with known values (the loggers only read the row)."""

    def on_epoch_end(self, state: TrainState) -> None:
        epoch = state.epoch + 1
        state.epoch_row.update(
            energy_j=10.0 * epoch,
            energy_source="estimated:cpu-tdp",
            avg_power_w=5.0 + epoch,
            peak_rss_bytes=2**20 * (100 + epoch),
            peak_device_mem_bytes=None,  # no GPU: the column stays empty
        )


class _Decide(Callback):
    """Writes decisions.csv rows the way the budget controller does (one before epoch 1)."""

    def _write(self, state: TrainState, epoch: int, parameter: str, old, new) -> None:
        row = {"epoch": epoch, "step": state.step, "chosen": parameter or "batch_size"}
        row.update(parameter=parameter, old=old, new=new, reason=f"test {epoch} | piped")
        state.run.log(DECISIONS_FILE, DECISIONS_COLUMNS).append(row)

    def on_fit_start(self, state: TrainState) -> None:
        self._write(state, 0, "micro_batch_size", 16, 8)

    def on_epoch_end(self, state: TrainState) -> None:
        epoch = state.epoch + 1
        if epoch == 2:
            self._write(state, epoch, "", None, None)  # a 'keep' row
        if epoch == 3:
            self._write(state, epoch, "lr", 0.1, 0.05)


class _Raise(Callback):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch == 1:
            raise self.error


# -- what is logged ---------------------------------------------------------------------


def test_epoch_scalars_keep_numbers_only():
    row = {
        "epoch": 2,
        "train_loss": 0.5,
        "val_acc": np.float32(0.75),
        "batch_size": np.int64(16),
        "energy_j": None,
        "energy_source": "estimated:cpu-tdp",
        "flag": True,
        "lr": torch.tensor(0.01),
        "vector": torch.ones(2),
        "nan_loss": float("nan"),
    }
    out = epoch_scalars(row)
    assert list(out) == ["train_loss", "val_acc", "batch_size", "lr", "nan_loss"]
    assert out["batch_size"] == 16.0 and out["lr"] == pytest.approx(0.01)
    assert math.isnan(out["nan_loss"])


def test_flatten_config_dots_sections_and_writes_json_values():
    flat = flatten_config(
        {
            "lr": 0.1,
            "out": "runs/a",
            "split": [0.8, 0.1, 0.1],
            "init_from": None,
            "compile": False,
            "model_args": {},
            "adapt": {"policy": "edgetrain", "weights": {"batch_size": 0.4}},
        }
    )
    assert flat == {
        "lr": "0.1",
        "out": "runs/a",
        "split": "[0.8, 0.1, 0.1]",
        "init_from": "null",
        "compile": "false",
        "model_args": "{}",
        "adapt.policy": "edgetrain",
        "adapt.weights.batch_size": "0.4",
    }


def test_names_for_tensorboard_and_mlflow():
    assert tensorboard_tag("train_loss") == "train/loss"
    assert tensorboard_tag("val_perplexity") == "val/perplexity"
    assert tensorboard_tag("energy_j") == "epoch/energy_j"
    assert tensorboard_tag("summary/total_energy_j") == "summary/total_energy_j"
    assert mlflow_name("model_args.f1@0.5") == "model_args.f1_0.5"
    assert mlflow_name("val_acc") == "val_acc"


# -- the config section -----------------------------------------------------------------


def test_log_config_defaults_off_and_validates(tmp_path):
    assert LogConfig().enabled is False
    assert logger_callbacks(LogConfig()) == []
    cfg = LogConfig(tensorboard="tb", mlflow="file:./mlruns", mlflow_experiment="exp")
    assert cfg.enabled and str(cfg.tensorboard) == "tb"
    for bad, match in [
        ({"tensorboard": True}, "log.tensorboard must be a directory"),
        ({"tensorboard": ""}, "empty string"),
        ({"mlflow": False}, "log.mlflow must be a tracking URI"),
        ({"mlflow": "  "}, "empty string"),
        ({"mlflow_experiment": "exp"}, "log.mlflow_experiment needs log.mlflow"),
        ({"wandb": "x"}, "Extra inputs are not permitted"),
    ]:
        with pytest.raises(ValueError, match=match):
            LogConfig(**bad)


@needs_tensorboard
@needs_mlflow
def test_logger_callbacks_follow_the_config(tmp_path):
    cbs = logger_callbacks(LogConfig(tensorboard=tmp_path / "tb", mlflow="file:./m"))
    assert [type(cb) for cb in cbs] == [TensorBoardCallback, MLflowCallback]
    assert cbs[0].log_dir == tmp_path / "tb"
    assert cbs[1].tracking_uri == "file:./m" and cbs[1].experiment is None


def test_a_missing_package_names_its_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(MissingExtraError, match=r'pip install "edgetrain\[tensorboard\]"') as tb:
        TensorBoardCallback("tb")
    assert tb.value.extra == "tensorboard" and "log.tensorboard" in str(tb.value)
    with pytest.raises(MissingExtraError, match=r'pip install "edgetrain\[mlflow\]"') as ml:
        MLflowCallback("file:./mlruns")
    assert ml.value.extra == "mlflow" and ml.value.exit_code == 2


# -- TensorBoard ------------------------------------------------------------------------


@needs_tensorboard
def test_tensorboard_event_file_holds_every_epoch_column(tmp_path):
    cb = TensorBoardCallback(tmp_path / "tb")
    result = _fit(tmp_path / "run", [_Costs(), _Decide(), cb])
    log_dir = tmp_path / "tb" / "run"  # one subdirectory per run directory
    assert result.summary["tensorboard"] == {"log_dir": str(log_dir)}
    acc = _events(log_dir)
    hist = result.history
    for column, tag in [
        ("train_loss", "train/loss"),
        ("val_acc", "val/acc"),
        ("lr", "epoch/lr"),
        ("energy_j", "epoch/energy_j"),
        ("avg_power_w", "epoch/avg_power_w"),
        ("peak_rss_bytes", "epoch/peak_rss_bytes"),
        ("samples_per_s", "epoch/samples_per_s"),
    ]:
        logged = _scalars(acc, tag)
        assert [s for s, _ in logged] == [1, 2, 3], tag
        assert [v for _, v in logged] == pytest.approx(hist[column].tolist(), rel=1e-6), tag
    scalars = acc.Tags()["scalars"]
    assert "epoch/energy_source" not in scalars  # text is not a scalar
    assert "epoch/peak_device_mem_bytes" not in scalars  # nor an empty column
    # decisions: the one before training counts for epoch 1; a 'keep' row changes nothing
    assert _scalars(acc, "epoch/decision_changes") == [(1, 1.0), (2, 0.0), (3, 1.0)]
    decisions = _texts(acc, "decisions/text_summary")
    assert [s for s, _ in decisions] == [1, 2, 3]
    assert "| 0 | 0 | micro_batch_size | 16 | 8 | test 0 \\| piped |" in decisions[0][1]
    assert "| lr | 0.1 | 0.05 |" in decisions[2][1]
    # the end: totals, the best epoch, the status; the config as text at step 0
    summary = result.summary
    assert _scalars(acc, "summary/total_energy_j") == [
        (3, pytest.approx(summary["total_energy_j"], rel=1e-6))
    ]
    assert _scalars(acc, "summary/epochs_completed") == [(3, 3.0)]
    assert _scalars(acc, "best/epoch") == [(3, float(summary["best"]["epoch"]))]
    ((step, text),) = _texts(acc, "summary/text_summary")
    assert step == 3 and "status: **completed**" in text
    ((step, config),) = _texts(acc, "config/text_summary")
    assert step == 0 and "epochs: 3" in config and config.startswith("```yaml")


@needs_tensorboard
def test_tensorboard_resume_purges_replayed_epochs(tmp_path):
    _fit(tmp_path / "run", [TensorBoardCallback(tmp_path / "tb")], epochs=2)
    resumed = _fit(tmp_path / "run", [TensorBoardCallback(tmp_path / "tb")], epochs=3, resume=True)
    acc = _events(tmp_path / "tb" / "run")
    logged = _scalars(acc, "train/loss")
    assert [s for s, _ in logged] == [1, 2, 3]
    assert [v for _, v in logged] == pytest.approx(resumed.history.train_loss.tolist(), rel=1e-6)
    assert len(_texts(acc, "config/text_summary")) == 1


@needs_tensorboard
def test_tensorboard_status_of_a_failed_run(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path / "run", [_Raise(RuntimeError("boom")), TensorBoardCallback(tmp_path / "tb")])
    acc = _events(tmp_path / "tb" / "run")
    assert [s for s, _ in _scalars(acc, "train/loss")] == [1]  # epoch 2 raised before logging
    ((_, text),) = _texts(acc, "summary/text_summary")
    assert "status: **failed**" in text


@needs_tensorboard
def test_a_tensorboard_error_mid_run_is_a_warning(tmp_path, caplog):
    class Broken(TensorBoardCallback):
        def _write_epoch(self, state: TrainState) -> None:
            raise OSError(28, "No space left on device")

    with caplog.at_level(logging.WARNING, logger="edgetrain.train.features.loggers"):
        result = _fit(tmp_path / "run", [Broken(tmp_path / "tb")])
    assert result.summary["status"] == "completed" and len(result.history) == 3
    warnings = [r.getMessage() for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]


# -- MLflow -----------------------------------------------------------------------------


def _only_run(client, experiment="edgetrain-test"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


@needs_mlflow
def test_mlflow_file_store_holds_params_metrics_totals_and_artifacts(tmp_path, mlflow_store):
    uri, client = mlflow_store
    cb = MLflowCallback(uri, experiment="edgetrain-test")
    result = _fit(tmp_path / "run", [_Costs(), _Decide(), cb])
    run = _only_run(client)
    assert result.summary["mlflow"] == {
        "tracking_uri": uri,
        "experiment_id": run.info.experiment_id,
        "run_id": run.info.run_id,
    }
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["edgetrain.status"] == "completed"
    assert tags["edgetrain.run_dir"] == str((tmp_path / "run").resolve())
    assert tags["edgetrain.task"] == "classification"
    assert tags["edgetrain.energy_source"] == result.summary["energy_source"]
    # the resolved config, flattened
    params = run.data.params
    assert params["epochs"] == "3" and params["lr"] == "0.1"
    assert params["monitor.enabled"] == "false" and params["monitor.cpu_tdp_w"] == "null"
    assert params["adapt.weights.batch_size"] == "0.4"
    assert params["split"] == "[1.0, 0.0, 0.0]" and params["init_from"] == "null"
    # every numeric column, per epoch, under its metrics.csv name
    hist = result.history
    for column in ["train_loss", "val_loss", "val_acc", "lr", "batch_size", "time_s"]:
        logged = _history(client, run.info.run_id, column)
        assert [s for s, _ in logged] == [1, 2, 3], column
        assert [v for _, v in logged] == pytest.approx(hist[column].tolist()), column
    for column in ["energy_j", "avg_power_w", "peak_rss_bytes"]:  # the monitor's costs
        assert [v for _, v in _history(client, run.info.run_id, column)] == pytest.approx(
            hist[column].tolist()
        ), column
    assert "energy_source" not in run.data.metrics
    assert "peak_device_mem_bytes" not in run.data.metrics
    changes = _history(client, run.info.run_id, "decision_changes")
    assert changes == [(1, 1.0), (2, 0.0), (3, 1.0)]
    # the end: totals and the best epoch, at the last step
    metrics = run.data.metrics
    summary = result.summary
    assert metrics["summary/total_energy_j"] == pytest.approx(summary["total_energy_j"])
    assert metrics["summary/total_time_s"] == pytest.approx(summary["total_time_s"])
    assert metrics["summary/total_energy_j"] == 60.0
    assert metrics["summary/peak_rss_bytes"] == summary["peak_rss_bytes"] == 2**20 * 103
    assert metrics["summary/epochs_completed"] == 3 and metrics["summary/steps"] == 18
    assert metrics["best/epoch"] == summary["best"]["epoch"]
    assert metrics["best/val_acc"] == pytest.approx(summary["best"]["val_acc"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.yaml", "metrics.csv", "decisions.csv"}
    local = client.download_artifacts(run.info.run_id, "decisions.csv", str(tmp_path / "dl"))
    assert Path(local).read_text() == (tmp_path / "run" / "decisions.csv").read_text()


@needs_mlflow
@pytest.mark.parametrize(
    ("error", "status", "mlflow_status"),
    [
        (RuntimeError("boom"), "failed", "FAILED"),
        (KeyboardInterrupt(), "interrupted", "KILLED"),
        (DivergedError(2, 12, float("nan")), "diverged", "FAILED"),
    ],
)
def test_mlflow_run_status_follows_the_run(tmp_path, mlflow_store, error, status, mlflow_status):
    uri, client = mlflow_store
    with pytest.raises(type(error)):
        _fit(tmp_path / "run", [_Raise(error), MLflowCallback(uri, experiment="edgetrain-test")])
    run = _only_run(client)
    assert run.data.tags["edgetrain.status"] == status
    assert run.info.status == mlflow_status
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == [1]
    summary = (tmp_path / "run" / "summary.json").read_text()
    assert f'"status": "{status}"' in summary  # what the run directory says too


@needs_mlflow
def test_a_fit_called_while_handling_an_exception_is_completed(tmp_path, mlflow_store):
    uri, client = mlflow_store
    try:
        raise ValueError("the caller's own")
    except ValueError:
        _fit(tmp_path / "run", [MLflowCallback(uri, experiment="edgetrain-test")], epochs=1)
    run = _only_run(client)
    assert run.data.tags["edgetrain.status"] == "completed" and run.info.status == "FINISHED"


@needs_mlflow
def test_mlflow_resume_continues_the_same_run(tmp_path, mlflow_store, caplog):
    uri, client = mlflow_store
    _fit(tmp_path / "run", [MLflowCallback(uri, experiment="edgetrain-test")], epochs=2)
    first = _only_run(client)
    with caplog.at_level(logging.WARNING, logger="edgetrain.train.features.loggers"):
        resumed = _fit(
            tmp_path / "run",
            [MLflowCallback(uri, experiment="edgetrain-test")],
            epochs=3,
            resume=True,
        )
    run = _only_run(client)
    assert run.info.run_id == first.info.run_id == resumed.summary["mlflow"]["run_id"]
    logged = _history(client, run.info.run_id, "train_loss")
    assert [s for s, _ in logged] == [1, 2, 3]
    assert [v for _, v in logged] == pytest.approx(resumed.history.train_loss.tolist())
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2"  # MLflow parameters cannot change
    assert any(
        "parameters changed" in r.getMessage() and "epochs" in r.getMessage()
        for r in caplog.records
    )


@needs_mlflow
def test_a_resume_whose_mlflow_run_is_gone_starts_a_new_one(tmp_path, mlflow_store, caplog):
    uri, client = mlflow_store
    first = _fit(tmp_path / "run", [MLflowCallback(uri, experiment="edgetrain-test")], epochs=1)
    gone = first.summary["mlflow"]["run_id"]
    client.delete_run(gone)
    with caplog.at_level(logging.WARNING, logger="edgetrain.train.features.loggers"):
        resumed = _fit(
            tmp_path / "run",
            [MLflowCallback(uri, experiment="edgetrain-test")],
            epochs=2,
            resume=True,
        )
    new = resumed.summary["mlflow"]["run_id"]
    assert new != gone and resumed.summary["status"] == "completed"
    assert [s for s, _ in _history(client, new, "train_loss")] == [2]
    assert any(gone in r.getMessage() for r in caplog.records)


@needs_mlflow
def test_logging_into_a_callers_run_leaves_it_open(tmp_path, mlflow_store):
    uri, client = mlflow_store
    exp = client.create_experiment("edgetrain-test")
    own = client.create_run(exp, run_name="mine")
    _fit(tmp_path / "run", [MLflowCallback(uri, run_id=own.info.run_id)], epochs=1)
    run = _only_run(client)
    assert run.info.run_id == own.info.run_id and run.info.status == "RUNNING"
    assert run.data.tags["edgetrain.status"] == "completed"
    assert "train_loss" in run.data.metrics and run.data.params["epochs"] == "1"


@needs_mlflow
def test_an_unusable_tracking_uri_is_a_user_error(tmp_path, mlflow_store):
    with pytest.raises(EdgeTrainError, match=r"log\.mlflow: cannot log to MLflow at nope://x"):
        _fit(tmp_path / "run", [MLflowCallback("nope://x")], epochs=1)
    assert '"status": "failed"' in (tmp_path / "run" / "summary.json").read_text()


@needs_mlflow
def test_an_mlflow_error_mid_run_is_a_warning(tmp_path, mlflow_store, caplog):
    uri, client = mlflow_store

    class Flaky(MLflowCallback):
        def _write_epoch(self, state: TrainState) -> None:
            if state.epoch == 1:
                raise ConnectionError("server went away")
            super()._write_epoch(state)

    with caplog.at_level(logging.WARNING, logger="edgetrain.train.features.loggers"):
        result = _fit(tmp_path / "run", [Flaky(uri, experiment="edgetrain-test")])
    assert result.summary["status"] == "completed"
    run = _only_run(client)
    assert [s for s, _ in _history(client, run.info.run_id, "train_loss")] == [1]
    assert sum("server went away" in r.getMessage() for r in caplog.records) == 1
