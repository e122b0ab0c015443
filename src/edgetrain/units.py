"""Parsing and formatting of byte sizes and durations ("1.5GiB", "300MiB", "2h")."""

from __future__ import annotations

import re

from edgetrain.errors import EdgeTrainError

__all__ = ["format_bytes", "format_seconds", "parse_bytes", "parse_seconds"]

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SECOND_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: str | int | float, *, name: str = "size") -> int:
    """Parse '1.5GiB', '300MB', '1024' or a number into bytes.

    Raises:
        EdgeTrainError: if the value is not a non-negative size.
    """
    if isinstance(value, bool):
        raise EdgeTrainError(
            f"{name} must be a size such as '1.5GiB' or a number of bytes, got {value!r}"
        )
    if isinstance(value, int | float):
        if value < 0:
            raise EdgeTrainError(f"{name} must be >= 0 bytes, got {value}")
        return int(value)
    match = _NUMBER_UNIT.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS:
        raise EdgeTrainError(
            f"{name} must be a size such as '1.5GiB', '300MiB' or '500MB', got {value!r}"
        )
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


def parse_seconds(value: str | int | float, *, name: str = "duration") -> float:
    """Parse '0.5', '200ms', '2min' or a number into seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _NUMBER_UNIT.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SECOND_UNITS:
        raise EdgeTrainError(
            f"{name} must be a duration such as '0.2', '200ms' or '2min', got {value!r}"
        )
    return float(match.group(1)) * _SECOND_UNITS[unit]


def format_bytes(n: float | int | None) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_seconds(s: float | None) -> str:
    """Human-readable duration: 75.0 -> '1m 15s'."""
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    minutes, seconds = divmod(round(s), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
