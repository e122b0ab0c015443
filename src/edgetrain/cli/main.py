"""``edgetrain``: train | monitor | plot | report | env.

Every command parses its arguments, calls one library function and prints the result.
An :class:`EdgeTrainError` becomes one line on stderr and exit code 2 (3 for a diverged
run; ``--debug`` shows the traceback); an OS error (disk full, read-only, permission) is
one line too. Ctrl-C exits 130 and SIGTERM 143, after the run directory is left readable
and resumable. Everything is printed verbatim: consoles have Rich markup turned off, so a
``[`` in a path or message is shown as typed.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from edgetrain.errors import EdgeTrainError
from edgetrain.safefs import interrupt, os_error_message

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgetrain",
    help="Train PyTorch models where memory and energy are scarce, and know what it cost.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(markup=False)
err = Console(stderr=True, markup=False)
_DEBUG = False
_SIGNAL: list[int] = []  # the signal that stopped the command, for its exit code

ConfigArg = Annotated[
    Path | None, typer.Argument(help="YAML config file (optional; --set works without one).")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a config key: --set lr=0.01 --set monitor.interval_s=0.5"
    ),
]


@app.command()
def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory.")] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Continue RUN from its last checkpoint.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run directory.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a model from a config file and/or --set overrides; writes a run directory."""
    from edgetrain.train import train as run_training

    overrides = list(set_ or [])
    if out_dir is not None:
        overrides.append(f"out={out_dir}")
    if resume is not None and config is not None:
        raise EdgeTrainError(
            "--resume continues RUN with its own config.yaml; do not also pass CONFIG"
        )
    if resume is not None and overwrite:
        raise EdgeTrainError("--resume and --overwrite cannot be used together")
    result = run_training(
        config, overrides=overrides, resume=resume, overwrite=overwrite, progress=not quiet
    )
    if not quiet:
        # status and why it stopped, best and final metrics, time, energy, peak memory
        out.print(result.table())
        budget_line = _budget_line(result.summary.get("adapt") or {})
        if budget_line:
            out.print(budget_line, highlight=False, soft_wrap=True)
    out.print(f"run directory: {result.run_dir}", highlight=False)


def _budget_line(adapt: dict[str, Any]) -> Text | None:
    """How the run kept to ``budget.memory`` (None without a budget)."""
    from edgetrain.units import format_bytes

    budget, peak = adapt.get("budget_bytes"), adapt.get("measured_peak_bytes")
    if not budget or peak is None:
        return None
    line = Text(
        f"memory: peak {format_bytes(peak)} of the budget {format_bytes(budget)} "
        f"({100 * peak / budget:.0f}%, {adapt.get('memory_source')}), micro-batch "
        f"{adapt.get('micro_batch_size')} x {adapt.get('accum_steps')} accumulated"
    )
    violations = adapt.get("budget_violations") or 0
    if violations:
        line.append("; ")
        line.append(f"passed the budget in {violations} training step(s)", style="bold yellow")
        line.append(" (why: decisions.csv)")
    elif peak > budget:
        line.append("; ")
        line.append("passed the budget during evaluation", style="bold yellow")
        line.append(" (why: decisions.csv)")
    return line


@app.command()
def env() -> None:
    """Show versions, device, CPU, memory, sensors and optional extras."""
    from edgetrain.measure import environment_info, render_environment

    out.print(render_environment(environment_info()))


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def monitor(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between samples.")] = 0.2,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write resources.csv and summary.json here.")
    ] = None,
    cpu_tdp_w: Annotated[
        float | None, typer.Option("--cpu-tdp-w", help="CPU power for the estimate (W).")
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option(
            "--devices",
            help="GPUs to measure: indices or GPU-/MIG- UUIDs, comma-separated, or 'all' "
            "(default: CUDA_VISIBLE_DEVICES, else the GPUs the command uses).",
        ),
    ] = None,
) -> None:
    """Run a command and measure it (and its children): edgetrain monitor -- CMD ARGS..."""
    from edgetrain.measure import render_summary, run_monitored

    cmd = list(ctx.args)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise EdgeTrainError("monitor needs a command to run: edgetrain monitor -- CMD ARGS...")
    if interval <= 0:
        raise EdgeTrainError(f"--interval must be > 0 seconds, got {interval}")
    kwargs: dict[str, Any] = {"interval_s": interval, "out": out_dir, "devices": devices}
    if cpu_tdp_w is not None:
        kwargs["cpu_tdp_w"] = cpu_tdp_w
    result = run_monitored(cmd, **kwargs)
    err.print(render_summary(result))
    code = result.exit_code
    raise typer.Exit(
        128 - code if code < 0 else code
    )  # killed by signal n: exit 128+n, as shells do


