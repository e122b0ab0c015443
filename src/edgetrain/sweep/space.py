"""Search spaces: a base training config plus the parameters a sweep varies.

A space file (YAML)::

    base: {model: cnn, data: digits, epochs: 2}      # or a path to a training YAML
    params:
      lr: {low: 0.0005, high: 0.01, log: true}        # float range (log scale)
      batch_size: {choices: [32, 128]}               # categorical
      epochs: {low: 1, high: 3}                       # int range (both bounds integers)
      monitor.interval_s: {choices: [0.1, 0.2]}       # dotted keys reach sections
      internal: {choices: [none, quantize, compile]}  # greenscreen's "internal" knob
    objectives: [accuracy, energy]                    # default: the task's metric + energy;
                                                      # or [val_rmse:min, energy], [efficiency]
    sampler: random                                   # random (default) | tpe | nsga2
    seed: 0                                           # the sampler's seed

Every parameter is checked against :class:`~edgetrain.config.TrainConfig` by building
the config at each choice and at both bounds, so a bad value is reported with the
parameter's name before any trial runs. ``seed`` and the data keys (``split``, ``data``,
``data_path``, ``data_args``) change which samples are validation and test data: they
may only be swept with ``vary_data: true``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edgetrain.config import TrainConfig, config_to_dict, read_yaml, validate_config
from edgetrain.errors import EdgeTrainError, suggest
from edgetrain.sweep.objectives import (
    DEFAULT_OBJECTIVES,
    needs_energy,
    parse_objective,
    resolve_objectives,
    task_of_config,
)

__all__ = [
    "DATA_KEYS",
    "INTERNAL_CHOICES",
    "SAMPLERS",
    "ParamSpec",
    "SearchSpace",
    "decode_choice",
    "encode_choice",
    "load_space",
    "space_from_dict",
]

log = logging.getLogger(__name__)

SAMPLERS = ("random", "tpe", "nsga2")
INTERNAL = "internal"
INTERNAL_CHOICES = ("none", "quantize", "compile")
#: Keys that decide which samples are training, validation and test data.
DATA_KEYS = ("seed", "split", "data", "data_path", "data_args")
#: Keys the sweep sets itself.
RESERVED_KEYS = ("out", "init_from")
_TOP_KEYS = ("base", "params", "objectives", "sampler", "seed", "vary_data")
_SPEC_KEYS = ("choices", "low", "high", "log", "step", "type")
_OPEN_DICTS = ("model_args", "data_args")  # free-form mappings: any sub-key is accepted


@dataclass(frozen=True)
class ParamSpec:
    """One swept parameter: categorical ``choices`` or a numeric range.

    Attributes:
        name: the training-config key (dotted for sections) or ``internal``.
        kind: ``categorical``, ``int`` or ``float``.
        choices: the values of a categorical parameter, as given in the space file.
        low: lower bound of a range (inclusive).
        high: upper bound of a range (inclusive).
        log: sample the range on a log scale.
        step: grid step of a range (None: continuous for floats, 1 for ints).
    """

    name: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None

    def test_values(self) -> list[Any]:
        """The values checked against the training config: every choice, or both bounds."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def to_dict(self) -> dict[str, Any]:
        """The spec as written in a space file."""
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        if self.kind == "float" and isinstance(self.low, int) and isinstance(self.high, int):
            out["type"] = "float"
        return out

    def check_value(self, value: Any) -> str | None:
        """Why ``value`` (as Optuna stores it) is not a value of this parameter, or None.

        A categorical value must be one of the choices exactly (same JSON text: ``1`` is
        not ``1.0`` nor ``true``); so a code reference (``module:callable``) passes only
        when the space lists that very string. A range value must be a finite number
        within the bounds (and on the step's grid).
        """
        where = f"parameter '{self.name}' = {value!r}"
        if self.kind == "categorical":
            allowed = [encode_choice(c) for c in self.choices]
            text = _json_text(value)
            if text is not None and any(text == _json_text(a) for a in allowed):
                return None
            what = (
                "a code reference that the local space does not list as a choice"
                if isinstance(value, str) and _looks_like_code(value)
                else "not one of the local space's choices"
            )
            return f"{where} is {what} {allowed!r}"
        if not _is_number(value) or not math.isfinite(value):
            return f"{where} must be a number in [{self.low}, {self.high}] (local space)"
        if self.kind == "int" and not _is_int(value):
            return f"{where} must be an integer in [{self.low}, {self.high}] (local space)"
        if not self.low <= value <= self.high:
            return f"{where} is outside the local space's range [{self.low}, {self.high}]"
        if self.step is not None:
            k = (value - self.low) / self.step
            if abs(k - round(k)) > 1e-8:
                return (
                    f"{where} is not on the local space's grid (low {self.low}, step {self.step})"
                )
        return None

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this parameter (public ``suggest_*`` API)."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, [encode_choice(c) for c in self.choices])
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            self.name,
            float(self.low),
            float(self.high),
            step=None if self.step is None else float(self.step),
            log=self.log,
        )

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter (choices encoded as scalars)."""
        from edgetrain.sweep._optuna import optuna

        CategoricalDistribution = optuna.distributions.CategoricalDistribution
        FloatDistribution = optuna.distributions.FloatDistribution
        IntDistribution = optuna.distributions.IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution([encode_choice(c) for c in self.choices])
        if self.kind == "int":
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return FloatDistribution(
            float(self.low),
            float(self.high),
            log=self.log,
            step=None if self.step is None else float(self.step),
        )


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space.

    Attributes:
        base: the base training config, every default filled in (``out`` left unset).
        params: the swept parameters, by name, in file order.
        objectives: objective names (see :mod:`edgetrain.sweep.objectives`).
        sampler: ``random``, ``tpe`` or ``nsga2``.
        seed: the sampler's seed.
        vary_data: whether data keys (seed, split, data...) may be swept.
    """

    base: dict[str, Any]
    params: dict[str, ParamSpec]
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    sampler: str = "random"
    seed: int = 0
    vary_data: bool = False
    source: str | None = field(default=None, compare=False)

    def data_params(self) -> list[str]:
        """Swept parameters that change which samples are validation and test data."""
        return [n for n in self.params if n.split(".")[0] in DATA_KEYS]

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions for ``study.ask(fixed_distributions=...)``."""
        return {name: spec.distribution() for name, spec in self.params.items()}

    def to_dict(self) -> dict[str, Any]:
        """The resolved space (base inlined) as YAML-able data."""
        return {
            "base": self.base,
            "params": {name: spec.to_dict() for name, spec in self.params.items()},
            "objectives": list(self.objectives),
            "sampler": self.sampler,
            "seed": self.seed,
            "vary_data": self.vary_data,
        }

    def check_params(self, params: Mapping[str, Any]) -> list[str]:
        """Why a trial's parameters (from the study storage) may not run here; [] if they may.

        Every parameter of the local space must have a value it allows, and there must be
        no other parameter: values that another worker, or anyone with access to a
        shared database, put into the storage never reach a training config unchecked.
        """
        problems = [
            f"parameter '{name}' is not in the local space ({', '.join(self.params)})"
            for name in params
            if name not in self.params
        ]
        for name, spec in self.params.items():
            if name not in params:
                problems.append(f"parameter '{name}' of the local space has no value")
                continue
            problem = spec.check_value(params[name])
            if problem:
                problems.append(problem)
        return problems

    def trial_config(self, params: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """The training config of a trial and whether its model is quantised afterwards.

        Args:
            params: parameter values as Optuna stores them (encoded choices).

        Returns:
            ``(config mapping, quantize)``.
        """
        data = json.loads(json.dumps(self.base))  # deep copy of plain data
        quantize = False
        for name, raw in params.items():
            value = decode_choice(raw) if name in self.params else raw
            if name == INTERNAL:
                quantize = value == "quantize"
                data["compile"] = value == "compile"
                continue
            _set_dotted(data, name.split("."), value)
        return data, quantize


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna can store it: lists and mappings become JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def decode_choice(value: Any) -> Any:
    """Inverse of :func:`encode_choice`."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _json_text(value: Any) -> str | None:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None


