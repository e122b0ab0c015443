"""``edgetrain bench CONFIG --grid key=v1,v2 ...``: data stall vs compute over a grid."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["bench", "register"]

_out = Console(markup=False)
_err = Console(stderr=True, markup=False)


def bench(
    config: Annotated[
        Path, typer.Argument(help="YAML config: the grid's base (may hold a bench: section).")
    ],
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid",
            "-g",
            help="Vary a config key: --grid num_workers=0,2,4 (repeat for a cartesian product).",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option("--epochs", help="Epochs per configuration (default: bench.epochs or 6)."),
    ] = None,
    warmup_epochs: Annotated[
        int | None,
        typer.Option(
            "--warmup-epochs",
            help="Leading epochs left out of the summary, shown apart (default 1).",
        ),
    ] = None,
    drop_cache: Annotated[
        bool | None,
        typer.Option(
            "--drop-cache/--keep-cache",
            help=(
                "Evict the data files from the page cache before each configuration "
                "(only those files, unless --cache-method drop_caches)."
            ),
        ),
    ] = None,
    cache_method: Annotated[
        str | None,
        typer.Option(
            "--cache-method",
            help=(
                "How --drop-cache evicts: auto or fadvise (the default: only the data files, "
                "per file) or drop_caches (the WHOLE machine's page cache, which slows down "
                "everyone on it; needs root)."
            ),
        ),
    ] = None,
    export: Annotated[
        bool | None,
        typer.Option(
            "--export/--no-export",
            help="Export an in-memory data set to DIR/data (.npy files) and read it from disk.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a base config key: --set lr=0.01"),
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", "-o", help="Bench directory (default bench/NAME-TIME).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace earlier results in the bench directory.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final table.")] = False,
) -> None:
    """Train a grid of configurations; per minibatch, time data stall, copy and compute.

    Writes DIR/batches.csv, epochs.csv, summary.csv, device.json, breakdown.png and a run
    directory per configuration in DIR/runs/<k>/. Device settings are read, never changed.
    """
    from edgetrain.bench import run_bench, summary_table

    def say(line: str) -> None:
        if not quiet:
            _err.print(line, highlight=False, soft_wrap=True)

    result = run_bench(
        config,
        list(grid or []),
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        drop_cache=drop_cache,
        cache_method=cache_method,
        export=export,
        out=out_dir,
        overwrite=overwrite,
        overrides=list(set_ or []),
        progress=say,
    )
    bench_info = result.device.get("bench", {})
    measured = bench_info.get("epochs", 0) - bench_info.get("warmup_epochs", 0)
    title = (
        f"seconds per epoch (training part), mean ± std over {measured} measured epochs; "
        f"warm-up ({bench_info.get('warmup_epochs')} epoch) shown apart"
    )
    console = _out
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # a log file is not 80 columns wide; keep rows on one line
        console = Console(width=140, markup=False)
    console.print(summary_table(result.summary, result.grid_keys, title=title))
    console.print(f"bench directory: {result.out}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the ``edgetrain`` app."""
    app.command("bench")(bench)
