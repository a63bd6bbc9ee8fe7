"""slimtune: hyperparameter and architecture search on Ray that finds models both accurate and small.

Everything slimtune installs lives under this one import name: the layers are its subpackages
``slimtune.spaces`` (the spec as data), ``slimtune.compress`` (compression, torch only),
``slimtune.search`` (sweeps on Ray Tune + Optuna) and ``slimtune.cluster`` (Ray clusters), and
``slimtune.cli`` is the command line. What a user needs is importable from here::

    from slimtune import load_spec, run_sweep, load_results, pareto_front, load_model

Names load on first use (PEP 562): ``import slimtune.spaces`` pulls in neither torch nor Ray.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_HOME = {
    "slimtune.spaces": ["load_spec", "parse_spec", "Spec", "SpecError", "RunError"],
    "slimtune.search": [
        "run_sweep", "resume_sweep", "prepare", "load_results", "pareto_front", "hypervolume", "sweep_progress",
        "load_data", "train", "evaluate", "Fit", "load_model", "export_trial", "load_exported", "predict_csv",
        "plot_sweep", "write_report",
    ],
    "slimtune.compress": ["build_model", "save", "load", "read_manifest", "summary"],
}
_WHERE = {name: module for module, names in _HOME.items() for name in names}
_SUBPACKAGES = ("spaces", "compress", "search", "cluster", "cli")

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return import_module(f"slimtune.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module 'slimtune' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBPACKAGES))
