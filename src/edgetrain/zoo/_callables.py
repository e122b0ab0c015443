"""Import and call user code given as 'package.module:callable'."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any

from edgetrain.errors import EdgeTrainError

__all__ = ["accepted_keywords", "call_user", "is_import_path", "load_callable", "one_line"]


def one_line(exc: BaseException) -> str:
    """Return an exception's message on one line, or its type name if it has none."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def is_import_path(name: str) -> bool:
    """True if ``name`` looks like 'package.module:callable'."""
    return ":" in name


def load_callable(spec: str, *, kind: str) -> Callable[..., Any]:
    """Import the callable named by 'package.module:attr[.attr...]'.

    Args:
        spec: the import path.
        kind: what is being loaded ("model", "data set"), used in messages.

    Raises:
        EdgeTrainError: if the path is malformed, the import fails, the attribute is
            missing or the object is not callable.
    """
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path or ":" in attr_path:
        raise EdgeTrainError(f"{kind} '{spec}' must have the form 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # any error inside user code is the user's to fix
        raise EdgeTrainError(f"{kind} '{spec}' could not be imported: {one_line(exc)}") from exc
    done: list[str] = []
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            owner = f"{module_name}:{'.'.join(done)}" if done else module_name
            raise EdgeTrainError(
                f"{kind} '{spec}' could not be imported: '{owner}' has no attribute '{part}'"
            )
        obj = getattr(obj, part)
        done.append(part)
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


def call_user(
    fn: Callable[..., Any],
    *,
    spec: str,
    kind: str,
    common: Mapping[str, Any],
    options: Mapping[str, Any],
    reserved: Collection[str] = (),
) -> Any:
    """Call user code with the ``common`` keywords it accepts plus all of ``options``.

    ``reserved`` names (and those of ``common``) are not listed as accepted options.

    Raises:
        EdgeTrainError: if an option is not accepted, or the call raises.
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
        return fn(**kwargs)
    except EdgeTrainError:
        raise
    except Exception as exc:  # the user's code failed; say so on one line
        raise EdgeTrainError(
            f"{kind} '{spec}' failed: {type(exc).__name__}: {one_line(exc)}"
        ) from exc
