""":func:`make_report`: the report of a directory, whatever kind it is (see :mod:`.kinds`).

The run report itself is written by :mod:`.run_report`; its names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from edgetrain.errors import EdgeTrainError
from edgetrain.report.kinds import KINDS, find_kind
from edgetrain.report.run_report import (
    FIGURE_NAMES,
    plot_resources,
    run_figures,
    run_tables,
    write_run_report,
)

__all__ = [
    "FIGURE_NAMES",
    "make_report",
    "plot_resources",
    "run_figures",
    "run_tables",
    "write_run_report",
]


def make_report(path: Path | str) -> Path:
    """Write the report of a directory, whatever kind it is (see :data:`KINDS`).

    A run, sweep, benchmark or sparse-update comparison gets ``DIR/report/`` (PNGs,
    ``report.pdf``, ``report.xlsx``); a directory holding runs gets ``DIR/comparison/``.

    Args:
        path: The directory.

    Returns:
        The directory the report was written to.

    Raises:
        EdgeTrainError: if the directory does not exist, is of no known kind, or (a
            sweep) has not been analysed yet.
    """
    path = Path(path)
    kind = find_kind(path)
    if kind is None:
        known = "; ".join(f"{name}: {what}" for name, what in KINDS.items())
        raise EdgeTrainError(
            f"{path} is not a run directory (no metrics.csv) nor any other directory edgetrain "
            f"reports on; known kinds are {known}"
        )
    out = path / kind.out_dir
    try:
        kind.write(path, out)
    except OSError as exc:
        raise EdgeTrainError(f"cannot write the report into {out}: {exc}") from exc
    return out
