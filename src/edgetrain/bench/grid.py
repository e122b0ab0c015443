"""The grid of configurations a benchmark runs: ``key=v1,v2,...`` specs and their product.

Values are read as YAML scalars (``0`` -> 0, ``1e-3`` -> 0.001, ``true`` -> True,
``null`` -> None); a value holding a comma goes in brackets or quotes
(``split=[0.9,0.1,0.0],[0.8,0.2,0.0]``). The cartesian product varies the last key
fastest. ``prefetch_factor`` only means something with DataLoader workers, so a
configuration with ``num_workers=0`` drops it (with a note) and configurations that
become identical that way are run once.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel

from edgetrain.config import TrainConfig, config_to_dict, validate_config
from edgetrain.errors import EdgeTrainError, suggest

__all__ = [
    "GRID_FORBIDDEN",
    "GridAxis",
    "GridPoint",
    "apply_settings",
    "expand_grid",
    "grid_keys",
    "parse_grid",
    "parse_grid_spec",
]

#: Keys the benchmark sets itself: where runs go and how many epochs they train.
GRID_FORBIDDEN: dict[str, str] = {
    "out": "each configuration's run directory is DIR/runs/<k>/; set DIR with --out",
    "epochs": "set the number of epochs with --epochs",
}
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


@dataclass(frozen=True)
class GridAxis:
    """One grid dimension: a config key (dotted for sections) and its values.

    Attributes:
        key: e.g. ``num_workers`` or ``monitor.interval_s``.
        values: the values, in the order given.
        spec: the text it came from, for messages.
    """

    key: str
    values: tuple[Any, ...]
    spec: str


@dataclass(frozen=True)
class GridPoint:
    """One configuration of the grid.

    Attributes:
        settings: the effective value of every grid key (None where it does not apply).
        notes: what was changed or merged to make the combination valid.
    """

    settings: dict[str, Any]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def label(self) -> str:
        """'num_workers=0 batch_size=16' (or 'base' for an empty grid)."""
        if not self.settings:
            return "base"
        return " ".join(f"{k}={_show(v)}" for k, v in self.settings.items())


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def grid_keys() -> list[str]:
    """Every key a grid may vary (top-level and dotted section keys)."""
    keys: list[str] = []
    for name, info in TrainConfig.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += [f"{name}.{sub}" for sub in annotation.model_fields]
        else:
            keys.append(name)
    return keys


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes."""
    parts, depth, quote, current = [], 0, "", []
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _scalar(raw: str, spec: str) -> Any:
    text = raw.strip()
    if not text:
        raise EdgeTrainError(f"--grid '{spec}': empty value in the list (two commas in a row?)")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise EdgeTrainError(f"--grid '{spec}': cannot read value {text!r} as YAML") from None
    if isinstance(value, str) and _FLOAT.match(value):
        value = float(value)  # YAML 1.1 reads '1e-3' as a string
    return value


def _check_key(key: str, spec: str) -> None:
    if key in GRID_FORBIDDEN:
        raise EdgeTrainError(f"--grid '{spec}': '{key}' cannot be varied; {GRID_FORBIDDEN[key]}")
    known = grid_keys()
    if key not in known:
        raise EdgeTrainError(f"--grid '{spec}': unknown config key '{key}'{suggest(key, known)}")


def parse_grid_spec(spec: str) -> GridAxis:
    """Parse one ``key=v1,v2,...`` spec.

    Raises:
        EdgeTrainError: malformed spec, unknown or forbidden key, unreadable value;
            the message names the spec.
    """
    if "=" not in spec:
        raise EdgeTrainError(f"--grid expects key=v1,v2,... got '{spec}'")
    key, raw = spec.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise EdgeTrainError(f"--grid '{spec}': the key before '=' is empty")
    if not raw.strip():
        raise EdgeTrainError(f"--grid '{spec}': no values after '='")
    _check_key(key, spec)
    values = tuple(_scalar(part, spec) for part in _split_values(raw))
    return GridAxis(key, values, spec)


