"""Loading a :class:`TrainConfig` from YAML files, mappings and ``--set`` overrides.

All problems are reported together in one :class:`EdgeTrainError`, each naming the key,
the rule and the value, with a close-match suggestion for unknown keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from edgetrain.config.base import BOOL_NOT_INTEGER, BOOL_NOT_NUMBER
from edgetrain.config.schema import TrainConfig
from edgetrain.errors import EdgeTrainError, suggest

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

__all__ = ["config_to_dict", "load_config", "parse_override", "read_yaml", "write_yaml_text"]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from a file, with one-line errors for every failure."""
    p = Path(path)
    if not p.exists():
        raise EdgeTrainError(f"config file not found: {p}")
    if p.is_dir():
        raise EdgeTrainError(f"config file must be a YAML file, got a directory: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise EdgeTrainError(f"malformed YAML in {p}{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise EdgeTrainError(
            f"config file {p} must contain a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse 'a.b=value' into (['a', 'b'], value), the value read as YAML ('3' -> 3)."""
    if "=" not in text:
        raise EdgeTrainError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise EdgeTrainError(f"--set expects key=value with a non-empty key, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not valid YAML: keep it as the literal string
    if isinstance(value, str) and _FLOAT.match(value):
        value = float(value)  # YAML 1.1 reads '1e-3' as a string
    return key.split("."), value


def _set_dotted(target: dict[str, Any], keys: list[str], value: Any) -> None:
    node = target
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = TrainConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)


def _lookup(data: Mapping[str, Any], loc: tuple[Any, ...]) -> Any:
    node: Any = data
    for part in loc:
        if (isinstance(node, Mapping) and part in node) or (
            isinstance(node, list | tuple) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        else:
            return None
    return node


def _key(loc: tuple[Any, ...]) -> str:
    """'a.b' for a nested key, 'split[0]' for an item of a list."""
    if len(loc) == 1:
        return str(loc[0])
    key = ""
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += f".{part}" if key else str(part)
    return key


def _describe(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = _key(loc)
    kind = error["type"]
    value = _lookup(data, loc)
    if value is None and error.get("input") is not None:  # a union's branch: not a data key
        value = error["input"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'{suggest(str(loc[-1]), _fields_at(loc))}"
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        return f"{key} must be one of {ctx.get('expected', '')}, got {value!r}{_suggest_literal(value, ctx)}"
    rules = {
        "greater_than": f"must be > {ctx.get('gt')}",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_parsing": "must be true or false",
        "bool_type": "must be true or false",
        "dict_type": "must be a mapping",
        "string_type": "must be a string",
        "too_short": "has too few items",
        "too_long": "has too many items",
        "tuple_type": "must be a list",
    }
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        return message if not key or message.startswith(key) else f"{key}: {message}"
    if kind in (BOOL_NOT_INTEGER, BOOL_NOT_NUMBER):
        rule = error["msg"]  # the section's own wording (an item or the value itself)
    else:
        rule = rules.get(kind, error["msg"].lower())
    return f"{key} {rule}, got {value!r}"


def _suggest_literal(value: Any, ctx: Mapping[str, Any]) -> str:
    expected = str(ctx.get("expected", ""))
    choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",")]
    return suggest(str(value), [c for c in choices if c])


def load_config(
    *sources: str | Path | Mapping[str, Any] | None,
    overrides: Iterable[str] = (),
) -> TrainConfig:
    """Build a validated config from YAML files or mappings (later wins) and overrides.

    Raises:
        EdgeTrainError: listing every problem found, each with key, rule and value.
    """
    data: dict[str, Any] = {}
    for src in sources:
        if src is None:
            continue
        layer = dict(src) if isinstance(src, Mapping) else read_yaml(src)
        data = _merge(data, layer)
    for text in overrides:
        keys, value = parse_override(text)
        _set_dotted(data, keys, value)
    return validate_config(data)


def validate_config(data: Mapping[str, Any]) -> TrainConfig:
    """Validate a plain mapping into a :class:`TrainConfig` (all problems in one error)."""
    try:
        return TrainConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_describe(err, data) for err in exc.errors()]
        # de-duplicate while keeping order (a bad value can fail several union branches)
        unique = list(dict.fromkeys(problems))
        head = "invalid configuration: " if len(unique) > 1 else ""
        raise EdgeTrainError(head + "; ".join(unique)) from None


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain YAML-able data (paths as strings, tuples as lists)."""
    return config.model_dump(mode="json")


def write_yaml_text(data: Mapping[str, Any]) -> str:
    """YAML text with keys in definition order."""
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=None)
