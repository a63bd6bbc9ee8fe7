"""The sweep driver: ``tune.Tuner`` + Optuna, as thin as the two allow."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from search._data import Data, load_data
from search._results import RESULTS, STUDY, SWEEP, load_results, write_atomic, write_results
from search._trial import TrialSetup, run_trial
from spaces import TASK_METRIC, Spec, SpecError

#: Parameters that always have a column, in this order, after the spec's own space.
COMPRESS_PARAMS = ["epochs", "prune_method", "sparsity", "finetune_epochs", "bits", "per_channel", "symmetric"]


def trial_seed(sweep_seed: int, number: int) -> int:
    """A trial's seed from the sweep seed and its Optuna trial number (stable across processes)."""
    return (sweep_seed * 1_000_003 + number * 7919 + 17) % (2**31 - 1)


def param_names(spec: Spec) -> list[str]:
    return [name for name, _ in spec.space] + COMPRESS_PARAMS


class DefineByRun:
    """Optuna's define-by-run function for ``spec`` (picklable, as Ray checkpoints the searcher)."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def __call__(self, trial: Any) -> dict[str, Any]:
        cfg = self.spec.sample(trial)
        return {**cfg, "trial_number": trial.number, "seed": trial_seed(self.spec.search.seed, trial.number)}


def make_sampler(spec: Spec):
    import optuna

    # Constraints reach the samplers through Trial.set_constraint (Optuna 5), set by SlimSearch.
    seed = spec.search.seed
    if spec.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True,
                                          n_startup_trials=min(10, max(2, spec.search.trials // 4)))
    if spec.search.sampler == "nsga2":
        pop = max(4, min(50, spec.search.trials // 4))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    if spec.search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed,
                                         n_startup_trials=min(10, max(2, spec.search.trials // 4)))
    return optuna.samplers.RandomSampler(seed=seed)


def _searcher(spec: Spec, storage):
    from ray.tune.search.optuna import OptunaSearch

    class SlimSearch(OptunaSearch):
        """OptunaSearch that also tells the study each trial's constraints and Ray id.

        Ray's OptunaSearch tells Optuna only the objective values; constraint values must
        be on the trial before ``tell`` for Optuna's constrained samplers.
        """

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None:
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                if result and not error:
                    values = [result.get(m) for m in spec.metric_names]
                    if any(v is None or not math.isfinite(float(v)) for v in values):
                        error, result = True, None  # NaN/inf objective: a failed trial, not a point
                    else:
                        for bound, v in zip(spec.constraints, spec.constraint_values(result)):
                            ot_trial.set_constraint(bound.metric, v)
            super().on_trial_complete(trial_id, result=result, error=error)

    return SlimSearch(space=DefineByRun(spec), metric=spec.metric_names, mode=spec.modes,
                      sampler=make_sampler(spec), study_name=spec.name, storage=storage)


def _ray_callback(spec: Spec, out: Path, quiet: bool):
    from ray import tune

    names = param_names(spec)
    metric = TASK_METRIC

    class ResultsWriter(tune.Callback):
        """Writes ``results.parquet`` (atomically) each time a trial ends."""

        def __init__(self) -> None:
            self.rows: dict[str, dict[str, Any]] = {}
            self.t0 = time.monotonic()

        def _row(self, trial, status: str, error: str | None) -> dict[str, Any]:
            cfg = dict(trial.config)
            row: dict[str, Any] = {"trial_id": trial.trial_id, "status": status, "error": error}
            row["trial_number"] = cfg.pop("trial_number", None)
            row["seed"] = cfg.pop("seed", None)
            row.update({k: cfg.get(k) for k in names})
            if status == "ok":
                res = trial.last_result or {}
                for key in ("accuracy", "r2", "loss", "test_accuracy", "test_r2", "test_loss", "size_bytes",
                            "dense_bytes", "compression_ratio", "params", "nonzero_params", "latency_ms",
                            "train_seconds", "node", "artifact"):
                    row[key] = res.get(key)
                row["feasible"] = all(b.violation(float(res[b.metric])) <= 0 for b in spec.constraints)
            return row

        def _write(self, row: dict[str, Any]) -> None:
            self.rows[row["trial_id"]] = row
            write_results(out, self.rows.values(), names)
            if not quiet:
                done = len(self.rows)
                if row["status"] == "ok":
                    objs = " ".join(f"{m}={_fmt(row.get(m))}" for m in spec.metric_names)
                    msg = f"{objs} ratio={_fmt(row.get('compression_ratio'))}"
                else:
                    msg = f"FAILED: {row['error']}"
                print(f"[{done}/{spec.search.trials} {time.monotonic() - self.t0:6.1f}s] "
                      f"trial {row['trial_number']}: {msg}", flush=True)

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            res = trial.last_result or {}
            vals = [res.get(m) for m in spec.metric_names]
            if res.get("phase") == "failed":
                self._write(self._row(trial, "failed", res.get("error")))
            elif res.get("phase") != "final" or any(v is None or not math.isfinite(float(v)) for v in vals):
                self._write(self._row(trial, "failed", f"objectives not finite or not reported: {dict(zip(spec.metric_names, vals))}"))
            else:
                self._write(self._row(trial, "ok", None))

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._write(self._row(trial, "failed", _error_text(trial)))

    del metric
    return ResultsWriter()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _error_text(trial) -> str:
    """The last line of the trial's traceback: the exception type and message."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            # Ray wraps the user exception; keep the innermost "Type: message" line.
            return ln[:2000]
    return (lines[-1] if lines else "trial failed without an error message")[:2000]