def parse_grid(specs: Iterable[str] = (), table: Mapping[str, Any] | None = None) -> list[GridAxis]:
    """Parse ``--grid`` specs (each may hold several, space-separated) and a YAML ``grid:``.

    Args:
        specs: ``key=v1,v2`` strings; a later spec for the same key is an error.
        table: a mapping key -> list of values (the ``bench.grid`` section of a config);
            keys also given in ``specs`` are replaced by them.

    Raises:
        EdgeTrainError: naming the offending spec.
    """
    axes: dict[str, GridAxis] = {}
    for key, values in (table or {}).items():
        spec = f"bench.grid.{key}"
        key = str(key)
        _check_key(key, spec)
        items = tuple(values) if isinstance(values, list | tuple) else (values,)
        if not items:
            raise EdgeTrainError(f"{spec}: needs at least one value")
        axes[key] = GridAxis(key, items, spec)
    from_cli: set[str] = set()
    for text in specs:
        for spec in text.split():
            axis = parse_grid_spec(spec)
            if axis.key in from_cli:
                raise EdgeTrainError(
                    f"--grid '{spec}': key '{axis.key}' is given twice; list all its values in one spec"
                )
            from_cli.add(axis.key)
            axes[axis.key] = axis
    for axis in axes.values():
        if len(set(map(repr, axis.values))) != len(axis.values):
            raise EdgeTrainError(f"--grid '{axis.spec}': a value is listed twice")
    return list(axes.values())


def apply_settings(data: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a config mapping with dotted ``settings`` applied."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key, value in settings.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _effective(data: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Drop prefetch_factor where there are no workers to prefetch."""
    if data.get("num_workers") == 0 and data.get("prefetch_factor") is not None:
        note = f"prefetch_factor={data['prefetch_factor']} ignored with num_workers=0"
        return {**data, "prefetch_factor": None}, (note,)
    return data, ()


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def expand_grid(
    base: TrainConfig, axes: Sequence[GridAxis]
) -> tuple[list[tuple[GridPoint, TrainConfig]], list[tuple[GridPoint, str]]]:
    """Every valid combination as (point, validated config), and the skipped ones.

    A value that is invalid on its own (``batch_size=0``) is an error naming its spec; a
    combination that is invalid only together (``micro_batch_size=32 batch_size=16``) is
    skipped with the reason. Combinations made identical by dropping ``prefetch_factor``
    are run once.

    Raises:
        EdgeTrainError: a value invalid on its own.
    """
    base_data = config_to_dict(base)
    for axis in axes:
        for value in axis.values:
            data, _ = _effective(apply_settings(base_data, {axis.key: value}))
            try:
                validate_config(data)
            except EdgeTrainError as exc:
                raise EdgeTrainError(f"--grid '{axis.spec}': {exc}") from None
    valid: list[tuple[GridPoint, TrainConfig]] = []
    skipped: list[tuple[GridPoint, str]] = []
    seen: dict[str, int] = {}
    for combo in itertools.product(*(axis.values for axis in axes)):
        settings = {axis.key: value for axis, value in zip(axes, combo, strict=True)}
        data, notes = _effective(apply_settings(base_data, settings))
        effective = {key: _lookup(data, key) for key in settings}
        point = GridPoint(effective, notes)
        try:
            config = validate_config(data)
        except EdgeTrainError as exc:
            skipped.append((point, str(exc)))
            continue
        identity = repr(sorted(config_to_dict(config).items()))
        if identity in seen:
            index = seen[identity]
            first, cfg = valid[index]
            merged = f"also stands for {GridPoint(settings).label()}"
            valid[index] = (GridPoint(first.settings, (*first.notes, merged)), cfg)
            continue
        seen[identity] = len(valid)
        valid.append((point, config))
    return valid, skipped
