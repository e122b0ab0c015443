"""The breakdown plot: stall, copy and compute seconds per measured epoch, per configuration.

:func:`breakdown_table` computes what is drawn (tested); :func:`draw_breakdown` only draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

__all__ = ["BREAKDOWN_PARTS", "PLOT_FILE", "breakdown_table", "draw_breakdown"]

PLOT_FILE = "breakdown.png"
BREAKDOWN_PARTS: tuple[str, ...] = ("stall_s", "copy_s", "compute_s")
_COLOURS = {"stall_s": "#d62728", "copy_s": "#ff7f0e", "compute_s": "#1f77b4"}


def _seconds(value: object) -> float:
    number = pd.to_numeric(value, errors="coerce")
    return 0.0 if pd.isna(number) else float(number)


def breakdown_table(summary: pd.DataFrame, grid_keys: Sequence[str]) -> pd.DataFrame:
    """Mean seconds per measured epoch of each part, one row per completed configuration.

    The index is a label ``"<config>: key=value ..."``; a missing part counts as 0.
    """
    done = summary[summary["status"] == "completed"]
    rows = {}
    for _, row in done.iterrows():
        settings = " ".join(f"{k}={'-' if pd.isna(row[k]) else row[k]}" for k in grid_keys)
        label = f"{row['config']}: {settings}" if settings else str(row["config"])
        rows[label] = {part: _seconds(row.get(f"{part}_mean")) for part in BREAKDOWN_PARTS}
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(BREAKDOWN_PARTS))


def draw_breakdown(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Draw ``table`` as horizontal stacked bars into a PNG file."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    height = 1.2 + 0.45 * max(1, len(table))
    fig, ax = plt.subplots(figsize=(8, height))
    try:
        left = pd.Series(0.0, index=table.index)
        for part in BREAKDOWN_PARTS:
            ax.barh(
                table.index,
                table[part],
                left=left,
                color=_COLOURS[part],
                label=part.removesuffix("_s"),
            )
            left = left + table[part]
        ax.invert_yaxis()  # first configuration on top
        ax.set_xlabel("seconds per measured epoch (training part, mean)")
        ax.set_title(title or "Where an epoch's training time goes")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
