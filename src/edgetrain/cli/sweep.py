"""``edgetrain sweep run|analyze|final``: energy-aware sweeps on Optuna.

Everything heavy (Optuna, pandas, scipy) is imported inside the commands, so that
``edgetrain --help`` stays fast and works without the ``sweep`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["register"]

STORAGE_ENV = "EDGETRAIN_SWEEP_STORAGE"

out = Console(markup=False)
err = Console(stderr=True, markup=False)

StorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage",
        envvar=STORAGE_ENV,
        help="Study storage: a database URL (postgresql://user:pw@host/db) shared by workers on "
        f"several machines, or a journal file path. Default: DIR/study.journal. Prefer the "
        f"{STORAGE_ENV} variable to keep a password out of the process list.",
        show_envvar=False,
    ),
]
StudyOpt = Annotated[
    str | None, typer.Option("--study", help="Study name (default: the space file's stem).")
]


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(
    space: Annotated[Path, typer.Argument(help="Search space YAML (base config + params).")],
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            "-n",
            help="Answered trials wanted in the study (completed + failed by their "
            "configuration; lost, interrupted, killed and refused ones are replaced). "
            "Re-running resumes (and records finished results a killed run left in DIR/trials); "
            "a larger N extends the sweep.",
        ),
    ],
    workers: Annotated[
        int, typer.Option("--workers", "-w", help="Trials at a time in this process.")
    ] = 1,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Sweep directory (default: sweeps/<space stem>)."),
    ] = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    sampler: Annotated[
        str | None, typer.Option("--sampler", help="random | tpe | nsga2 (default: the space's).")
    ] = None,
    objectives: Annotated[
        str | None,
        typer.Option(
            "--objectives",
            help="Comma-separated: a validation metric and/or energy, or efficiency. A metric "
            "is accuracy, metric (the task's own) or a column with its direction "
            "(val_rmse:min, val_r2:max). Default: the task's metric and energy "
            "(accuracy,energy for classification).",
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler seed.")] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", help="Torch threads per trial (default cores/workers)."),
    ] = None,
    trial_timeout: Annotated[
        float | None,
        typer.Option("--trial-timeout", help="Stop a trial after this many seconds (fails it)."),
    ] = None,
    heartbeat: Annotated[
        float, typer.Option("--heartbeat", help="Seconds between heartbeats of running trials.")
    ] = 10.0,
    launcher: Annotated[
        str,
        typer.Option(
            "--launcher",
            help="How trial processes start: zygote (forked from a pre-loaded process), "
            "subprocess (a fresh Python each), auto (zygote where safe).",
        ),
    ] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run, resume or join a sweep: each trial trains in its own process into DIR/trials/<n>/."""
    from edgetrain.sweep.render import render_sweep
    from edgetrain.sweep.runner import run_sweep
    from edgetrain.sweep.space import load_space

    _quiet_optuna()
    names = [o.strip() for o in objectives.split(",")] if objectives else None
    spec = load_space(space, objectives=names, sampler=sampler, seed=seed)
    result = run_sweep(
        spec,
        trials,
        workers=workers,
        out=out_dir,
        storage=storage,
        study_name=study,
        threads=threads,
        trial_timeout_s=trial_timeout,
        heartbeat_s=heartbeat,
        launcher=launcher,
        progress=not quiet,
        console=err,
    )
    out.print(render_sweep(result))
    out.print(f"next: edgetrain sweep analyze {result.sweep_dir}", highlight=False)


def _analyze(
    sweep_dir: Annotated[
        Path | None, typer.Argument(help="Sweep directory (optional with --storage/--study).")
    ] = None,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    top: Annotated[int, typer.Option("--top", help="Rows of the top-k tables.")] = 10,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Tables go here (default DIR/analysis).")
    ] = None,
) -> None:
    """Write DIR/analysis/: top-k tables, Pareto front, parameter relevance, results.xlsx."""
    from edgetrain.errors import EdgeTrainError
    from edgetrain.sweep.analysis import analyze
    from edgetrain.sweep.render import render_analysis

    if sweep_dir is None and (storage is None or study is None):
        raise EdgeTrainError("give a sweep directory, or --storage URL and --study NAME")
    _quiet_optuna()
    analysis = analyze(sweep_dir, storage=storage, study_name=study, top_k=top, out=out_dir)
    out.print(render_analysis(analysis))


def _final(
    sweep_dir: Annotated[
        Path | None, typer.Argument(help="Sweep directory (optional with --storage/--study).")
    ] = None,
    pick: Annotated[
        str | None,
        typer.Option(
            "--pick",
            help="knee | metric (the sweep's metric; accuracy for classification) | energy | "
            "efficiency | per-parameter (default: knee for metric+energy, else the objective).",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs of the final run.")] = 50,
    storage: StorageOpt = None,
    study: StudyOpt = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Final run directory (default DIR/final).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing final run.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Retrain the chosen configuration into DIR/final/ and report its test metrics."""
    from edgetrain.errors import EdgeTrainError
    from edgetrain.sweep.final import final_training
    from edgetrain.sweep.render import render_final

    if sweep_dir is None and (storage is None or study is None):
        raise EdgeTrainError("give a sweep directory, or --storage URL and --study NAME")
    _quiet_optuna()
    result = final_training(
        sweep_dir,
        pick=pick,
        epochs=epochs,
        storage=storage,
        study_name=study,
        out=out_dir,
        overwrite=overwrite,
        progress=not quiet,
    )
    out.print(render_final(result))


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` command group to the main app."""
    sweep = typer.Typer(
        name="sweep",
        help="Energy-aware hyper-parameter sweeps (Optuna): run, analyze, final.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    sweep.command("run")(_run)
    sweep.command("analyze")(_analyze)
    sweep.command("final")(_final)
    app.add_typer(sweep, name="sweep")
