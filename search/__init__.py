"""Sweeps: Ray Tune + Optuna over a spec, and their results as one pandas DataFrame.

Names load on first use (PEP 562), so importing ``search.storage`` or ``search.lease`` (the
storage seam, the lease and the one process check, which ``cluster`` uses) pulls in neither Ray
nor torch.
"""

from importlib import import_module
from typing import Any

_HOME = {
    "slimtune.search.task.data": ["Data", "load_data"],
    "slimtune.search.driver.progress": ["Progress", "format_progress", "progress", "sweep_progress"],
    "slimtune.search.results.table": ["load_results"],
    "slimtune.search.results.pareto": ["hypervolume", "pareto_front"],
    "slimtune.search.driver.sweep": ["prepare", "resume_sweep", "run_sweep", "trial_seed"],
    "slimtune.search.task.train": ["Distill", "Fit", "Schedule", "evaluate", "train"],
    # See and use a sweep's results: plot, report, export, predict.
    "slimtune.search.present.export": ["export_trial", "load_model"],
    "slimtune.search.present.predict": ["load_exported", "predict_csv"],
    "slimtune.search.present.plot": ["plot_sweep"],
    "slimtune.search.present.report": ["write_report"],
}
_WHERE = {name: module for module, names in _HOME.items() for name in names}

__all__ = [name for names in _HOME.values() for name in names]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'slimtune.search' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
