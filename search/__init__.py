"""Sweeps: Ray Tune + Optuna over a spec, and their results as one pandas DataFrame."""

from search._data import Data, load_data
from search._results import load_results, pareto_front
from search._sweep import prepare, run_sweep, trial_seed
from search._train import evaluate, train

__all__ = ["Data", "evaluate", "load_data", "load_results", "pareto_front", "prepare", "run_sweep", "train",
           "trial_seed"]
