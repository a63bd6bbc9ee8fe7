"""The sweep driver: ``tune.Tuner`` + Optuna, as thin as the two allow.

The Optuna study (``study.db``) is the record of a sweep: each trial carries its full
configuration and, once it ends, its results row (user attributes). ``results.parquet`` is
that record as a table, rewritten atomically as each trial ends, and rebuilt from the study
on resume. So a driver killed at any point loses nothing that had finished.

A sweep lives in a local folder or at a URI (``s3://``, ``gs://``; :class:`SweepPlace`). The
driver alone writes ``results.parquet``, ``sweep.json`` and the study. In a local folder the
study is ``study.db`` there (optuna-dashboard can watch it live). At a URI the SQLite study
lives on the driver's disk and a consistent snapshot of it (SQLite's backup API, then one
atomic upload) goes to the storage after every finished trial; resume restores it. Trials
store their artifacts from whichever node runs them (:func:`search.trial.store_artifact`); an
artifact whose trial never reached the study is referenced by no row, so it is never counted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from search.task.data import Data, importable, load_data, sweep_split_seed
from search.results.table import RESULTS, STUDY, SWEEP, load_results, sweep_meta, write_results
from search.results.rows import (COMPRESS_PARAMS, DefineByRun, make_row, outcome,  # noqa: F401
                          param_names, trial_seed)
from search.trial import TrialSetup, run_trial
from search.lease import Lease
from search.storage import AWS_KEY_VARS, Storage
from spaces import TASK_METRIC, Spec, SpecError, parse_spec, require_search

LOCK = ".lock"


def make_sampler(spec: Spec, seed_offset: int = 0):
    """The spec's sampler. ``seed_offset`` (trials already in the study) keeps a resumed or
    extended sweep from replaying the first sweep's random start-up points."""
    import optuna

    # Constraints reach the samplers through Trial.set_constraint (Optuna 5), set by SlimSearcher.
    seed = spec.search.seed + seed_offset
    startup = min(10, max(2, spec.search.trials // 4))
    if spec.search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    if spec.search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(50, spec.search.trials // 4)))
    if spec.search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=seed)


def _ray_callback(spec: Spec, place: SweepPlace, rows: dict[str, dict[str, Any]], budget: int, quiet: bool):
    from ray import tune

    from search.driver.progress import Reporter

    names = param_names(spec)
    reporter = Reporter(dict(zip(spec.metric_names, spec.modes)), budget, plain=quiet)

    def running(trials) -> int:
        return sum(1 for t in trials if t.status == "RUNNING")

    class ResultsWriter(tune.Callback):
        """Writes ``results.parquet`` (atomically) and, at a URI, the study's snapshot each time a
        trial ends (the searcher has told the study by then), and reports progress."""

        def _write(self, trials, trial, result: dict | None, error_text: str | None = None) -> None:
            status, err = outcome(spec, result)
            if status == "failed" and error_text:
                err = error_text
            row = make_row(spec, trial.trial_id, dict(trial.config), result, status, err)
            rows[row["trial_id"]] = row
            now = time.time()
            for r in rows.values():  # this trial and the ladder rungs the searcher just added
                r.setdefault("ended_at", now)
            place.publish(rows.values(), names)
            reporter.trial_ended(row, list(rows.values()), running([t for t in trials if t is not trial]))

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            # At a URI: the snapshot then holds the running trial, so a resume after the driver
            # died reruns its configuration (as from a local study.db).
            if place.remote:
                place.publish((), None)

        def on_step(self, iteration, trials, **info) -> None:
            raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt something swallowed
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
        importable(setup.code_dir)
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

    def __init__(self, out: Path | str | Storage) -> None:
        super().__init__(Storage.open(out), LOCK)


class SweepPlace:
    """Where a sweep's record is while its driver runs: the ``storage`` (folder or URI) and
    ``work``, the driver-local folder that holds the SQLite study (the folder itself when local).

    At a URI the study is downloaded into a fresh temporary folder (:meth:`restore`) and
    uploaded as a consistent snapshot after every change that matters (:meth:`snapshot`).
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        local = storage.local_path
        self.remote = local is None
        self.work = local if local is not None else Path(tempfile.mkdtemp(prefix="slimtune-driver-"))
        self.warned = False

    @property
    def study_url(self) -> str:
        return f"sqlite:///{self.work / STUDY}"

    def study_storage(self):
        import optuna

        return optuna.storages.RDBStorage(self.study_url, engine_kwargs={"connect_args": {"timeout": 60}})

    def restore(self) -> None:
        """The study's last snapshot from the storage onto the driver's disk (a URI only)."""
        if self.remote and self.storage.is_file(STUDY):
            (self.work / STUDY).write_bytes(self.storage.read_bytes(STUDY))

    def snapshot(self) -> None:
        """Upload a consistent copy of the study (SQLite's backup API, then one atomic PUT)."""
        if not self.remote or not (self.work / STUDY).is_file():
            return
        copy = self.work / f".{STUDY}.snapshot"
        copy.unlink(missing_ok=True)
        with closing(sqlite3.connect(self.work / STUDY, timeout=60)) as src, closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        self.storage.write_atomic(STUDY, copy.read_bytes())
        copy.unlink()

    def publish(self, rows, names: list[str] | None, strict: bool = False) -> None:
        """The study's snapshot (the record goes first), then the results table (unless ``names``
        is None). A failed upload during the sweep is said once and retried at the next trial's
        end; with ``strict`` (the end) it raises."""
        try:
            self.snapshot()
            if names is not None:
                write_results(self.storage, rows, names)
        except OSError as exc:
            if strict:
                raise
            if not self.warned:
                print(f"slimtune: could not write to {self.storage.uri} ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:200]}); retrying as the next trial ends", file=sys.stderr)
                self.warned = True

    def ray_storage(self) -> dict[str, Any]:
        """Ray Tune's own experiment folder, on the driver's disk: ``ray/`` in a local sweep folder,
        the driver's temporary folder for a URI. Nothing checkpoints into it from a trial and no
        resume reads it (the study is the record), so no node but the driver's needs to reach it."""
        return {"storage_path": str(self.work / "ray")}

    def close(self) -> None:
        if self.remote:
            shutil.rmtree(self.work, ignore_errors=True)


@contextmanager
def _aws_keys_hidden():
    """While Tune runs: the AWS key variables out of this process's environment, so Ray Tune does
    not copy them into every trial actor's ``runtime_env`` (shown by the dashboard). Trials get
    credentials from their node's own environment or profile; the driver's storage holds its keys
    (:meth:`Storage.holding_env_keys`)."""
    saved = {k: os.environ.pop(k) for k in AWS_KEY_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _artifact_sink(storage: Storage):
    """For a local folder: a Ray actor on the driver's node that writes the artifacts trials
    send it (a trial on another machine cannot see the driver's disk). None for a URI, which
    every trial writes itself."""
    if storage.local_path is None:
        return None
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0)(ArtifactSink).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False)).remote(storage.uri)


class ArtifactSink:
    """Writes artifact bytes into the sweep folder on the driver's machine (run as a Ray actor)."""

    def __init__(self, folder: str) -> None:
        self.storage = Storage.open(folder)

    def put(self, rel: str, blob: bytes) -> int:
        self.storage.makedirs(rel.rpartition("/")[0])
        self.storage.write_atomic(rel, blob)
        return self.storage.size(rel)


def _check_task(spec: Spec, data: Data) -> None:
    want = TASK_METRIC[data.kind]
    for name in spec.metric_names + [b.metric for b in spec.constraints]:
        if name in TASK_METRIC.values() and name != want:
            raise SpecError(f"objectives.{name}", f"this is a {data.kind} task, which reports {want}", name,
                            f"use {want}")
    # Build the model of the spec's first configuration once, so a model hook that does not
    # import, or returns something that is not an nn.Module, is a bad spec (exit 2), not N failed trials.
    import compress
    from search.trial import model_recipe

    cfg = {**spec.sample(_FirstValues()), "seed": 0, "trial_number": 0}
    setup = TrialSetup(out_dir="", model=spec.task.model, kind=data.kind)
    try:
        model = compress.build_model(model_recipe(setup, data, cfg))
    except Exception as exc:  # user code: any exception is the user's error to see
        raise SpecError("task.model", "must build a torch.nn.Module from the trial's config", spec.task.model,
                        f"{type(exc).__name__}: {exc}") from None
    _check_forward(spec, data, model)


def _check_forward(spec: Spec, data: Data, model) -> None:
    """One forward pass on two training rows: a model that builds but does not fit the data
    (input shape, output size) is a bad spec, not N failed trials."""
    import torch

    x = torch.from_numpy(data.x_train[:2])
    try:
        with torch.no_grad():
            y = model.eval()(x)
    except Exception as exc:
        raise SpecError("task.model", f"must run on a batch of shape {list(x.shape)} (input_shape "
                        f"{data.input_shape})", spec.task.model, f"{type(exc).__name__}: {exc}") from None
    want = [2, data.n_outputs]
    if not isinstance(y, torch.Tensor) or (list(y.shape) != want and not (data.n_outputs == 1 and list(y.shape) == [2])):
        got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise SpecError("task.model", f"must return outputs of shape {want} for a batch of 2 "
                        f"(output_dim {data.n_outputs})", spec.task.model, f"it returned {got}")


class _FirstValues:
    """A stand-in Optuna trial that draws the first value of every distribution."""

    number = 0

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        return low

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        return low

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return choices[0]


def prepare(spec: Spec, out: str | Path | Storage, base_dir: str | Path | None = None) -> tuple[Data, Storage]:
    """Everything that can fail on bad input, before Ray starts: the folder or URI (reachable,
    bucket there, credentials accepted), the data, the hooks."""
    st = Storage.open(out).check()
    where = st.uri
    if st.local_path is not None and st.local_path.exists() and not st.local_path.is_dir():
        raise SpecError("out", "must be a folder", where)
    if any(st.exists(name) for name in (SWEEP, RESULTS, STUDY)):
        raise SpecError("out", "must not already hold a sweep", where,
                        f"choose another folder, or: slimtune resume {where} / slimtune extend {where} --trials N")
    require_search(spec)
    importable(base_dir)
    data = load_data(spec.task, spec.task.split_seed, Path(base_dir) if base_dir else None)
    _check_task(spec.for_kind(data.kind), data)
    return data, st


#: Set by Ctrl-C during a sweep. The KeyboardInterrupt is raised at once; the results
#: callback raises it again at the next step in case a library swallowed the first one.
INTERRUPTED = threading.Event()


def raise_if_interrupted() -> None:
    """Module-level (pickled by reference with the callback that calls it; an Event cannot be)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def _catch_sigint():
    """Install the Ctrl-C handler (main thread only); the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigint(signum, frame) -> None:
        INTERRUPTED.set()
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, on_sigint)


