"""One trial, in its own process: ``python -m edgetrain.sweep.trial SPEC.json``.

The process trains the trial's config into its run directory, optionally quantises the
model, and writes ``RUN/trial.json`` with the metrics the sweep reads (the task's
validation metrics and its best metric, energy, average power, times, model sizes) and
the identity of its study trial.
``trial.json`` is on disk (fsynced) before the process exits, so a finished result
survives its worker: the sweep re-imports it if the study never heard of it (see
:mod:`edgetrain.sweep.recover`). A crash or a kill ends only this process; the worker
that started it records the trial as failed and goes on.

Exit codes: 0 completed, 1 failed (``trial.json`` says why), 130 interrupted.
Test metrics are never put into ``trial.json``: test data is for the final report only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from edgetrain.safefs import atomic_write_text, dumps_strict, interrupt

__all__ = [
    "TRIAL_FILE",
    "main",
    "read_trial_file",
    "run_trial",
    "trial_metrics",
]

TRIAL_FILE = "trial.json"
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


def _process_start_time() -> float | None:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # pragma: no cover - psutil is a dependency; be safe anyway
        return None


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the worker that started us dies (no orphaned trainings)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - best effort
        return


def _on_sigterm(signum: int, frame: Any) -> None:
    # train() leaves the run directory readable and "interrupted" (after a file being written)
    interrupt()


def trial_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The sweep's metrics from a run's summary.json (final epoch; never test metrics).

    Besides energy, power and times: every validation metric of the final epoch
    (``val_acc`` for classification, ``val_rmse``... for regression), the task's best
    metric (``best_metric``, ``best_mode``, its best value ``best_<metric>``), the
    direction of each metric (``metric_modes``) and, when higher is better, the best
    metric per kJ (``efficiency_acc_per_kj`` for accuracy). The accuracy columns
    (``val_acc``, ``val_acc_float``, ``efficiency_acc_per_kj``) are there for tasks that
    report accuracy only.
    """
    from edgetrain.contract import best_metric, direction
    from edgetrain.sweep.objectives import efficiency_acc_per_kj, efficiency_column

    final = summary.get("final") or {}
    best = summary.get("best") or {}
    energy_j = summary.get("total_energy_j")
    metric, mode = best_metric(summary, final.keys())
    validation = {str(k): v for k, v in final.items() if str(k).startswith("val_")}
    metrics: dict[str, Any] = {}
    if "val_acc" in validation or not summary.get("task"):  # classification, or written so
        val_acc = final.get("val_acc")
        metrics.update(val_acc=val_acc, val_acc_float=val_acc)
    metrics.update(validation)
    metrics.setdefault("val_loss", final.get("val_loss"))
    metrics[f"best_{metric}"] = best.get(metric)
    metrics.update(
        energy_j=energy_j,
        energy_source=summary.get("energy_source"),
        avg_power_w=summary.get("avg_power_w"),
        time_s=summary.get("total_time_s"),
        epochs_completed=summary.get("epochs_completed"),
        peak_rss_bytes=summary.get("peak_rss_bytes"),
        peak_device_mem_bytes=summary.get("peak_device_mem_bytes"),
        samples_per_s=final.get("samples_per_s"),
    )
    if "val_acc" in metrics:
        metrics["efficiency_acc_per_kj"] = efficiency_acc_per_kj(metrics["val_acc"], energy_j)
    per_kj = efficiency_column(metric, mode)
    if per_kj is not None and per_kj not in metrics:
        metrics[per_kj] = efficiency_acc_per_kj(validation.get(metric), energy_j)
    task = summary.get("task") or {}
    metrics.update(
        task=task.get("name") or ("classification" if "val_acc" in metrics else None),
        best_metric=metric,
        best_mode=mode,
        metric_modes={column: direction(column, summary) for column in validation} or None,
    )
    return metrics


