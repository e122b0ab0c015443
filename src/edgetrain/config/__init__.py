"""Validated configuration: one object per run, YAML files and ``--set`` overrides."""

from edgetrain.config.loader import (
    config_to_dict,
    load_config,
    parse_override,
    read_yaml,
    validate_config,
    write_yaml_text,
)
from edgetrain.config.schema import MonitorConfig, TrainConfig

__all__ = [
    "MonitorConfig",
    "TrainConfig",
    "config_to_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "validate_config",
    "write_yaml_text",
]
