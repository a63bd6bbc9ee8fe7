"""The results callback: Ray Tune calls it when trials start and end; it adds each ended
trial's row to the sweep's :class:`~search.results.record.Record` and publishes it, publishes
again at the end of a Tune step whatever else changed, and reports progress. A failed trial's
whole traceback goes to ``errors/trial-<n>.txt`` in the sweep folder (its row's ``traceback``
column), before its one line is printed."""

from __future__ import annotations

from pathlib import Path

from ray import tune

from slimtune.search.driver.progress import Reporter
from slimtune.search.driver.signals import raise_if_interrupted
from slimtune.search.driver.terminal import one_line, plain_text
from slimtune.search.results.record import Record
from slimtune.search.results.rows import make_row, outcome, traceback_file
from slimtune.spaces import Spec


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
        self.storage = getattr(record.place, "storage", None)  # None: rows kept in memory only
        locate = self.storage.uri_of if self.storage is not None else None
        self.reporter = Reporter(dict(zip(spec.metric_names, spec.modes)), budget, plain=quiet, locate=locate)

    def _write(self, trials, trial, result: dict | None, failure: tuple[str, str] | None = None) -> None:
        """The row of ``trial`` from its last report; ``failure``: the ``(error, traceback)`` of a
        trial that Ray saw fail (its report, if any, does not say so)."""
        status, err = outcome(self.spec, result)
        if status == "failed" and failure:
            err = failure[0]
        row = make_row(self.spec, trial.trial_id, dict(trial.config), result, (status, err))
        text = (result or {}).get("traceback") or (failure[1] if failure else "")
        if status == "failed" and text and self._keep(traceback_file(row["trial_number"]), text):
            row["traceback"] = traceback_file(row["trial_number"])
        else:
            row.pop("traceback", None)
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
        self._write(trials, trial, None, _failure(trial))

    def _keep(self, rel: str, text: str) -> bool:
        """Write ``text`` to ``rel`` in the sweep folder; False when there is none or it fails
        (the row then names no file; the sweep goes on)."""
        if self.storage is None:
            return False
        try:
            self.storage.makedirs(rel.rpartition("/")[0])
            self.storage.write_atomic(rel, text.encode())
        except OSError:
            return False
        return True


def _failure(trial) -> tuple[str, str]:
    """``(error, traceback)`` of a trial that Ray saw fail, from the error file Tune wrote: the
    last line of the traceback (the exception type and message), and the whole of it."""
    path = getattr(trial, "error_file", None)
    text = ""
    if path and Path(path).is_file():
        text = plain_text(Path(path).read_text(errors="replace"))  # Ray colours its exception strings
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    error = next((ln for ln in reversed(lines) if ":" in ln and not ln.startswith(("File ", "^", "~"))), None)
    error = error or (lines[-1] if lines else "the trial's worker process or node died")
    return one_line(error)[:2000], text
