"""The results callback: Ray Tune calls it when trials start and end; it adds each ended
trial's row to the sweep's :class:`~search.results.record.Record` and publishes it, publishes
again at the end of a Tune step whatever else changed, and reports progress."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from search.driver.progress import Reporter
from search.driver.signals import raise_if_interrupted
from search.results.record import Record
from search.results.rows import make_row, outcome
from spaces import Spec


def _running(trials) -> int:
    return sum(1 for t in trials if t.status == "RUNNING")


class ResultsWriter(tune.Callback):
    """Makes each ended trial's row from its last report (the searcher's tell is not needed for
    it), adds it to ``record`` and publishes the record (the study's snapshot, ``results.parquet``)
    before reporting the trial. At the end of every Tune step the record publishes again if
    anything changed since (rows and tells the searcher made after this callback), so nothing
    depends on which of the two Ray calls first."""

    def __init__(self, spec: Spec, record: Record, budget: int, quiet: bool) -> None:
        self.spec, self.record = spec, record
        self.reporter = Reporter(dict(zip(spec.metric_names, spec.modes)), budget, plain=quiet)

    def _write(self, trials, trial, result: dict | None, error_text: str | None = None) -> None:
        status, err = outcome(self.spec, result)
        if status == "failed" and error_text:
            err = error_text
        row = make_row(self.spec, trial.trial_id, dict(trial.config), result, (status, err))
        self.record.add(row)
        self.record.flush()  # before the trial is reported: a row printed is a row kept
        self.reporter.trial_ended(row, self.record.values(), _running([t for t in trials if t is not trial]))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        # At a URI: the snapshot then holds the running trial, so a resume after the driver
        # died reruns its configuration (as from a local study.db).
        self.record.study_touched()

    def on_step_end(self, iteration, trials, **info) -> None:
        raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt something swallowed
        self.record.flush()
        if self.record.rows:
            self.reporter.tick(self.record.values(), _running(trials))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._write(trials, trial, trial.last_result or None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._write(trials, trial, None, _error_text(trial))


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
