"""Mark phases inside a program measured by ``edgetrain monitor -- CMD``.

::

    import edgetrain

    edgetrain.mark("load data")
    ...
    edgetrain.mark("epoch 1")

Each call appends one line, ``time_s<TAB>label``, to the file named by the environment
variable ``EDGETRAIN_MARKS`` (``edgetrain monitor --out DIR`` sets it to ``DIR/marks.tsv``
for the command); without it, a call does nothing. ``time_s`` is wall-clock seconds since
the Unix epoch, read from the monotonic clock plus an offset taken once per process, so
marks never go backwards when the system clock is adjusted. A phase lasts from its mark
to the next one (or to the command's end).

Standard library only: no torch, cheap to import in any program.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import NamedTuple

__all__ = ["MARKS_ENV", "MARKS_FILE", "Mark", "mark", "mark_time", "read_marks"]

#: The environment variable naming the marks file.
MARKS_ENV = "EDGETRAIN_MARKS"
#: The marks file's name in a monitor directory.
MARKS_FILE = "marks.tsv"

_OFFSET_S = time.time() - time.monotonic()  # wall clock = monotonic clock + this
_warned = False


class Mark(NamedTuple):
    """One line of a marks file."""

    time_s: float  # wall-clock seconds since the Unix epoch
    label: str


def mark_time() -> float:
    """Now, as marks record it: wall-clock seconds, monotonic within this process."""
    return _OFFSET_S + time.monotonic()


def _clean(label: object) -> str:
    """One line without tabs: the label as the file can hold it."""
    return " ".join(str(label).replace("\t", " ").splitlines()).strip()


def mark(label: str) -> float | None:
    """Start the phase ``label`` now; return its time, or None when not measured.

    Appends ``time_s<TAB>label`` (one unbuffered, appending write, so lines from several
    processes do not interleave) to ``$EDGETRAIN_MARKS``. A file that cannot be written
    gives one warning and never stops the program.
    """
    path = os.environ.get(MARKS_ENV)
    if not path:
        return None
    now = mark_time()
    line = f"{now:.6f}\t{_clean(label)}\n".encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as exc:
        global _warned
        if not _warned:
            _warned = True
            warnings.warn(
                f"edgetrain.mark: cannot write {MARKS_ENV}={path}: {exc.strerror or exc}; "
                "marks are not recorded",
                RuntimeWarning,
                stacklevel=2,
            )
        return None
    return now


def read_marks(path: str | Path) -> list[Mark]:
    """The marks in ``path``, in time order; a missing file has none.

    Lines that are not ``time_s<TAB>label`` (a header, a half-written last line) are skipped.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]  # the writer was killed in the middle of a line
    marks = []
    for line in lines:
        time_text, tab, label = line.rstrip("\r\n").partition("\t")
        if not tab:
            continue
        try:
            t = float(time_text)
        except ValueError:
            continue
        if math.isfinite(t):
            marks.append(Mark(t, label))
    marks.sort(key=lambda m: m.time_s)  # stable: equal times keep their order
    return marks