@app.command()
def plot(run: Annotated[Path, typer.Argument(help="Run directory.")]) -> None:
    """Draw resource usage over time (epoch boundaries marked) into RUN/report/."""
    from edgetrain.report import plot_resources

    path = plot_resources(run)
    out.print(f"wrote {path}", highlight=False)


@app.command()
def report(
    dirs: Annotated[
        list[Path], typer.Argument(help="A run directory, or several runs to compare.")
    ],
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where a comparison goes.")
    ] = None,
) -> None:
    """Write DIR/report/ (PNG figures, report.pdf, report.xlsx); several runs are compared.

    DIR may be a run, a sweep (after `edgetrain sweep analyze`), a bench output or a
    sparse-update comparison; the kind is detected from its files.
    """
    from edgetrain.report import compare_runs, make_report

    path = make_report(dirs[0]) if len(dirs) == 1 else compare_runs(dirs, out_dir)
    pdf = path / "report.pdf"
    out.print(f"report: {pdf if pdf.exists() else path}", highlight=False)


def _register_command_modules() -> None:
    """Command groups that live in their own modules (sweep, bench, ...) add themselves."""
    import importlib
    import importlib.util

    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(f"edgetrain.cli.{name}") is not None:
            importlib.import_module(f"edgetrain.cli.{name}").register(app)


_COMMAND_MODULES = ("memory", "sparse", "sweep", "bench", "data", "export")
_register_command_modules()


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGNAL.append(signum)
    # leave the run directory in a readable, resumable state (after a file being written)
    interrupt()


def _interrupt_code() -> int:
    """128 + the signal that stopped the command, as shells report it (SIGINT unless told)."""
    return 128 + (_SIGNAL[-1] if _SIGNAL else int(signal.SIGINT))


def _error(label: str, message: str) -> None:
    """One line on stderr, the message verbatim (no markup, no highlighting)."""
    err.print(Text.assemble((label, "bold red"), " ", message), highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``edgetrain`` console script."""
    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG = "--debug" in args
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(
        level=logging.DEBUG if _DEBUG else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigterm)  # Ctrl-C too waits for a file write
    try:
        rc = app(args=args, prog_name="edgetrain", standalone_mode=False)
        if isinstance(rc, int) and rc:
            # Typer turns Ctrl-C into 130 and returns it in this mode; SIGTERM is 143
            sys.exit(_interrupt_code() if rc == 130 else rc)
    except EdgeTrainError as exc:
        if _DEBUG:
            traceback.print_exc()
        _error("error:", " ".join(str(exc).split()))
        sys.exit(exc.exit_code)
    except OSError as exc:  # disk full, read-only, permission, name too long, ...
        if _DEBUG:
            traceback.print_exc()
        _error("error:", os_error_message(exc, "cannot complete the command at"))
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted", highlight=False)
        sys.exit(_interrupt_code())
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # usage errors of Typer/Click (Typer may vendor Click, so match by shape, not class)
        if type(exc).__name__ == "Abort":
            sys.exit(_interrupt_code())
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(2)
        if _DEBUG:
            raise
        traceback.print_exc()
        _error(
            "internal error",
            f"({type(exc).__name__}): {exc}. This is a bug in edgetrain; please report it "
            "with the traceback above.",
        )
        sys.exit(1)
