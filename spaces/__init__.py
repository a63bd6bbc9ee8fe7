"""Search-space data: the sweep spec as typed, frozen, validated values, and the declarations
it derives from (each compression method's spec keys, every metric).

Imports neither torch nor ray (a test keeps it so).
"""

from slimtune.spaces._distributions import (
    Choice,
    Fixed,
    IntRange,
    LogUniform,
    Param,
    Uniform,
    parse_param,
    suggest,
    to_json,
)
from slimtune.spaces._errors import RunError, SpecError
from slimtune.spaces._methods import DISTILL, METHODS, PRUNE, QUANTIZE, Key, MethodKeys, Section, When
from slimtune.spaces._metrics import (
    METRIC_TABLE,
    METRICS,
    TASK_METRIC,
    Declared,
    Metric,
    computed_metrics,
    declare,
    result_columns,
    shown_columns,
    task_metric,
    whole_columns,
    worst_value,
)
from slimtune.spaces._parse import load_spec, parse_spec, require_search
from slimtune.spaces._spec import BUILTIN_DATASETS, Bound, Objective, Promote, Resources, Search, Spec, Task

__all__ = [
    "BUILTIN_DATASETS", "DISTILL", "METHODS", "METRICS", "METRIC_TABLE", "TASK_METRIC", "Bound", "Choice", "Declared",
    "Fixed", "IntRange", "Key", "LogUniform", "MethodKeys", "Metric", "Objective", "PRUNE", "Param", "Promote",
    "QUANTIZE", "Resources",
    "RunError", "Search", "Section", "Spec", "SpecError", "Task", "Uniform", "When", "computed_metrics",
    "declare", "load_spec", "parse_param", "parse_spec", "require_search", "result_columns", "shown_columns",
    "suggest", "task_metric", "to_json", "whole_columns", "worst_value",
]
