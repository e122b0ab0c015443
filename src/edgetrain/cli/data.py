"""``edgetrain data export NAME --to DIR``: one file per sample, for the folder data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from edgetrain.errors import EdgeTrainError

__all__ = ["data_app", "export", "register"]

_out = Console(markup=False)

data_app = typer.Typer(
    name="data",
    help="Data set utilities.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _options(items: list[str]) -> dict[str, Any]:
    from edgetrain.config import parse_override

    options: dict[str, Any] = {}
    for text in items:
        if "=" not in text:
            raise EdgeTrainError(f"--option expects key=value, got {text!r}")
        keys, value = parse_override(text)
        options[".".join(keys)] = value
    return options


@data_app.command("export")
def export(
    name: Annotated[
        str,
        typer.Argument(help="Data set: digits, synthetic, cifar10, folder, or module:callable."),
    ],
    to: Annotated[Path, typer.Option("--to", help="Target directory (one subfolder per class).")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="npy (exact float32) or png (8-bit).")
    ] = "npy",
    image_size: Annotated[
        int | None, typer.Option("--image-size", help="Resize to N x N (default: native).")
    ] = None,
    channels: Annotated[
        int | None, typer.Option("--channels", help="1 or 3 (default: native).")
    ] = None,
    count: Annotated[
        int | None,
        typer.Option("--count", help="Samples: generated (synthetic) or the first N (others)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of generated data.")] = 0,
    data_path: Annotated[
        Path | None,
        typer.Option("--data-path", help="Where the source files are (cifar10, folder)."),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="A data set option: --option num_classes=4"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what the target directory holds.")
    ] = False,
) -> None:
    """Write a data set to DIR/<class>/<index>.npy|png for the folder data set (data: folder)."""
    from edgetrain.bench import export_dataset

    result = export_dataset(
        name,
        to,
        fmt=fmt.lower(),
        image_size=image_size,
        channels=channels,
        count=count,
        seed=seed,
        data_path=data_path,
        overwrite=overwrite,
        reuse=not overwrite,
        **_options(list(option or [])),
    )
    what = "already there" if result.reused else "wrote"
    line = f"{what}: {result.files} {result.format} files in {len(result.classes)} class folders"
    if result.png_range is not None and result.png_range != (0.0, 1.0):
        lo, hi = result.png_range
        line += f"; png maps [{lo:.4g}, {hi:.4g}] to [0, 1] (see export.json)"
    _out.print(line, highlight=False)
    _out.print(
        f"train on it with: --set data=folder --set data_path={result.root}", highlight=False
    )


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the ``edgetrain`` app."""
    app.add_typer(data_app, name="data")
