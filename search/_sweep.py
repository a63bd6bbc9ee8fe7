"""The sweep driver: ``tune.Tuner`` + Optuna, as thin as the two allow.

The Optuna study (``study.db``) is the record of a sweep: each trial carries its full
configuration and, once it ends, its results row (user attributes). ``results.parquet`` is
that record as a table, rewritten atomically as each trial ends, and rebuilt from the study
on resume. So a driver killed at any point loses nothing that had finished.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from search._data import Data, load_data
from search._results import RESULTS, STUDY, SWEEP, load_results, sweep_meta, write_atomic, write_results
from search._trial import TrialSetup, run_trial
from search.lease import Lease
from search.storage import Storage, local_folder
from spaces import TASK_METRIC, Spec, SpecError, parse_spec

#: Parameters that always have a column, in this order, after the spec's own space.
COMPRESS_PARAMS = ["epochs", "prune_method", "sparsity", "threshold", "scope", "finetune_epochs", "gradual", "bits",
                   "per_channel", "symmetric", "quant_mode", "qat_epochs"]

#: Columns a finished trial's row takes from its final report.
RESULT_KEYS = ("accuracy", "r2", "loss", "test_accuracy", "test_r2", "test_loss", "size_bytes", "dense_bytes",
               "compression_ratio", "params", "nonzero_params", "latency_ms", "train_seconds", "node", "artifact")
LOCK = ".lock"


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


def make_sampler(spec: Spec, seed_offset: int = 0):
    """The spec's sampler. ``seed_offset`` (trials already in the study) keeps a resumed or
    extended sweep from replaying the first sweep's random start-up points."""
    import optuna

    # Constraints reach the samplers through Trial.set_constraint (Optuna 5), set by SlimSearch.
    seed = spec.search.seed + seed_offset
    startup = min(10, max(2, spec.search.trials // 4))
    if spec.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.search.trials // 4)))
    if spec.search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)


def make_row(spec: Spec, trial_id: str, config: dict[str, Any], result: dict[str, Any] | None,
             status: str, error: str | None) -> dict[str, Any]:
    """One results row (see :func:`search.load_results` for the schema)."""
    cfg = dict(config)
    row: dict[str, Any] = {"trial_id": trial_id, "trial_number": cfg.pop("trial_number", None),
                           "status": status, "error": error, "seed": cfg.pop("seed", None)}
    row.update({k: cfg.get(k) for k in param_names(spec)})
    row.update({k: v for k, v in cfg.items() if k not in row})
    if status == "ok":
        assert result is not None
        row.update({k: result.get(k) for k in RESULT_KEYS})
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


def _worst(spec: Spec, predicted: dict[str, float]) -> list[float]:
    """Objective values told for a configuration skipped as infeasible: predicted where
    known, else the worst plausible value."""
    worst = {"accuracy": 0.0, "r2": -1.0, "compression_ratio": 0.0}
    out = []
    for name, mode in zip(spec.metric_names, spec.modes):
        if name in predicted:
            out.append(float(predicted[name]))
        else:
            out.append(worst.get(name, 0.0) if mode == "max" else 1e12)
    return out


def _searcher(spec: Spec, storage, seed_offset: int, data: Data, rows: dict[str, dict[str, Any]]):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search._predict import needs_prediction, predict, surely_infeasible

    use_prediction = needs_prediction(spec) or spec.search.early_stop is not None

    class SlimSearch(OptunaSearch):
        """OptunaSearch that keeps the study a complete record of the sweep.

        * Each configuration's size is predicted before training (an untrained model,
          compressed and written); one that surely breaks a size constraint is told to
          Optuna as infeasible and never trained, and the next one is asked for.
        * Before Optuna is told a trial's outcome, the trial gets its constraint values (for
          Optuna's constrained samplers), its Ray id and its results row; NaN/inf objectives
          and errors raised by the trial are told as FAIL, early-stopped trials as PRUNED.
        """

        def suggest(self, trial_id: str):
            for _ in range(200):
                cfg = super().suggest(trial_id)
                if cfg is None:
                    return None
                ot_trial = self._ot_trials[trial_id]
                if use_prediction:
                    predicted = predict(spec, data, cfg)
                    cfg["predicted_size_bytes"] = int(predicted["size_bytes"])
                    if spec.search.reject_infeasible and surely_infeasible(spec, predicted):
                        self._skip(trial_id, ot_trial, cfg, predicted)
                        continue
                ot_trial.set_user_attr("config", cfg)
                ot_trial.set_user_attr("ray_trial_id", trial_id)
                return cfg
            raise SpecError("constraints", "must leave some configurations feasible",
                            "200 configurations in a row predicted infeasible", "relax the constraints or the space")

        def _skip(self, trial_id: str, ot_trial, cfg: dict[str, Any], predicted: dict[str, float]) -> None:
            broken = ", ".join(f"{b.metric}={predicted[b.metric]:.6g} (min={b.min}, max={b.max})"
                               for b in spec.constraints if b.metric in predicted)
            row = make_row(spec, f"skip-{ot_trial.number}", cfg, None, "infeasible",
                           f"predicted before training: {broken}")
            ot_trial.set_user_attr("config", cfg)
            ot_trial.set_user_attr("row", _jsonable(row))
            ot_trial.set_user_attr("infeasible", True)
            for bound, v in zip(spec.constraints, spec.constraint_values({**predicted})):
                ot_trial.set_constraint(bound.metric, v)
            self._ot_study.tell(ot_trial, _worst(spec, predicted))
            del self._ot_trials[trial_id]
            rows[row["trial_id"]] = row

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and trial_id not in self._completed_trials:
                config = ot_trial.user_attrs.get("config") or (result or {}).get("config") or {}
                status, err = outcome(spec, None if error else result)
                ot_trial.set_user_attr("row", _jsonable(make_row(spec, trial_id, config, result, status, err)))
                if status == "stopped":
                    self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
                    self._completed_trials.add(trial_id)
                    return
                if status == "failed":
                    error, result = True, None
                else:
                    for bound, v in zip(spec.constraints, spec.constraint_values(result)):
                        ot_trial.set_constraint(bound.metric, v)
            super().on_trial_complete(trial_id, result=result, error=error)
            if result and result.get("ladder") and ot_trial is not None:
                self._observe_ladder(trial_id, ot_trial.number, result["ladder"])

        def _observe_ladder(self, parent_id: str, parent: int, rungs: list[dict[str, Any]]) -> None:
            """Each rung (a compression setting of the parent's trained model) becomes a
            completed trial of the study and a row linked to its parent."""
            from search._observe import observation

            for k, rung in enumerate(rungs):
                cfg = dict(rung["config"])
                status, err = outcome(spec, {**rung, "phase": "final"})
                if status != "ok":
                    continue
                values = [float(rung[m]) for m in spec.metric_names]
                # Trial numbers are sequential and only this driver writes the study.
                number = len(self._ot_study.get_trials(deepcopy=False))
                cfg["trial_number"] = number
                row = {**make_row(spec, f"{parent_id}-r{k}", cfg, rung, "ok", None), "parent": parent}
                t = observation(spec, cfg, values, {"config": cfg, "parent": parent, "row": _jsonable(row)},
                                {b.metric: v for b, v in zip(spec.constraints, spec.constraint_values(rung))})
                if t is None:
                    continue
                self._ot_study.add_trial(t)
                rows[row["trial_id"]] = row

    return SlimSearch(space=DefineByRun(spec), metric=spec.metric_names, mode=spec.modes,
                      sampler=make_sampler(spec, seed_offset), study_name=spec.name, storage=storage)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(row, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _ray_callback(spec: Spec, out: Path, rows: dict[str, dict[str, Any]], budget: int, quiet: bool):
    from ray import tune

    from search._progress import Reporter

    names = param_names(spec)
    reporter = Reporter(dict(zip(spec.metric_names, spec.modes)), budget, plain=quiet)

    def running(trials) -> int:
        return sum(1 for t in trials if t.status == "RUNNING")

    class ResultsWriter(tune.Callback):
        """Writes ``results.parquet`` (atomically) each time a trial ends, and reports progress."""

        def _write(self, trials, trial, result: dict | None, error_text: str | None = None) -> None:
            status, err = outcome(spec, result)
            if status == "failed" and error_text:
                err = error_text
            row = make_row(spec, trial.trial_id, dict(trial.config), result, status, err)
            rows[row["trial_id"]] = row
            now = time.time()
            for r in rows.values():  # this trial and the ladder rungs the searcher just added
                r.setdefault("ended_at", now)
            write_results(out, rows.values(), names)
            reporter.trial_ended(row, list(rows.values()), running([t for t in trials if t is not trial]))

        def on_step(self, iteration, trials, **info) -> None:
            if rows:
                reporter.tick(list(rows.values()), running(trials))

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self._write(trials, trial, trial.last_result or None)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            self._write(trials, trial, None, _error_text(trial))

    return ResultsWriter()


def _error_text(trial) -> str:
    """The last line of the trial's traceback: the exception type and message."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:2000]
    return (lines[-1] if lines else "the trial's worker process or node died")[:2000]


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


# ---------------------------------------------------------------------------------------
# The sweep folder: lock, metadata, and checks that run before Ray starts.


class SweepLock(Lease):
    """The lease on a sweep folder (a path or a URI), held while a driver runs in it.

    A lock left by a driver that no longer runs (same host, pid gone) is taken over; see
    :class:`search.lease.Lease` for object stores' heartbeat.
    """

    def __init__(self, out: Path | str) -> None:
        super().__init__(Storage.open(out), LOCK)


def _check_task(spec: Spec, data: Data) -> None:
    want = TASK_METRIC[data.kind]
    for name in spec.metric_names + [b.metric for b in spec.constraints]:
        if name in ("accuracy", "r2") and name != want:
            raise SpecError(f"objectives.{name}", f"this is a {data.kind} task, which reports {want}", name,
                            f"use {want}")
    # Build the model of the spec's first configuration once, so a model hook that does not
    # import, or returns something that is not an nn.Module, is a bad spec (exit 2), not N failed trials.
    import compress
    from search._trial import model_recipe

    cfg = {**spec.sample(_FirstValues()), "seed": 0, "trial_number": 0}
    setup = TrialSetup(out_dir="", model=spec.task.model, kind=data.kind)
    try:
        compress.build_model(model_recipe(setup, data, cfg))
    except Exception as exc:  # user code: any exception is the user's error to see
        raise SpecError("task.model", "must build a torch.nn.Module from the trial's config", spec.task.model,
                        f"{type(exc).__name__}: {exc}") from None


class _FirstValues:
    """A stand-in Optuna trial that draws the first value of every distribution."""

    number = 0

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return low

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return low

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return choices[0]


def prepare(spec: Spec, out: str | Path, base_dir: str | Path | None = None) -> tuple[Data, Path]:
    """Everything that can fail on bad input, before Ray starts: the folder, the data, the hooks."""
    out = local_folder(out).resolve()
    if out.exists() and not out.is_dir():
        raise SpecError("out", "must be a folder", str(out))
    if (out / SWEEP).exists() or (out / RESULTS).exists() or (out / STUDY).exists():
        raise SpecError("out", "must not already hold a sweep", str(out),
                        f"choose another folder, or: slimtune resume {out} / slimtune extend {out} --trials N")
    data = load_data(spec.task, spec.search.seed, Path(base_dir) if base_dir else None)
    _check_task(spec, data)
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


def _storage(out: Path):
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{out / STUDY}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def _drive(spec: Spec, out: Path, data: Data, trials: int, budget: int, rows: dict[str, dict[str, Any]],
           seed_offset: int, session: int, quiet: bool, address: str | None) -> None:
    """Run ``trials`` more trials of ``spec`` into the sweep folder ``out``."""
    import optuna
    from ray import tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Per-epoch reports carry validation curves, not the objectives (only the final one
    # does); OptunaSearch reads the objectives from the last report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # slimtune prints its own progress; Ray Tune's (verbose=0) legacy reporter prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    started = _init_ray(address)
    try:
        setup = TrialSetup(out_dir=str(out), model=spec.task.model, kind=data.kind,
                           threads=max(1, int(spec.resources.cpu)), spec=spec, ladder=spec.search.ladder)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, data=data, setup=setup),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        )
        scheduler = None
        if spec.search.early_stop is not None:
            from search._early_stop import ParetoHalving, ray_scheduler

            metric = TASK_METRIC[data.kind]
            es = spec.search.early_stop
            scheduler = ray_scheduler(ParetoHalving(metric, "max", es.grace_epochs, es.eta, es.min_peers))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=_searcher(spec, _storage(out), seed_offset, data, rows),
                                        scheduler=scheduler, num_samples=trials,
                                        max_concurrent_trials=spec.search.concurrency,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=f"tune-{session}", storage_path=str(out / "ray"), verbose=0,
                                      callbacks=[_ray_callback(spec, out, rows, budget, quiet)],
                                      failure_config=tune.FailureConfig(max_failures=spec.search.retries)),
        )
        tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()


def run_sweep(spec: Spec, out: str | Path, *, base_dir: str | Path | None = None, quiet: bool = False,
              address: str | None = None, warm_start: str | Path | None = None) -> pd.DataFrame:
    """Run ``spec``'s sweep into folder ``out`` and return its results (see :func:`load_results`).

    Bad input raises :class:`spaces.SpecError` before Ray starts and before anything is
    written. Uses the Ray already initialised in this process, else connects to ``address``
    (or ``RAY_ADDRESS``), else starts a local Ray for the sweep and shuts it down afterwards.
    ``warm_start``: an earlier sweep folder whose front configurations are tried first (and
    whose trials are observations, where task and space are the same).
    """
    if warm_start is not None:
        sweep_meta(warm_start)  # a bad path is bad input: fail before anything is written
    data, out = prepare(spec, out, base_dir)
    out.mkdir(parents=True, exist_ok=True)
    with SweepLock(out):
        meta = {
            "name": spec.name,
            "objectives": dict(zip(spec.metric_names, spec.modes)),
            "constraints": {b.metric: {"min": b.min, "max": b.max} for b in spec.constraints},
            "params": param_names(spec),
            "kind": data.kind,
            "preprocess": data.preprocess,
            "trials": spec.search.trials,
            "sessions": 1,
            "base_dir": str(Path(base_dir).resolve()) if base_dir else None,
            "spec": dict(spec.source),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_atomic(out / SWEEP, json.dumps(meta, indent=2, default=str).encode())
        write_results(out, [], param_names(spec))
        if warm_start is not None:
            import optuna

            from search._observe import warm_start as seed_study

            study = optuna.create_study(storage=_storage(out), study_name=spec.name,
                                        directions=["maximize" if m == "max" else "minimize" for m in spec.modes])
            enqueued, observed = seed_study(study, spec, warm_start)
            meta["warm_start"] = {"from": str(Path(warm_start).resolve()), "enqueued": enqueued, "observed": observed}
            write_atomic(out / SWEEP, json.dumps(meta, indent=2, default=str).encode())
        _drive(spec, out, data, spec.search.trials, spec.search.trials, {}, 0, 0, quiet, address)
    return load_results(out)


def trained(rows) -> int:
    """How many rows used a training of the budget (not ladder rungs, not skipped configurations)."""
    return sum(1 for r in rows if r.get("status") in ("ok", "failed", "stopped") and r.get("parent") is None)


def study_rows(spec: Spec, study) -> dict[str, dict[str, Any]]:
    """The results rows recorded in the study, one per trial that ended (ok or failed)."""
    rows = {}
    for t in study.trials:
        row = t.user_attrs.get("row")
        if row is not None and t.state.is_finished():
            rows[row["trial_id"]] = row
    return rows


def resume_sweep(path: str | Path, *, add_trials: int = 0, quiet: bool = False,
                 address: str | None = None) -> pd.DataFrame:
    """Continue the sweep in ``path`` up to its budget (plus ``add_trials`` more).

    Every trial that had ended is kept exactly once (the study is the record and the
    results table is rebuilt from it); trials that were running when the driver died are
    marked failed (``interrupted``) in the study and their configurations are queued to run
    again; the sampler sees every earlier trial. Used by ``slimtune resume`` and
    ``slimtune extend``.
    """
    import optuna

    out = local_folder(path, "path").resolve()
    meta = sweep_meta(out)
    if add_trials < 0:
        raise SpecError("trials", "must be an integer >= 1", add_trials)
    spec = parse_spec(meta["spec"])
    with SweepLock(out):
        data = load_data(spec.task, spec.search.seed, Path(meta["base_dir"]) if meta.get("base_dir") else None)
        _check_task(spec, data)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=spec.name, storage=_storage(out))
        for t in study.trials:
            if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING) and \
                    t.user_attrs.get("config") is not None:
                study._storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number}, skip_if_exists=False)
        rows = study_rows(spec, study)
        write_results(out, rows.values(), param_names(spec))
        budget = int(meta["trials"]) + add_trials
        meta.update(trials=budget, sessions=int(meta.get("sessions", 1)) + 1)
        write_atomic(out / SWEEP, json.dumps(meta, indent=2, default=str).encode())
        remaining = budget - trained(rows.values())
        if remaining > 0:
            _drive(spec, out, data, remaining, budget, rows, len(study.trials), meta["sessions"] - 1, quiet, address)
    return load_results(out)
