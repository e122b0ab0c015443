"""The base of every config section: unknown keys are errors, assignments are validated.

Numbers are strict where it matters for safety: a boolean is never taken for an integer
or a number (YAML reads ``true`` as a bool, which Python would count as 1), and floats
must be finite (no ``nan`` or ``inf``).
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

__all__ = ["BOOL_NOT_INTEGER", "BOOL_NOT_NUMBER", "SEED_MAX", "Section"]

#: Seeds go to random, numpy and torch; numpy takes 0 <= seed < 2**32.
SEED_MAX = 2**32 - 1

#: Error types raised for a bool given where an integer or a number is expected.
BOOL_NOT_INTEGER = "bool_not_integer"
BOOL_NOT_NUMBER = "bool_not_number"


def _numeric_kind(annotation: Any) -> tuple[str, bool] | None:
    """(error type, per item?) for a field of int/float (or a list/tuple of them), else None.

    Optional fields count (None is allowed as before); unions with other types (such as
    ``int | str``) are left to their own validators.
    """
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return _numeric_kind(args[0]) if len(args) == 1 else None
    if origin in (list, tuple):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        if args and all(a in (int, float) for a in args):
            return (BOOL_NOT_NUMBER if float in args else BOOL_NOT_INTEGER), True
        return None
    if annotation is int:
        return BOOL_NOT_INTEGER, False
    if annotation is float:
        return BOOL_NOT_NUMBER, False
    return None


class Section(BaseModel):
    """A config section (``monitor``, ``sparse_update``, ...)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Refuse true/false for int and float fields (and items of lists of them)."""
        if info.field_name is None:
            return value
        kind = _numeric_kind(cls.model_fields[info.field_name].annotation)
        if kind is None:
            return value
        error, per_item = kind
        what = "an integer" if error == BOOL_NOT_INTEGER else "a number"
        if isinstance(value, bool):
            raise PydanticCustomError(error, f"must be {what}, not true/false")
        if per_item and isinstance(value, list | tuple) and any(isinstance(v, bool) for v in value):
            raise PydanticCustomError(error, f"items must each be {what}, not true/false")
        return value