def _looks_like_code(value: str) -> bool:
    """``package.module:callable`` (what the zoo imports and calls)."""
    head, sep, tail = value.partition(":")
    return bool(sep and head and tail and "/" not in value and " " not in value)


def _set_dotted(target: dict[str, Any], keys: list[str], value: Any) -> None:
    node = target
    for k in keys[:-1]:
        child = node.get(k)
        if not isinstance(child, dict):
            child = {}
            node[k] = child
        node = child
    node[keys[-1]] = value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_key(name: str) -> str | None:
    """Problem with a parameter name, or None when it names a training-config key."""
    if name == INTERNAL:
        return None
    parts = name.split(".")
    if any(not p for p in parts):
        return f"params.{name}: a key must be a non-empty dotted name"
    model: type[BaseModel] = TrainConfig
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            choices = list(fields) + ([INTERNAL] if i == 0 else [])
            where = "training-config key" if i == 0 else f"key in section '{'.'.join(parts[:i])}'"
            return f"params.{name}: unknown {where} '{part}'{suggest(part, choices)}"
        if i == 0 and part in _OPEN_DICTS:
            return None  # model_args.width: checked when the model or data set is built
        annotation = fields[part].annotation
        is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if i < len(parts) - 1:
            if not is_section:
                return f"params.{name}: '{part}' is not a section, so it has no sub-keys"
            model = annotation
        elif is_section:
            return f"params.{name}: '{part}' is a section; sweep one of its keys ({part}.KEY)"
    return None


