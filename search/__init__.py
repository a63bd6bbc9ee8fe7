"""Sweeps: Ray Tune + Optuna over a spec, and their results as one pandas DataFrame."""

from search._data import Data, load_data
from search._progress import Progress, format_progress, progress, sweep_progress
from search._results import load_results, pareto_front
from search._sweep import prepare, resume_sweep, run_sweep, trial_seed
from search._train import evaluate, train

__all__ = ["Data", "Progress", "evaluate", "format_progress", "progress", "sweep_progress", "load_data", "load_results", "pareto_front", "prepare", "resume_sweep", "run_sweep", "train",
           "trial_seed"]

# See and use a sweep's results: plot, report, export, predict.
from search._export import export_trial, load_exported, predict_csv  # noqa: E402
from search._plot import hypervolume, plot_sweep  # noqa: E402
from search._report import write_report  # noqa: E402

__all__ += ["export_trial", "hypervolume", "load_exported", "plot_sweep", "predict_csv", "write_report"]
