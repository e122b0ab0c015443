"""``edgetrain sparse-compare``: compare sparse-update schemes and budgets over seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register"]

out = Console(markup=False)
err = Console(stderr=True, markup=False)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _test_metric(columns: Any) -> str:
    """The comparison's test metric: ``test_acc`` for classification, ``test_rmse``..."""
    names = [str(c).removesuffix("_mean") for c in columns if not str(c).startswith("final_")]
    return next((c for c in names if c.startswith("test_")), "test_acc")


def _render(table_df: Any) -> Table:
    from edgetrain.units import format_bytes

    metric = _test_metric(table_df.columns)
    table = Table(title="sparse-compare (mean ± std over seeds)")
    for col in ("scheme", "budget", "seeds", metric, "updated", "peak train mem", "step s"):
        table.add_column(col, justify="left" if col in ("scheme", "budget") else "right")
    for _, r in table_df.iterrows():

        def pm(metric: str, digits: int = 4, r: Any = r) -> str:
            mean, std = r[f"{metric}_mean"], r[f"{metric}_std"]
            if std is None or std != std:  # one seed
                return _fmt(mean, digits)
            return f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"

        mem = r["peak_train_bytes_mean"]
        table.add_row(
            str(r["scheme"]),
            _fmt(r["budget"]) if r["budget"] is not None else "-",
            str(r["seeds"]),
            pm(metric),
            f"{_fmt(r['trainable_frac_mean'] * 100 if r['trainable_frac_mean'] is not None else None, 1)}%",
            format_bytes(mem) if mem == mem and mem is not None else "-",
            pm("step_time_s", 4),
        )
    return table


def register(app: typer.Typer) -> None:
    """Add the ``sparse-compare`` command to ``app``."""

    @app.command("sparse-compare")
    def sparse_compare_cmd(
        config: Annotated[
            Path, typer.Argument(help="YAML training config (the fine-tuning task).")
        ],
        schemes: Annotated[
            str,
            typer.Option(help="Comma-separated: velocity,random,static,full,last_k,bias_only."),
        ] = "velocity,random,static,full",
        budgets: Annotated[
            str,
            typer.Option(
                help="Comma-separated budgets for velocity/random/static: fractions (0.1), "
                "parameter counts (50000) or memory sizes (300MiB)."
            ),
        ] = "0.1,0.25,0.5",
        seeds: Annotated[
            int, typer.Option(help="Seeds per configuration (seed, seed+1, ...).")
        ] = 3,
        out_dir: Annotated[
            Path | None, typer.Option("--out", "-o", help="Comparison directory.")
        ] = None,
        set_: Annotated[
            list[str] | None, typer.Option("--set", "-s", help="Override a config key.")
        ] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    ) -> None:
        """Train every scheme x budget x seed; write results.csv and results.xlsx."""
        from edgetrain.compare import parse_budgets, parse_schemes, sparse_compare

        chosen = parse_schemes(schemes)
        values = parse_budgets(budgets)

        def on_run(index: int, total: int, label: str, row: dict[str, Any] | None) -> None:
            if quiet:
                return
            if row is None:
                err.print(f"[{index + 1}/{total}] {label} ...", highlight=False)
            else:
                metric = _test_metric(row)
                err.print(
                    f"[{index + 1}/{total}] {label}: {metric} {_fmt(row.get(metric))} "
                    f"(best val epoch {row['best_epoch']}), {row['wall_s']:.1f} s",
                    highlight=False,
                )

        result = sparse_compare(
            config,
            schemes=chosen,
            budgets=values,
            seeds=seeds,
            out=out_dir,
            overrides=list(set_ or []),
            on_run=on_run,
        )
        if not quiet:
            out.print(_render(result.table))
        out.print(f"results: {result.csv_path}", highlight=False)
        if result.xlsx_path is not None:
            out.print(f"workbook: {result.xlsx_path}", highlight=False)