def _parse_spec(name: str, raw: Any) -> tuple[ParamSpec | None, list[str]]:
    where = f"params.{name}"
    if not isinstance(raw, Mapping):
        hint = " (a fixed value belongs in base)" if not isinstance(raw, list) else ""
        if isinstance(raw, list):
            hint = f" (write {{choices: {json.dumps(raw)}}})"
        return None, [
            f"{where} must be a mapping with 'choices' or 'low'/'high', got {raw!r}{hint}"
        ]
    problems = [
        f"{where}: unknown option '{k}'{suggest(str(k), _SPEC_KEYS)}"
        for k in raw
        if k not in _SPEC_KEYS
    ]
    if "choices" in raw:
        extra = [k for k in ("low", "high", "log", "step", "type") if k in raw]
        if extra:
            problems.append(f"{where}: give either choices or low/high, not both ({extra[0]})")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            problems.append(f"{where}.choices must be a non-empty list, got {choices!r}")
            return None, problems
        encoded = [encode_choice(c) for c in choices]
        if len({json.dumps(c) for c in encoded}) != len(encoded):
            problems.append(f"{where}.choices has duplicates: {choices!r}")
        if name == INTERNAL:
            bad = [c for c in choices if c not in INTERNAL_CHOICES]
            if bad:
                problems.append(
                    f"{where}.choices must be among {list(INTERNAL_CHOICES)}, got {bad[0]!r}"
                    f"{suggest(str(bad[0]), INTERNAL_CHOICES)}"
                )
        return (None if problems else ParamSpec(name, "categorical", tuple(choices))), problems
    if "low" not in raw or "high" not in raw:
        missing = "low" if "low" not in raw else "high"
        return None, [
            *problems,
            f"{where} needs 'choices' or both 'low' and 'high' ({missing} missing)",
        ]
    low, high, log_scale, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
    kind = raw.get("type")
    for key, value in (("low", low), ("high", high)):
        if not _is_number(value):
            problems.append(f"{where}.{key} must be a number, got {value!r}")
    if not isinstance(log_scale, bool):
        problems.append(f"{where}.log must be true or false, got {log_scale!r}")
    if kind not in (None, "int", "float"):
        problems.append(f"{where}.type must be int or float, got {kind!r}")
    if step is not None and not (_is_number(step) and step > 0):
        problems.append(f"{where}.step must be a number > 0, got {step!r}")
    if name == INTERNAL:
        problems.append(f"{where} must give choices (a subset of {list(INTERNAL_CHOICES)})")
    if problems:
        return None, problems
    if kind is None:
        kind = (
            "int" if _is_int(low) and _is_int(high) and (step is None or _is_int(step)) else "float"
        )
    if kind == "int" and not (_is_int(low) and _is_int(high)):
        problems.append(f"{where}: type int needs integer bounds, got low={low!r}, high={high!r}")
    if not low < high:
        problems.append(f"{where}.low must be < high, got low={low!r}, high={high!r}")
    if log_scale and low <= 0:
        problems.append(f"{where}.low must be > 0 on a log scale, got {low!r}")
    if log_scale and step is not None:
        problems.append(f"{where}: step cannot be combined with log: true")
    if problems:
        return None, problems
    return ParamSpec(name, kind, (), low, high, log_scale, step), []