def _trainable(config: dict[str, Any], data: Data, setup: TrialSetup) -> None:
    """Run one trial; an exception from the trial itself is reported as a failed result.

    Errors raised by the trial (user code, diverged training, out of memory) are
    deterministic for its configuration, so they are recorded and never retried. Only
    failures Ray sees itself (the worker process or its node dies) reach Ray's
    ``FailureConfig(max_failures=search.retries)`` and are retried.
    """
    import traceback

    from ray import tune

    try:
        run_trial(config, data, setup)
    except Exception as exc:
        traceback.print_exc()  # the whole traceback goes to the trial's log
        tune.report({"phase": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]})


def prepare(spec: Spec, out: str | Path, base_dir: str | Path | None = None) -> tuple[Data, Path]:
    """Everything that can fail on bad input, before Ray starts: the folder, the data, the hooks."""
    out = Path(out).resolve()
    if (out / SWEEP).exists() or (out / RESULTS).exists() or (out / STUDY).exists():
        raise SpecError("out", "must not already hold a sweep", str(out), "choose another folder")
    if out.exists() and not out.is_dir():
        raise SpecError("out", "must be a folder", str(out))
    data = load_data(spec.task, spec.search.seed, Path(base_dir) if base_dir else None)
    want = TASK_METRIC[data.kind]
    for name in spec.metric_names + [b.metric for b in spec.constraints]:
        if name in ("accuracy", "r2") and name != want:
            raise SpecError(f"objectives.{name}", f"this is a {data.kind} task, which reports {want}", name,
                            f"use {want}")
    if spec.task.model_is_hook:
        import importlib

        module, _, fn = spec.task.model.partition(":")
        try:
            getattr(importlib.import_module(module), fn)
        except (ImportError, AttributeError) as exc:
            raise SpecError("task.model", "module:function must be importable", spec.task.model, str(exc)) from None
    return data, out


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(logging_level="ERROR", configure_logging=True)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # an existing cluster (also: the driver of a Ray job, which has RAY_ADDRESS set)
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, dashboard_host="127.0.0.1", **kwargs)
    return True


def run_sweep(spec: Spec, out: str | Path, *, base_dir: str | Path | None = None, quiet: bool = False,
              address: str | None = None) -> pd.DataFrame:
    """Run ``spec``'s sweep into folder ``out`` and return its results (see :func:`load_results`).

    Bad input raises :class:`spaces.SpecError` before Ray starts and before anything is
    written. Uses the Ray already initialised in this process, else connects to ``address``,
    else starts a local Ray for the sweep (and shuts it down afterwards).
    """
    import optuna
    from ray import tune

    data, out = prepare(spec, out, base_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "name": spec.name,
        "objectives": dict(zip(spec.metric_names, spec.modes)),
        "constraints": {b.metric: {"min": b.min, "max": b.max} for b in spec.constraints},
        "params": param_names(spec),
        "kind": data.kind,
        "spec": dict(spec.source),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_atomic(out / SWEEP, json.dumps(meta, indent=2, default=str).encode())
    write_results(out, [], param_names(spec))

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Per-epoch reports carry validation curves, not the objectives (only the final one
    # does); OptunaSearch reads the objectives from the last report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    started = _init_ray(address)
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{out / STUDY}")
        setup = TrialSetup(out_dir=str(out), model=spec.task.model, kind=data.kind,
                           threads=max(1, int(spec.resources.cpu)))
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, data=data, setup=setup),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=_searcher(spec, storage), num_samples=spec.search.trials,
                                        max_concurrent_trials=spec.search.concurrency),
            run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=0,
                                      callbacks=[_ray_callback(spec, out, quiet)],
                                      failure_config=tune.FailureConfig(max_failures=spec.search.retries)),
        )
        tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    return load_results(out)
