"""The sweep driver: run, resume and extend a sweep with ``tune.Tuner`` + Optuna, as thin as the two allow.

The Optuna study (``study.db``) is the record of a sweep: each trial carries its full
configuration and, once it ends, its results row (user attributes). ``results.parquet`` is
that record as a table, rewritten atomically as trials end, and rebuilt from the study
on resume. So a driver killed at any point loses nothing that had finished.

A sweep lives in a local folder or at a URI (``s3://``, ``gs://``; :class:`SweepPlace`). The
driver alone writes ``results.parquet``, ``sweep.json`` and the study (:class:`Record`). Trials
store their artifacts from whichever node runs them (:func:`search.trial.store_artifact`); an
artifact whose trial never reached the study is referenced by no row, so it is never counted.

The parts, by job: :mod:`search.driver.checks` (bad input before Ray starts),
:mod:`search.driver.place` (lease, study, snapshots, artifact actor), :mod:`search.driver.drive`
(one session on Ray Tune), :mod:`search.driver.writer` (the results callback),
:mod:`search.results.record` (the rows, one owner).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from slimtune.search.driver.checks import check_fits, check_task, local_nodes, prepare
from slimtune.search.driver.drive import Session, directions, drive, make_sampler  # noqa: F401
from slimtune.search.driver.place import SweepLock, SweepPlace
from slimtune.search.results.record import Record
from slimtune.search.results.rows import DefineByRun, param_names, trial_seed  # noqa: F401
from slimtune.search.results.table import SWEEP, load_results, sweep_meta, write_results
from slimtune.search.storage import Storage
from slimtune.search.task import hooks
from slimtune.search.task.data import Data, hooks_folder, importable, load_data, sweep_split_seed
from slimtune.spaces import Spec, SpecError, load_spec, parse_spec


def run_sweep(spec: Spec | str | Path | Mapping[str, Any], out: str | Path, *, base_dir: str | Path | None = None,
              quiet: bool = False, address: str | None = None, warm_start: str | Path | None = None,
              model: Any = None, data: Any = None, train: Any = None) -> pd.DataFrame:
    """Run ``spec``'s sweep into ``out`` and return its results (see :func:`load_results`).

    ``spec``: a :class:`spaces.Spec`, a path to a YAML spec (its folder is ``base_dir``), or the
    spec as a dict. ``base_dir``: where the spec's files and ``module:function`` hooks are (default:
    the YAML file's folder, else the folder the model or dataset hook is imported from).
    ``model``, ``train``, ``data``: Python objects instead of the spec's ``task.model`` (a class or
    function ``build(config) -> nn.Module``), ``task.train`` (a training loop) and ``task.dataset``
    (arrays ``(x, y)`` or a function returning them), defined anywhere, also in a notebook: Ray
    ships them to the workers; their artifacts load with ``compress.load(path, builders={name:
    model})`` (the name is the row's recipe's ``hook``, ``module:qualname``).

    ``out``: a local folder, or a URI (``s3://bucket/prefix``, ``gs://…``; credentials from the
    standard chains, never in the URI). Bad input raises :class:`spaces.SpecError` before Ray
    starts and before anything is written. Uses the Ray already initialised in this process,
    else connects to ``address`` (or ``RAY_ADDRESS``), else starts a local Ray for the sweep and
    shuts it down afterwards. ``warm_start``: an earlier sweep (folder or URI) whose front
    configurations are tried first (and whose trials are observations, where task and space
    are the same).
    """
    spec, base_dir = _spec_of(_with_objects(spec, model=model, data=data, train=train), base_dir)
    if warm_start is not None:
        sweep_meta(warm_start)  # a bad path is bad input: fail before anything is written
    data, storage = prepare(spec, out, base_dir)
    if address is None and not os.environ.get("RAY_ADDRESS") and not _ray_running():
        check_fits(spec, local_nodes(), "this machine")  # the local Ray the sweep would start
    storage = storage.holding_env_keys()  # for the driver only (lease, record): never pickled with its keys
    spec = spec.for_kind(data.kind)  # default objectives follow the task kind found in the data
    storage.makedirs()
    with SweepLock(storage):
        place = SweepPlace(storage)
        try:
            meta = _new_meta(spec, data, base_dir)
            _write_meta(storage, meta)
            write_results(storage, [], param_names(spec))
            if warm_start is not None:
                meta["warm_start"] = _warm_start(spec, place, warm_start)
                _write_meta(storage, meta)
                place.snapshot()
            session = Session(spec, place, data, trials=spec.search.trials, budget=spec.search.trials,
                              quiet=quiet, address=address, code_dir=meta["base_dir"])
            drive(session, Record(param_names(spec), place))
        finally:
            place.close()
    return load_results(storage)


def _with_objects(spec: Any, **objects: Any) -> Any:
    """``spec`` with the Python objects given to run_sweep named in its task (registered in
    search.task.hooks, which ships them to the workers); ``spec`` itself when none is given."""
    objects = {k: v for k, v in objects.items() if v is not None}
    if not objects:
        return spec
    raw = dict(spec.source) if isinstance(spec, Spec) else dict(load_spec(spec).source) if isinstance(
        spec, (str, Path)) else dict(spec)
    task = dict(raw.get("task") or {})
    if "data" in objects:
        data = objects.pop("data")
        if isinstance(data, (tuple, list)) and len(data) == 2:
            data = hooks.Arrays(*data)
        task["dataset"] = hooks.register("data", data)
    for key, obj in objects.items():
        task[key] = hooks.register(key, obj)
    return {**raw, "task": task}


def _spec_of(spec: Any, base_dir: str | Path | None) -> tuple[Spec, str | Path | None]:
    """``run_sweep``'s ``spec`` as a Spec, and the folder its hooks come from."""
    if isinstance(spec, (str, Path)):
        base_dir = base_dir if base_dir is not None else Path(spec).resolve().parent
        spec = load_spec(spec)
    elif isinstance(spec, Mapping):
        spec = parse_spec(spec)
    elif not isinstance(spec, Spec):
        raise SpecError("spec", "must be a slimtune.Spec, a path to a YAML spec or a dict", type(spec).__name__)
    if base_dir is None:
        hooks = [h for h, is_hook in ((spec.task.model, spec.task.model_is_hook),
                                      (spec.task.dataset, spec.task.dataset_is_hook)) if is_hook]
        base_dir = hooks_folder(hooks)
    return spec, base_dir


