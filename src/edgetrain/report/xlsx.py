"""Writing tables to an Excel workbook (optional extra ``xlsx``: openpyxl)."""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import pandas as pd

from edgetrain.errors import MissingExtraError

__all__ = ["MAX_SHEET_ROWS", "with_numbers", "write_xlsx", "xlsx_available"]

logger = logging.getLogger(__name__)

MAX_SHEET_ROWS = 50_000  # resources beyond this are thinned to every k-th sample


def xlsx_available() -> bool:
    """Whether openpyxl can be imported."""
    return importlib.util.find_spec("openpyxl") is not None


def with_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns whose every value is a number ('64', '0.01') turned into numbers.

    Values kept as written while reading (sweep parameters, grid settings) then sort and
    sum in a spreadsheet; columns with any word in them are left alone.
    """
    converted = frame.copy()
    for column in converted.columns:
        if pd.api.types.is_numeric_dtype(converted[column]):
            continue
        values = converted[column].dropna()
        if values.empty or values.map(lambda v: isinstance(v, bool)).any():
            continue
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().all():
            converted[column] = pd.to_numeric(converted[column], errors="coerce")
    return converted


def _sheet_name(name: str) -> str:
    return re.sub(r"[\[\]:*?/\\]", "_", name)[:31]


def write_xlsx(sheets: dict[str, pd.DataFrame], path: Path) -> bool:
    """Write one sheet per table; an empty table gives a sheet with its header only.

    Returns:
        False (with a logged warning naming the extra to install) when openpyxl is
        missing, True when the workbook was written.
    """
    if not xlsx_available():
        logger.warning(
            "%s; skipped %s", MissingExtraError("openpyxl", "xlsx", "the Excel report"), path
        )
        return False
    from openpyxl.utils import get_column_letter

    temporary = path.with_name(f"{path.stem}.tmp{path.suffix}")  # pandas checks the suffix
    with pd.ExcelWriter(temporary, engine="openpyxl") as writer:
        for name, frame in sheets.items():
            sheet = _sheet_name(name)
            if frame.columns.empty:
                frame = pd.DataFrame({"(no data)": []})
            frame.to_excel(writer, sheet_name=sheet, index=False)
            worksheet = writer.sheets[sheet]
            worksheet.freeze_panes = "A2"
            for number, column in enumerate(frame.columns, start=1):
                cells = [len(str(value)) for value in frame[column].head(200).tolist()]
                width = max([len(str(column)), *cells])
                worksheet.column_dimensions[get_column_letter(number)].width = min(
                    max(width + 2, 8), 60
                )
    os.replace(temporary, path)
    logger.info("wrote %s (%d sheets)", path, len(sheets))
    return True