def _write(run_dir: Path, data: dict[str, Any]) -> None:
    """``trial.json``: durable before the process exits (the sweep tells the study after)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # durable before the process exits: a crash or a power cut leaves the old file or the new
    atomic_write_text(run_dir / TRIAL_FILE, dumps_strict(data, note_key=None), sync_dir=True)


def run_trial(spec: dict[str, Any], started_at: float | None = None) -> int:
    """Run the trial described by ``spec``; returns the exit code.

    Args:
        spec: ``{"run_dir", "config", "quantize", "threads", "trial"}`` as written by the
            worker (``trial``: the study trial's identity, copied into ``trial.json``).
        started_at: when the process was created (for the start-up time).
    """
    t_enter = time.time()
    run_dir = Path(spec["run_dir"])
    result: dict[str, Any] = {"status": "failed", "error": None, "metrics": {}, "timing": {}}
    if spec.get("trial") is not None:
        result["trial"] = spec["trial"]  # which study trial this is (for recovery)
    timing = result["timing"]
    if started_at is not None:
        timing["interpreter_s"] = t_enter - started_at
    code = EXIT_FAILED
    try:
        import torch

        from edgetrain.errors import EdgeTrainError
        from edgetrain.train import train

        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        t_imported = time.time()
        timing["startup_s"] = t_imported - (started_at if started_at is not None else t_enter)
        config = dict(spec["config"])
        config["out"] = str(run_dir)
        fit = train(config, progress=False, evaluate_test=False)  # test data: final only
        timing["train_call_s"] = time.time() - t_imported
        metrics = trial_metrics(fit.summary)
        metrics["model_bytes"] = _state_bytes(fit.model)
        if spec.get("quantize"):
            if metrics.get("val_acc") is None:
                raise EdgeTrainError(
                    f"internal: quantize measures int8 accuracy and works for classification "
                    f"only; this run's task ({metrics.get('task') or 'unknown'}) reports none"
                )
            t_q = time.time()
            from edgetrain.sweep.quantize import quantize_run

            q = quantize_run(run_dir, split="val")
            metrics.update(
                val_acc=q.quantized_acc,
                quantized_val_acc=q.quantized_acc,
                quantized_bytes=q.quantized_bytes,
                quantized_layers=q.quantized_layers,
            )
            from edgetrain.sweep.objectives import efficiency_acc_per_kj

            metrics["efficiency_acc_per_kj"] = efficiency_acc_per_kj(
                q.quantized_acc, metrics.get("energy_j")
            )
            timing["quantize_s"] = time.time() - t_q
        result.update(status="completed", metrics=metrics)
        code = 0
    except KeyboardInterrupt:
        result.update(status="interrupted", error="interrupted")
        code = EXIT_INTERRUPTED
    except Exception as exc:
        from edgetrain.errors import EdgeTrainError

        message = str(exc) if isinstance(exc, EdgeTrainError) else f"{type(exc).__name__}: {exc}"
        result.update(status="failed", error=message.strip().splitlines()[0] if message else "")
        if not isinstance(exc, EdgeTrainError):
            import traceback

            traceback.print_exc()  # into the trial's log
        code = EXIT_FAILED
    timing["process_s"] = time.time() - (started_at if started_at is not None else t_enter)
    _write(run_dir, result)
    return code


def _state_bytes(model: Any) -> int:
    from edgetrain.sweep.quantize import model_bytes

    return model_bytes(model)


def read_trial_file(run_dir: str | Path) -> dict[str, Any] | None:
    """A trial's ``trial.json`` or None when the process left none (killed)."""
    path = Path(run_dir) / TRIAL_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m edgetrain.sweep.trial SPEC.json``."""
    started_at = _process_start_time()
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgetrain.sweep.trial SPEC.json", file=sys.stderr)
        return 2
    _die_with_parent()
    signal.signal(signal.SIGTERM, _on_sigterm)
    if os.getppid() == 1:  # the worker died before we got here
        return EXIT_INTERRUPTED
    spec = json.loads(Path(args[0]).read_text())
    # the worker's clock when it launched us is exact; the kernel's process start time
    # (psutil) can be off by up to a second (boot time is kept in whole seconds)
    return run_trial(spec, spec.get("launched_at") or started_at)


if __name__ == "__main__":
    sys.exit(main())
