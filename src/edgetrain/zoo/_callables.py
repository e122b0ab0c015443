"""Import and call user code given as 'package.module:callable'.

A config may name the user's own code (``model: mypkg.nets:build``), never the Python
standard library or builtins (``os:system``): those are refused before anything is
imported. Whatever the callable returns must be what ``kind`` needs (see ``EXPECTED``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import types
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal

from torch import nn
from torch.utils.data import Dataset

from edgetrain.errors import EdgeTrainError
from edgetrain.zoo.base import DataInfo

__all__ = [
    "EXPECTED",
    "Kind",
    "accepted_keywords",
    "call_user",
    "check_result",
    "is_import_path",
    "load_callable",
    "one_line",
]

Kind = Literal["model", "data set"]

#: Top-level modules a code reference may not name: the standard library and builtins.
REFUSED_MODULES = frozenset(sys.stdlib_module_names) | {"builtins"}


def _is_dataset(obj: Any) -> bool:
    return isinstance(obj, Dataset) and hasattr(obj, "__len__")


def _is_model(obj: Any) -> bool:
    return isinstance(obj, nn.Module)


def _is_data_result(obj: Any) -> bool:
    if isinstance(obj, tuple):
        return len(obj) == 2 and _is_dataset(obj[0]) and isinstance(obj[1], DataInfo)
    return _is_dataset(obj)


#: What user code of each kind must return: (test, what it is, for messages).
EXPECTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model": (_is_model, "a torch.nn.Module"),
    "data set": (
        _is_data_result,
        "a torch Dataset with __len__ or a (Dataset, DataInfo) tuple",
    ),
}


def one_line(exc: BaseException) -> str:
    """Return an exception's message on one line, or its type name if it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def is_import_path(name: str) -> bool:
    """True if ``name`` looks like 'package.module:callable'."""
    return ":" in name


def _top_level(module_name: str | None) -> str:
    return (module_name or "").partition(".")[0]


def _refuse_stdlib(spec: str, kind: str, module_name: str | None) -> None:
    """Raise if ``module_name`` belongs to the standard library or builtins."""
    top = _top_level(module_name)
    if top in REFUSED_MODULES:
        raise EdgeTrainError(
            f"{kind} '{spec}' refers to '{module_name}', part of the Python standard library; "
            "a config may only name your own code or installed packages "
            "('package.module:callable')"
        )


def _origin(obj: Any) -> str | None:
    """The module an object was defined in (through functools.partial), or None."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    owner = getattr(obj, "__self__", None)  # builtin functions: __self__ is their module
    if isinstance(owner, types.ModuleType):
        return owner.__name__
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


def load_callable(spec: str, *, kind: Kind) -> Callable[..., Any]:
    """Import the callable named by 'package.module:attr[.attr...]'.

    Modules of the standard library and builtins are refused before anything is
    imported, and so is a callable found through a user module that comes from them
    (``mymod:os.system``, ``mymod:run`` after ``from subprocess import run``).

    Args:
        spec: the import path.
        kind: what is being loaded ("model", "data set"), used in messages.

    Raises:
        EdgeTrainError: if the path is malformed or names the standard library, the
            import fails, the attribute is missing or the object is not callable.
    """
    module_name, _, attr_path = spec.partition(":")
    parts = attr_path.split(".")
    if (
        not module_name
        or not attr_path
        or ":" in attr_path
        or not all(p.isidentifier() for p in module_name.split("."))
        or not all(p.isidentifier() for p in parts)
    ):
        raise EdgeTrainError(f"{kind} '{spec}' must have the form 'package.module:callable'")
    dunder = next((p for p in parts if p.startswith("__")), None)
    if dunder is not None:
        raise EdgeTrainError(
            f"{kind} '{spec}' must name a public callable; '{dunder}' is a special attribute"
        )
    _refuse_stdlib(spec, kind, module_name)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any error inside user code is the user's to fix
        raise EdgeTrainError(f"{kind} '{spec}' could not be imported: {one_line(exc)}") from exc
    done: list[str] = []
    for part in parts:
        if not hasattr(obj, part):
            owner = f"{module_name}:{'.'.join(done)}" if done else module_name
            raise EdgeTrainError(
                f"{kind} '{spec}' could not be imported: '{owner}' has no attribute '{part}'"
            )
        obj = getattr(obj, part)
        done.append(part)
        _refuse_stdlib(spec, kind, _origin(obj))
    if not callable(obj):
        raise EdgeTrainError(
            f"{kind} '{spec}' is not callable (it is a {type(obj).__name__}); "
            "give a function or class that builds it"
        )
    return obj


def accepted_keywords(fn: Callable[..., Any]) -> tuple[tuple[str, ...], bool]:
    """Return the parameter names ``fn`` accepts as keywords and whether it takes ``**kwargs``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature; let the call decide
        return (), True
    names = tuple(
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return names, var_keyword


def check_result(result: Any, *, spec: str, kind: Kind) -> Any:
    """Return ``result`` if it is what ``kind`` needs (see ``EXPECTED``), else raise.

    Raises:
        EdgeTrainError: naming the spec, the type returned and the type expected.
    """
    test, expected = EXPECTED[kind]
    if not test(result):
        raise EdgeTrainError(
            f"{kind} '{spec}' returned {type(result).__name__}, expected {expected}"
        )
    return result


def call_user(
    fn: Callable[..., Any],
    *,
    spec: str,
    kind: Kind,
    common: Mapping[str, Any],
    options: Mapping[str, Any],
    reserved: Collection[str] = (),
) -> Any:
    """Call user code with the ``common`` keywords it accepts plus all of ``options``.

    ``reserved`` names (and those of ``common``) are not listed as accepted options.
    The result is checked against what ``kind`` needs (:func:`check_result`).

    Raises:
        EdgeTrainError: if an option is not accepted, the call raises, or the result
            is not of the expected type.
    """
    names, var_keyword = accepted_keywords(fn)
    unknown = [key for key in options if key not in names and not var_keyword]
    if unknown:
        accepted = ", ".join(n for n in names if n not in common and n not in reserved) or "none"
        raise EdgeTrainError(
            f"{kind} '{spec}' does not accept option '{unknown[0]}'; accepted options: {accepted}"
        )
    kwargs = {k: v for k, v in common.items() if var_keyword or k in names}
    kwargs.update(options)
    try:
        result = fn(**kwargs)
    except EdgeTrainError:
        raise
    except Exception as exc:  # the user's code failed; say so on one line
        raise EdgeTrainError(
            f"{kind} '{spec}' failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
    return check_result(result, spec=spec, kind=kind)