def _ray_running() -> bool:
    """A Ray this process already started or joined; never imports Ray itself (Ray reads its log
    settings on import, which ``drive`` makes first)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _new_meta(spec: Spec, data: Data, base_dir: str | Path | None) -> dict[str, Any]:
    """``sweep.json`` of a new sweep."""
    return {
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


def _write_meta(storage: Storage, meta: dict[str, Any]) -> None:
    storage.write_atomic(SWEEP, json.dumps(meta, indent=2, default=str).encode())


def _warm_start(spec: Spec, place: SweepPlace, earlier_path: str | Path) -> dict[str, Any]:
    """Seed the new study from an earlier sweep; what ``sweep.json`` records of it."""
    import optuna

    from slimtune.search.searcher.observe import warm_start as seed_study

    study = optuna.create_study(storage=place.study_storage(), study_name=spec.name, directions=directions(spec))
    enqueued, observed = seed_study(study, spec, earlier_path)
    earlier = Storage.open(earlier_path, "warm_start")
    return {"from": str(Path(earlier_path).resolve()) if earlier.local_path else earlier.uri,
            "enqueued": enqueued, "observed": observed}


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

    from slimtune.search.searcher.promote import promotions_left

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
            check_task(spec, data)
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            place.restore()
            study = optuna.load_study(study_name=spec.name, storage=place.study_storage())
            _requeue_interrupted(study)
            record = Record(param_names(spec), place, study_rows(spec, study))
            place.publish(record.values(), record.names, strict=True)
            budget = int(meta["trials"]) + add_trials
            meta.update(trials=budget, sessions=int(meta.get("sessions", 1)) + 1)
            _write_meta(storage, meta)
            remaining = budget - trained(record.values())
            if remaining > 0 or promotions_left(spec, study):
                drive(Session(spec, place, data, trials=max(0, remaining), budget=budget, seed_offset=len(study.trials),
                              number=meta["sessions"] - 1, quiet=quiet, address=address,
                              code_dir=meta.get("base_dir")), record)
        finally:
            place.close()
    return load_results(storage)


def _requeue_interrupted(study) -> None:
    """Fail the trials a killed driver left running (their numbers in the study's user attribute
    ``interrupted``; a finished trial's cannot change) and queue their configurations again."""
    import optuna

    from slimtune.search.searcher.promote import promotion_attrs

    for t in study.trials:
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING) and \
                t.user_attrs.get("config") is not None:
            study.set_user_attr("interrupted", sorted({*study.user_attrs.get("interrupted", []), t.number}))
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number, **promotion_attrs(t.user_attrs)},
                                skip_if_exists=False)
