"""A trial's configuration and its results row: what the searcher asks for and records.

Plain functions of the spec (no Ray, no Optuna import), shared by the searcher and the driver.
"""

from __future__ import annotations

import json
import math
from typing import Any

from slimtune.spaces import Spec, result_columns


def result_keys() -> list[str]:
    """Columns a finished trial's row takes from its final report: every declared metric
    (``spaces.METRIC_TABLE``), then where it ran, its artifact, each layer's stored width and
    (distilling sweeps) its stored dense model."""
    return [*result_columns(), "node", "device", "artifact", "layer_bits", "dense_artifact"]


#: Trial seeds: ``(sweep_seed * SWEEP_SEED_FACTOR + number * TRIAL_NUMBER_FACTOR + SEED_SHIFT) mod
#: SEED_MODULUS``. Two primes, so neighbouring sweep seeds and trial numbers land far apart; the
#: shift keeps trial 0 of sweep seed 0 off seed 0; the modulus (the prime 2**31 - 1) keeps every
#: seed a valid non-negative int32 for torch, numpy and random. Changing any of them changes every
#: trial's seed (and so the rows of a rerun sweep).
SWEEP_SEED_FACTOR, TRIAL_NUMBER_FACTOR, SEED_SHIFT, SEED_MODULUS = 1_000_003, 7919, 17, 2**31 - 1

#: The folder of the sweep that keeps each failed trial's whole traceback, one file per trial.
ERRORS = "errors"


def traceback_file(number: Any) -> str:
    """Where in the sweep folder the traceback of the failed trial ``number`` is kept."""
    return f"{ERRORS}/trial-{number}.txt"


def trial_seed(sweep_seed: int, number: int) -> int:
    """A trial's seed from the sweep seed and its Optuna trial number (stable across processes)."""
    return (sweep_seed * SWEEP_SEED_FACTOR + number * TRIAL_NUMBER_FACTOR + SEED_SHIFT) % SEED_MODULUS


def param_names(spec: Spec) -> list[str]:
    return [name for name, _ in spec.space] + spec.compress_columns


class DefineByRun:
    """Optuna's define-by-run function for ``spec``: a configuration from an Optuna trial."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def __call__(self, trial: Any) -> dict[str, Any]:
        cfg = self.spec.sample(trial)
        return {**cfg, "trial_number": trial.number, "seed": trial_seed(self.spec.search.seed, trial.number)}


def make_row(spec: Spec, trial_id: str, config: dict[str, Any], result: dict[str, Any] | None,
             ended: tuple[str, str | None]) -> dict[str, Any]:
    """One results row (see :func:`search.load_results` for the schema); ``ended`` is the trial's
    ``(status, error)``, as :func:`outcome` gives it."""
    status, error = ended
    cfg = dict(config)
    cfg.pop("ladder_configs", None)  # the rungs proposed: each has its own row
    row: dict[str, Any] = {"trial_id": trial_id, "trial_number": cfg.pop("trial_number", None),
                           "status": status, "error": error, "seed": cfg.pop("seed", None)}
    row.update({k: cfg.get(k) for k in param_names(spec)})
    row.update({k: v for k, v in cfg.items() if k not in row})
    if status == "failed" and (result or {}).get("traceback"):
        row["traceback"] = traceback_file(row["trial_number"])  # written by the driver (ResultsWriter)
    if status == "ok":
        assert result is not None
        row.update({k: result.get(k) for k in result_keys()})
        row["feasible"] = all(b.violation(float(result[b.metric])) <= 0 for b in spec.constraints)
    return row


def outcome(spec: Spec, result: dict[str, Any] | None) -> tuple[str, str | None]:
    """``(status, error)`` of a trial from its last report: ok, failed or stopped (early)."""
    if not result:
        return "failed", "the trial's worker process or node died (retries exhausted)"
    if result.get("phase") == "failed":
        return "failed", str(result.get("error"))
    if result.get("phase") == "train":
        metric = next((k for k in result if k.startswith("val_") and k != "val_loss"), "val_loss")
        return "stopped", (f"stopped early at epoch {result.get('epoch')} ({metric}={result.get(metric):.4g}): "
                           "smaller trials were better")
    vals = {m: result.get(m) for m in spec.metric_names}
    if result.get("phase") != "final" or any(v is None or not math.isfinite(float(v)) for v in vals.values()):
        return "failed", f"objectives not finite or not reported: {vals}"
    return "ok", None


def jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(row, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
