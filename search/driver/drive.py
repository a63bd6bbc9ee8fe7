"""One session of a sweep on Ray Tune: the sampler, the trainable, Ray itself, and the
``tune.Tuner`` whose searcher (:class:`~search.searcher.study_searcher.SlimSearcher`) and results
callback (:class:`~search.driver.writer.ResultsWriter`) share the sweep's
:class:`~search.results.record.Record`."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from slimtune.search.driver.checks import check_fits, cluster_nodes
from slimtune.search.driver.place import SweepPlace, artifact_sink, aws_keys_hidden
from slimtune.search.driver.signals import INTERRUPTED, catch_sigint, raise_if_interrupted, restore_sigint
from slimtune.search.driver.terminal import debug, one_line, quiet_ray, quiet_worker
from slimtune.search.results.record import Record
from slimtune.search.task import hooks
from slimtune.search.task.data import Data, importable
from slimtune.search.trial import TrialSetup, run_trial
from slimtune.spaces import Spec

#: The end of a failed trial's traceback that its report carries (the whole of any usual one).
TRACEBACK_CHARS = 100_000


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


def directions(spec: Spec) -> list[str]:
    """The study's directions, one per objective."""
    return ["maximize" if m == "max" else "minimize" for m in spec.modes]


def _trainable(config: dict[str, Any], data: Data, setup: TrialSetup, debug: bool = False) -> None:
    """Run one trial; an exception from the trial itself is reported as a failed result.

    Errors raised by the trial (user code, diverged training, out of memory) are
    deterministic for its configuration, so they are recorded and never retried. Only
    failures Ray sees itself (the worker process or its node dies) reach Ray's
    ``FailureConfig(max_failures=search.retries)`` and are retried.

    The report carries the error on one line and the whole traceback, which the driver keeps
    in the sweep folder (``errors/trial-<n>.txt``); with ``debug`` (``SLIMTUNE_DEBUG``) the
    worker also prints it, and Ray forwards it to the driver's stderr.
    """
    import traceback

    from ray import tune

    if not debug:
        quiet_worker()
    try:
        importable(setup.code_dir)
        run_trial(config, data, setup)
    except Exception as exc:
        text = traceback.format_exc()
        if debug:
            print(text, file=sys.stderr, end="", flush=True)
        tune.report({"phase": "failed", "error": one_line(f"{type(exc).__name__}: {exc}")[:2000],
                     "traceback": text[-TRACEBACK_CHARS:]})


def init_ray(address: str | None) -> bool:
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


@dataclass(frozen=True)
class Session:
    """One driver session of a sweep: ``trials`` more configurations of ``spec`` into ``place``,
    out of a ``budget`` of trainings; ``seed_offset`` (trials already in the study) seeds the
    sampler, ``number`` names Ray Tune's run (``tune-<number>``)."""

    spec: Spec
    place: SweepPlace
    data: Data
    trials: int
    budget: int
    seed_offset: int = 0
    number: int = 0
    quiet: bool = False
    address: str | None = None
    code_dir: str | None = None


def drive(session: Session, record: Record) -> None:
    """Run ``session`` into ``record`` (the rows it starts with are the sweep's so far), then
    publish the whole record."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Per-epoch reports carry validation curves, not the objectives (only the final one
    # does); the searcher reads the objectives from the last report.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # slimtune prints its own progress, one line per trial: what Ray and Tune print besides
    # (before Ray is imported, where this process had not: it reads RAY_DEDUP_LOGS then).
    quiet_ray()
    # Ctrl-C stops the driver at once (KeyboardInterrupt), as if it were killed: Tune's own
    # handler would end the run "gracefully" and tell our callbacks that running trials
    # completed. The study keeps them RUNNING, so `slimtune resume` reruns them.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    INTERRUPTED.clear()
    previous, started, sink = catch_sigint(), False, None
    try:
        started = init_ray(session.address)
        check_fits(session.spec, cluster_nodes(), "the Ray cluster")
        sink = artifact_sink(session.place.storage)
        tuner = _tuner(session, record, sink)
        with aws_keys_hidden():  # a local Ray's workers got them as it started: they inherit its environment
            tuner.fit()
        # Rows the searcher added after the last step's flush (ladder rungs of a batch told at
        # its end): the table holds every row once the sweep is over.
        record.flush(strict=True)
        raise_if_interrupted()  # swallowed on the last step: still an interrupted sweep
    finally:
        restore_sigint(previous)
        _release(sink, started)


def _tuner(session: Session, record: Record, sink):
    """The ``tune.Tuner`` of ``session``: its trainable, searcher, scheduler and results callback."""
    import optuna
    from ray import tune

    from slimtune.search.driver.writer import ResultsWriter
    from slimtune.search.searcher.early_stop import ray_scheduler
    from slimtune.search.searcher.study_searcher import SlimSearcher

    spec, place = session.spec, session.place
    setup = TrialSetup(out_dir=place.storage.uri, model=spec.task.model, kind=session.data.kind,
                       hooks=dict(hooks.PYTHON_HOOKS),
                       threads=max(1, int(spec.resources.cpu)), spec=spec, ladder=spec.search.ladder,
                       code_dir=session.code_dir, sink=sink)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, data=session.data, setup=setup, debug=debug()),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    study = optuna.create_study(storage=place.study_storage(), study_name=spec.name, load_if_exists=True,
                                sampler=make_sampler(spec, session.seed_offset), directions=directions(spec))
    searcher = SlimSearcher(spec, study, session.data, session.trials, record)
    scheduler = ray_scheduler(searcher.rule) if searcher.rule is not None else None
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=_samples(session),
                                    max_concurrent_trials=spec.search.concurrency, reuse_actors=True),
        run_config=tune.RunConfig(name=f"tune-{session.number}", **place.ray_storage(), verbose=0,
                                  callbacks=[ResultsWriter(spec, record, session.budget, session.quiet)],
                                  failure_config=tune.FailureConfig(max_failures=spec.search.retries)),
    )


def _release(sink, started: bool) -> None:
    """Stop the artifact actor, and the Ray this driver started."""
    if sink is None and not started:
        return
    import ray

    if sink is not None:
        ray.kill(sink)
    if started:
        ray.shutdown()


def _samples(session: Session) -> int:
    """Ray trials to allow: ``trials`` new configurations, and with ``search.promote`` room for
    every promotion (at most one per configuration and rung; the searcher says when it is done)."""
    promote = session.spec.search.promote
    return session.trials if promote is None else session.trials + session.budget * (len(promote.rungs) - 1)