def _init_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    # Worker output reaches the driver's stderr with a "(_trainable pid=...)" prefix that Ray
    # colours with ANSI codes even when stderr is a file; RAY_COLOR_PREFIX=0 (Ray's documented
    # switch, read by the driver as it prints) keeps the prefix and drops the colour.
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    kwargs: dict[str, Any] = dict(logging_level="ERROR", configure_logging=True)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # an existing cluster (also: the driver of a Ray job, which has RAY_ADDRESS set)
        ray.init(address=address, **kwargs)
    else:
        ray.init(include_dashboard=False, dashboard_host="127.0.0.1", **kwargs)
    return True


def _drive(spec: Spec, place: SweepPlace, data: Data, trials: int, budget: int, rows: dict[str, dict[str, Any]],
           seed_offset: int, session: int, quiet: bool, address: str | None, code_dir: str | None = None) -> None:
    """Run ``trials`` more trials of ``spec`` into the sweep's ``place``."""
    import optuna
    from ray import tune

    from search.searcher.study_searcher import SlimSearcher

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Per-epoch reports carry validation curves, not the objectives (only the final one
    # does); the searcher reads the objectives from the last report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # slimtune prints its own progress; Ray Tune's (verbose=0) legacy reporter prints nothing.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C stops the driver at once (KeyboardInterrupt), as if it were killed: Tune's own
    # handler would end the run "gracefully" and tell our callbacks that running trials
    # completed. The study keeps them RUNNING, so `slimtune resume` reruns them.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    INTERRUPTED.clear()
    previous, started, sink = _catch_sigint(), False, None
    try:
        started = _init_ray(address)
        sink = _artifact_sink(place.storage)
        setup = TrialSetup(out_dir=place.storage.uri, model=spec.task.model, kind=data.kind,
                           threads=max(1, int(spec.resources.cpu)), spec=spec, ladder=spec.search.ladder,
                           code_dir=code_dir, sink=sink)
        trainable = tune.with_resources(
            tune.with_parameters(_trainable, data=data, setup=setup),
            {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
        )
        rule = scheduler = None
        if spec.search.early_stop is not None:
            from search.searcher.early_stop import ParetoHalving, ray_scheduler

            es = spec.search.early_stop
            rule = ParetoHalving(TASK_METRIC[data.kind], "max", es.grace_epochs, es.eta, es.min_peers,
                                 deferred=spec.search.reproducible)
            scheduler = ray_scheduler(rule)
        study = optuna.create_study(storage=place.study_storage(), study_name=spec.name, load_if_exists=True,
                                    sampler=make_sampler(spec, seed_offset),
                                    directions=["maximize" if m == "max" else "minimize" for m in spec.modes])
        searcher = SlimSearcher(spec, study, data, trials, rows, rule)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=_samples(spec, trials, budget),
                                        max_concurrent_trials=spec.search.concurrency,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=f"tune-{session}", **place.ray_storage(), verbose=0,
                                      callbacks=[_ray_callback(spec, place, rows, budget, quiet)],
                                      failure_config=tune.FailureConfig(max_failures=spec.search.retries)),
        )
        with _aws_keys_hidden():  # a local Ray's workers got them as it started: they inherit its environment
            tuner.fit()
        # Rows the searcher added after the last trial's row was written (ladder rungs of a
        # batch told at its end): the table holds every row once the sweep is over.
        now = time.time()
        for r in rows.values():
            r.setdefault("ended_at", now)
        place.publish(rows.values(), param_names(spec), strict=True)
        raise_if_interrupted()  # swallowed on the last step: still an interrupted sweep
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if sink is not None:
            import ray

            ray.kill(sink)
        if started:
            import ray

            ray.shutdown()


