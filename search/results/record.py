"""The rows of a running sweep, with one owner.

A :class:`Record` holds the results rows of the sweep a driver is running, keyed by trial id.
The searcher adds the rows it makes itself (skipped configurations, ladder rungs), the driver's
results callback adds each finished trial's row; either may come first. :meth:`Record.flush`
publishes whatever changed (the study's snapshot, then ``results.parquet``) through the place
it was given (:class:`search.driver.place.SweepPlace`): as a trial ends, at the end of each Tune
step and at the end of the session, so neither side depends on the order in which Ray calls them.
"""

from __future__ import annotations

import time
from typing import Any


class Record:
    """The rows of one sweep while its driver runs; ``place`` (None: rows kept in memory only)
    publishes them with ``place.publish(rows, names, strict)``."""

    def __init__(self, names: list[str], place: Any = None, rows: dict[str, dict[str, Any]] | None = None) -> None:
        self.names, self.place = names, place
        self.rows: dict[str, dict[str, Any]] = dict(rows or {})
        self.rows_changed = self.study_changed = False

    def add(self, row: dict[str, Any]) -> None:
        """A row (a finished trial, a skipped configuration or a ladder rung), published at the next
        flush (the results callback flushes as a trial ends and at each Tune step's end)."""
        self.rows[row["trial_id"]] = row
        self.rows_changed = True

    def study_touched(self) -> None:
        """The study changed without a new row (a trial started): its snapshot goes at the next flush."""
        self.study_changed = True

    def values(self) -> list[dict[str, Any]]:
        return list(self.rows.values())

    def flush(self, strict: bool = False) -> None:
        """Publish what changed since the last flush (with ``strict``, the end: everything, and
        a failed write raises). Rows get ``ended_at`` as they are first published."""
        if self.place is None or not (strict or self.rows_changed or self.study_changed):
            return
        if strict or self.rows_changed:
            now = time.time()
            for r in self.rows.values():
                r.setdefault("ended_at", now)
            self.place.publish(self.rows.values(), self.names, strict=strict)
        else:
            self.place.publish((), None)
        self.rows_changed = self.study_changed = False