def _check_against_config(base: dict[str, Any], spec: ParamSpec, vary_data: bool) -> list[str]:
    """Build the config at every choice or bound of ``spec``; report what fails."""
    where = f"params.{spec.name}"
    top = spec.name.split(".")[0]
    if top in RESERVED_KEYS:
        return [f"{where}: '{top}' is set by the sweep (each trial has its own run directory)"]
    if top in DATA_KEYS and not vary_data:
        return [
            f"{where}: sweeping '{top}' changes which samples are validation and test data, so "
            "trials would not be compared on the same validation set and test samples could "
            "be trained on; set vary_data: true in the space file to sweep it anyway"
        ]
    if spec.name == INTERNAL and base.get("compile"):
        return [f"{where}: base sets compile: true, which the internal knob controls; remove it"]
    problems = []
    space = SearchSpace(base, {spec.name: spec})
    for value in spec.test_values():
        data, _ = space.trial_config({spec.name: encode_choice(value)})
        try:
            validate_config(data)
        except EdgeTrainError as exc:
            label = (
                "choice" if spec.kind == "categorical" else ("low" if value == spec.low else "high")
            )
            problems.append(f"{where}: {label} {value!r} is invalid: {exc}")
    return problems


def _load_base(raw: Any, root: Path | None) -> tuple[dict[str, Any] | None, list[str]]:
    if raw is None:
        raw = {}
    if isinstance(raw, str):
        path = Path(raw)
        if not path.is_absolute() and root is not None:
            path = root / path
        raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        return None, [f"base must be a training config mapping or a YAML path, got {raw!r}"]
    reserved = [k for k in RESERVED_KEYS if raw.get(k) is not None]
    if reserved:
        return None, [f"base.{reserved[0]} is set by the sweep; remove it from base"]
    try:
        cfg = validate_config(raw)
    except EdgeTrainError as exc:
        return None, [f"base: {exc}"]
    data = config_to_dict(cfg)
    for key in RESERVED_KEYS:
        data.pop(key, None)
    return data, []