def _samples(spec: Spec, trials: int, budget: int) -> int:
    """Ray trials to allow: ``trials`` new configurations, and with ``search.promote`` room for
    every promotion (at most one per configuration and rung; the searcher says when it is done)."""
    promote = spec.search.promote
    return trials if promote is None else trials + budget * (len(promote.rungs) - 1)


def run_sweep(spec: Spec, out: str | Path, *, base_dir: str | Path | None = None, quiet: bool = False,
              address: str | None = None, warm_start: str | Path | None = None) -> pd.DataFrame:
    """Run ``spec``'s sweep into ``out`` and return its results (see :func:`load_results`).

    ``out``: a local folder, or a URI (``s3://bucket/prefix``, ``gs://…``; credentials from the
    standard chains, never in the URI). Bad input raises :class:`spaces.SpecError` before Ray
    starts and before anything is written. Uses the Ray already initialised in this process,
    else connects to ``address`` (or ``RAY_ADDRESS``), else starts a local Ray for the sweep and
    shuts it down afterwards. ``warm_start``: an earlier sweep (folder or URI) whose front
    configurations are tried first (and whose trials are observations, where task and space
    are the same).
    """
    if warm_start is not None:
        sweep_meta(warm_start)  # a bad path is bad input: fail before anything is written
    data, storage = prepare(spec, out, base_dir)
    storage = storage.holding_env_keys()  # for the driver only (lease, record): never pickled with its keys
    spec = spec.for_kind(data.kind)  # default objectives follow the task kind found in the data
    storage.makedirs()
    with SweepLock(storage):
        place = SweepPlace(storage)
        try:
            meta = {
                "name": spec.name,
                "objectives": dict(zip(spec.metric_names, spec.modes)),
                "constraints": {b.metric: {"min": b.min, "max": b.max} for b in spec.constraints},
                "params": param_names(spec),
                "kind": data.kind,
                "preprocess": data.preprocess,
                "split_seed": spec.task.split_seed,
                "trials": spec.search.trials,
                "sessions": 1,
                "base_dir": str(Path(base_dir).resolve()) if base_dir else None,
                "spec": dict(spec.source),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            storage.write_atomic(SWEEP, json.dumps(meta, indent=2, default=str).encode())
            write_results(storage, [], param_names(spec))
            if warm_start is not None:
                import optuna

                from search.searcher.observe import warm_start as seed_study

                study = optuna.create_study(storage=place.study_storage(), study_name=spec.name,
                                            directions=["maximize" if m == "max" else "minimize" for m in spec.modes])
                enqueued, observed = seed_study(study, spec, warm_start)
                earlier = Storage.open(warm_start, "warm_start")
                meta["warm_start"] = {"from": str(Path(warm_start).resolve()) if earlier.local_path else earlier.uri,
                                      "enqueued": enqueued, "observed": observed}
                storage.write_atomic(SWEEP, json.dumps(meta, indent=2, default=str).encode())
                place.snapshot()
            _drive(spec, place, data, spec.search.trials, spec.search.trials, {}, 0, 0, quiet, address,
                   meta["base_dir"])
        finally:
            place.close()
    return load_results(storage)


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
    """Continue the sweep at ``path`` (a folder or a URI) up to its budget (plus ``add_trials`` more).

    Every trial that had ended is kept exactly once (the study is the record and the
    results table is rebuilt from it; at a URI, from the study's last snapshot); trials that
    were running when the driver died are failed in the study (their numbers in its user
    attribute ``interrupted``) and their configurations are queued to run again; the sampler
    sees every earlier trial. Used by ``slimtune resume`` and ``slimtune extend``.
    """
    import optuna

    from search.searcher.promote import promotion_attrs, promotions_left

    storage = Storage.open(path, "path")
    meta = sweep_meta(storage)  # checks a URI's bucket and credentials first
    storage = storage.holding_env_keys()  # for the driver only (lease, record): never pickled with its keys
    if add_trials < 0:
        raise SpecError("trials", "must be an integer >= 1", add_trials)
    spec = parse_spec(meta["spec"])
    with SweepLock(storage):
        place = SweepPlace(storage)
        try:
            importable(meta.get("base_dir"))
            # The split the sweep was made with (older sweeps: their search seed), recorded from now on.
            meta["split_seed"] = sweep_split_seed(meta)
            data = load_data(spec.task, meta["split_seed"], Path(meta["base_dir"]) if meta.get("base_dir") else None)
            spec = spec.for_kind(data.kind)
            _check_task(spec, data)
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            place.restore()
            study = optuna.load_study(study_name=spec.name, storage=place.study_storage())
            for t in study.trials:
                if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING) and \
                        t.user_attrs.get("config") is not None:
                    # marked in the study's user attributes (a finished trial's cannot change)
                    study.set_user_attr("interrupted", sorted({*study.user_attrs.get("interrupted", []), t.number}))
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
                    study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number, **promotion_attrs(t.user_attrs)},
                                        skip_if_exists=False)
            rows = study_rows(spec, study)
            place.publish(rows.values(), param_names(spec), strict=True)
            budget = int(meta["trials"]) + add_trials
            meta.update(trials=budget, sessions=int(meta.get("sessions", 1)) + 1)
            storage.write_atomic(SWEEP, json.dumps(meta, indent=2, default=str).encode())
            remaining = budget - trained(rows.values())
            if remaining > 0 or promotions_left(spec, study):
                _drive(spec, place, data, max(0, remaining), budget, rows, len(study.trials), meta["sessions"] - 1, quiet,
                       address, meta.get("base_dir"))
        finally:
            place.close()
    return load_results(storage)
