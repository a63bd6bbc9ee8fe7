"""Search-space data: the sweep spec as typed, frozen, validated values.

Imports neither torch nor ray (a test keeps it so).
"""

from spaces._distributions import Choice, Fixed, IntRange, LogUniform, Param, Uniform, parse_param, suggest, to_json
from spaces._errors import RunError, SpecError
from spaces._spec import (
    BUILTIN_DATASETS,
    METRICS,
    TASK_METRIC,
    Bound,
    Objective,
    Promote,
    Prune,
    Quantize,
    Resources,
    Search,
    Spec,
    Task,
    load_spec,
    parse_spec,
    require_search,
)

__all__ = [
    "BUILTIN_DATASETS", "METRICS", "TASK_METRIC", "Bound", "Choice", "Fixed", "IntRange", "LogUniform",
    "Objective", "Param", "Promote", "Prune", "Quantize", "Resources", "RunError", "Search", "Spec", "SpecError", "Task",
    "Uniform", "load_spec", "parse_param", "parse_spec", "require_search", "suggest", "to_json",
]
