"""``edgetrain export RUN --format pt2|onnx|torchscript|safetensors``: a run's model as a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["export", "register"]

_out = Console(markup=False)


def export(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="pt2 (torch.export), onnx (extra 'onnx'), torchscript or safetensors.",
        ),
    ] = "pt2",
    to: Annotated[
        Path | None,
        typer.Option("--to", help="File to write (default: RUN/export/<model|best|last>.<ext>)."),
    ] = None,
    which: Annotated[
        str,
        typer.Option(
            "--which",
            help="final (model.pt), best (checkpoints/best.pt) or last (checkpoints/last.pt).",
        ),
    ] = "final",
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", help="int8: dynamic int8 quantisation (ONNX only)."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing --to file edgetrain did not write."),
    ] = False,
) -> None:
    """Export a run's model, rebuilt from its config, with a dynamic batch dimension.

    The file is checked against PyTorch on a batch of the run's data before it is written.
    """
    from edgetrain.export import export_run

    result = export_run(run, fmt, to=to, which=which, overwrite=overwrite, quantize=quantize)
    _out.print(result.describe(), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``export`` to the ``edgetrain`` command."""
    app.command("export")(export)
