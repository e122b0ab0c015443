"""Validated configuration: one object per run, YAML files and ``--set`` overrides."""

from edgetrain.config.adapt import AdaptConfig, BudgetConfig, PruneConfig
from edgetrain.config.base import Section
from edgetrain.config.loader import (
    config_to_dict,
    load_config,
    parse_override,
    read_yaml,
    validate_config,
    write_yaml_text,
)
from edgetrain.config.log import LogConfig
from edgetrain.config.schema import MonitorConfig, TrainConfig
from edgetrain.config.sparse import SparseUpdateConfig

__all__ = [
    "AdaptConfig",
    "BudgetConfig",
    "LogConfig",
    "MonitorConfig",
    "PruneConfig",
    "Section",
    "SparseUpdateConfig",
    "TrainConfig",
    "config_to_dict",
    "load_config",
    "parse_override",
    "read_yaml",
    "validate_config",
    "write_yaml_text",
]
