"""Comparison workflows: grids of training runs summarised into one table."""

from edgetrain.compare.sparse import (
    CompareResult,
    StepCostCallback,
    TestEveryEpochCallback,
    parse_budgets,
    parse_schemes,
    result_metrics,
    sparse_compare,
    summarize_runs,
)

__all__ = [
    "CompareResult",
    "StepCostCallback",
    "TestEveryEpochCallback",
    "parse_budgets",
    "parse_schemes",
    "result_metrics",
    "sparse_compare",
    "summarize_runs",
]