def space_from_dict(
    raw: Mapping[str, Any], *, root: Path | None = None, source: str | None = None
) -> SearchSpace:
    """Validate a space mapping (all problems reported together).

    Args:
        raw: the parsed space file.
        root: directory that a relative ``base`` path is resolved against.
        source: where the space came from (for messages).

    Raises:
        EdgeTrainError: naming each bad parameter, option or value.
    """
    problems = [
        f"unknown space key '{k}'{suggest(str(k), _TOP_KEYS)}" for k in raw if k not in _TOP_KEYS
    ]
    base, base_problems = _load_base(raw.get("base"), root)
    problems += base_problems
    vary_data = raw.get("vary_data", False)
    if not isinstance(vary_data, bool):
        problems.append(f"vary_data must be true or false, got {vary_data!r}")
        vary_data = False
    sampler = raw.get("sampler", "random")
    if sampler not in SAMPLERS:
        problems.append(
            f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}{suggest(str(sampler), SAMPLERS)}"
        )
    seed = raw.get("seed", 0)
    if not _is_int(seed):
        problems.append(f"seed must be an integer, got {seed!r}")
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    try:
        objectives = resolve_objectives(raw.get("objectives"), base)
    except EdgeTrainError as exc:
        problems.append(str(exc))
    problems += _task_problems(base, objectives, params_raw=raw.get("params"))
    params_raw = raw.get("params")
    params: dict[str, ParamSpec] = {}
    if not isinstance(params_raw, Mapping) or not params_raw:
        problems.append(
            f"params must be a non-empty mapping of parameter names to specs, got {params_raw!r}"
        )
        params_raw = {}
    for name, spec_raw in params_raw.items():
        name = str(name)
        key_problem = _check_key(name)
        if key_problem:
            problems.append(key_problem)
            continue
        spec, spec_problems = _parse_spec(name, spec_raw)
        problems += spec_problems
        if spec is not None and base is not None:
            problems += _check_against_config(base, spec, vary_data)
        if spec is not None:
            params[name] = spec
    if needs_energy(objectives):
        if base is not None and not base.get("monitor", {}).get("enabled", True):
            problems.append(
                "base.monitor.enabled is false, but the objectives need energy from the monitor"
            )
        if "monitor.enabled" in params:
            problems.append("params.monitor.enabled: the energy objective needs the monitor on")
    if INTERNAL in params and "compile" in params:
        problems.append("params.compile: the internal knob already sets compile; sweep only one")
    if problems:
        head = f"invalid search space{f' {source}' if source else ''}: "
        raise EdgeTrainError(head + "; ".join(dict.fromkeys(problems)))
    assert base is not None
    return SearchSpace(
        base=base,
        params=params,
        objectives=objectives,
        sampler=str(sampler),
        seed=int(seed),
        vary_data=vary_data,
        source=source,
    )


def _task_problems(
    base: dict[str, Any] | None, objectives: tuple[str, ...], params_raw: Any
) -> list[str]:
    """What the base config's task cannot do: accuracy per kJ or int8 accuracy without
    accuracy (a task that reports none, e.g. regression)."""
    task = task_of_config(base) if base is not None else None
    if task in (None, "classification"):
        return []
    problems = []
    if any(parse_objective(o).kind == "efficiency" for o in objectives):
        problems.append(
            f"objectives: efficiency is validation accuracy per kJ, and the {task} task "
            "reports no accuracy; optimise its metric and energy instead ([metric, energy])"
        )
    internal = params_raw.get(INTERNAL) if isinstance(params_raw, Mapping) else None
    if isinstance(internal, Mapping) and "quantize" in (internal.get("choices") or []):
        problems.append(
            f"params.internal: quantize measures int8 accuracy and works for classification "
            f"only, not for the {task} task"
        )
    return problems


def load_space(
    source: str | Path | Mapping[str, Any],
    *,
    objectives: list[str] | None = None,
    sampler: str | None = None,
    seed: int | None = None,
) -> SearchSpace:
    """Load and validate a search space from a YAML file or a mapping.

    Args:
        source: the space file or its parsed content.
        objectives: replace the file's objectives.
        sampler: replace the file's sampler.
        seed: replace the file's seed.
    """
    if isinstance(source, Mapping):
        raw, root, label = dict(source), None, None
    else:
        path = Path(source)
        if not path.is_file():
            raise EdgeTrainError(f"search space file not found: {path}")
        raw, root, label = read_yaml(path), path.parent, str(path)
    if objectives is not None:
        raw["objectives"] = list(objectives)
    if sampler is not None:
        raw["sampler"] = sampler
    if seed is not None:
        raw["seed"] = seed
    return space_from_dict(raw, root=root, source=label)
