"""Progress of a sweep: counts, time, the front, best accuracy under size budgets.

One function computes it from results rows (live, from the driver's callback, or later
from ``results.parquet`` for ``slimtune status``); one formats it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pandas as pd

from slimtune.search.results.pareto import pareto_front
from slimtune.spaces import TASK_METRIC, task_metric


@dataclass(frozen=True)
class Progress:
    budget: int
    ok: int
    failed: int
    running: int
    elapsed_s: float
    eta_s: float | None
    front_size: int
    best_under: tuple[tuple[int, float], ...] = field(default=())  # (size budget in bytes, best metric)
    metric: str = "accuracy"
    stopped: int = 0  # stopped early by the scheduler (not counted in ``failed``)

    @property
    def finished(self) -> int:
        """Trained trials that ended (ok, failed or stopped early): what the budget counts.
        Ladder rungs and configurations skipped as infeasible are rows, not trainings."""
        return self.ok + self.failed + self.stopped


def size_budgets(sizes: Iterable[float], n: int = 4) -> list[int]:
    """A few round budgets (powers of 4 bytes) spanning the observed sizes."""
    sizes = [s for s in sizes if s and math.isfinite(s)]
    if not sizes:
        return []
    lo, hi = math.ceil(math.log(min(sizes), 4)), math.ceil(math.log(max(sizes), 4))
    return [4**k for k in range(max(lo, hi - n + 1), hi + 1)]


def progress(rows: Iterable[Mapping[str, Any]] | pd.DataFrame, objectives: Mapping[str, str], budget: int,
             running: int = 0, elapsed_s: float = 0.0) -> Progress:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    ok = df[df["status"] == "ok"] if len(df) else df
    # Budget counts trainings: ladder rungs (rows with a parent) and skipped configurations do not.
    own = df[df["parent"].isna()] if "parent" in df else df
    n_ok = int((own["status"] == "ok").sum()) if len(own) else 0
    n_failed = int((own["status"] == "failed").sum()) if len(own) else 0
    n_stopped = int((own["status"] == "stopped").sum()) if len(own) else 0
    metric = next((m for m in TASK_METRIC.values() if m in objectives), task_metric(None))
    front = pareto_front(df, objectives) if len(ok) else ok
    best = []
    if len(ok) and metric in ok and "size_bytes" in ok:
        for b in size_budgets(ok["size_bytes"]):
            under = ok[ok["size_bytes"] <= b][metric]
            if len(under):
                best.append((b, float(under.max())))
    p = Progress(budget, n_ok, n_failed, running, elapsed_s, None, len(front), tuple(best), metric, n_stopped)
    return at_pace(p, p.finished)


def at_pace(p: Progress, done: int) -> Progress:
    """``p`` with its ETA at the pace of ``done`` trainings in ``p.elapsed_s`` (a driver's own
    session: the trainings it ran, not those of earlier sessions)."""
    left = max(0, p.budget - p.finished)
    return dataclasses.replace(p, eta_s=p.elapsed_s / done * left if done else None)


def counts(p: Progress) -> str:
    """``3 ok, 1 stopped early, 1 failed`` (stopped early only when there are some)."""
    stopped = f", {p.stopped} stopped early" if p.stopped else ""
    return f"{p.ok} ok{stopped}, {p.failed} failed"


def _size(b: int) -> str:
    return f"{b / 1024:g} KiB" if b >= 1024 else f"{b} B"


def format_progress(p: Progress) -> list[str]:
    eta = "?" if p.eta_s is None else f"{p.eta_s:.0f}s"
    lines = [f"trained trials {p.finished}/{p.budget} finished ({counts(p)}), {p.running} running; "
             f"elapsed {p.elapsed_s:.0f}s, remaining ~{eta}; front {p.front_size}"]
    if p.best_under:
        lines.append("best " + p.metric + ": " + ", ".join(f"{v:.4f} under {_size(b)}" for b, v in p.best_under))
    return lines


class Reporter:
    """Prints progress while a sweep runs.

    On a terminal the status block is redrawn in place; elsewhere (CI, pipes) and with
    ``plain`` (``--quiet``) one line per finished trial. No colour is ever printed (so
    ``NO_COLOR`` holds); a terminal only gets cursor movement. A failed trial is one line that
    names where its traceback is: ``locate`` turns the row's ``traceback`` (a path in the sweep
    folder) into the path or URI printed.
    """

    def __init__(self, objectives: Mapping[str, str], budget: int, plain: bool = False, stream=None,
                 locate: Callable[[str], str] | None = None) -> None:
        self.objectives = dict(objectives)
        self.budget = budget
        self.locate = locate
        self._stream = stream  # None: sys.stdout at print time (Ray pickles callbacks; streams don't pickle)
        self.tty = (not plain and bool(getattr(self.stream, "isatty", lambda: False)())
                    and os.environ.get("TERM") != "dumb")
        self.t0 = time.monotonic()
        self.drawn = 0
        self.last_draw = 0.0
        self.session_done = 0

    @property
    def stream(self):
        return self._stream if self._stream is not None else sys.stdout

    def _block(self, rows, running: int) -> list[str]:
        p = at_pace(progress(rows, self.objectives, self.budget, running, time.monotonic() - self.t0),
                    self.session_done)
        return format_progress(p)

    def trial_ended(self, row: Mapping[str, Any], rows, running: int) -> None:
        self.session_done += 1
        objs = " ".join(f"{m}={_fmt(row.get(m))}" for m in self.objectives)
        line = trial_line(row, objs, self.locate)
        if self.tty:
            self._clear()
            print(line, file=self.stream)
            self._draw(self._block(rows, running))
        else:
            p = at_pace(progress(rows, self.objectives, self.budget, running, time.monotonic() - self.t0),
                    self.session_done)
            eta = "?" if p.eta_s is None else f"{p.eta_s:.0f}s"
            print(f"[{p.finished}/{p.budget} trained, {p.elapsed_s:.0f}s, eta {eta}, front {p.front_size}] {line}",
                  file=self.stream, flush=True)

    def tick(self, rows, running: int) -> None:
        """Redraw the block on a terminal, at most once a second."""
        if not self.tty or time.monotonic() - self.last_draw < 1.0:
            return
        self._clear()
        self._draw(self._block(rows, running))

    def _clear(self) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{self.drawn}F\x1b[J")
            self.drawn = 0

    def _draw(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn = len(lines)
        self.last_draw = time.monotonic()


def trial_line(row: Mapping[str, Any], objectives: str, locate: Callable[[str], str] | None = None) -> str:
    """``trial 3 ok: accuracy=0.9 size_bytes=5000``, ``trial 4 failed: ValueError: ... (traceback:
    run/errors/trial-4.txt)`` or ``trial 5 stopped early at epoch 2 (...)``: the status once, then
    what it means, on one line."""
    n, status, error = row["trial_number"], row["status"], " ".join(str(row.get("error")).split())
    if status == "ok":
        return f"trial {n} ok: {objectives}"
    if status == "stopped" and error.startswith("stopped"):
        return f"trial {n} {error}"
    tb = row.get("traceback")
    where = f" (traceback: {locate(tb) if locate else tb})" if isinstance(tb, str) and tb else ""
    return f"trial {n} {status}: {error}{where}"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def sweep_progress(path, running: int = 0) -> Progress:
    """The progress of the sweep in folder ``path`` from what it has written (for
    ``slimtune status`` of a submitted sweep): elapsed time runs from the sweep's creation
    to its last recorded trial."""
    import datetime

    from slimtune.search.results.table import load_results, sweep_meta

    meta = sweep_meta(path)
    df = load_results(path)
    elapsed = 0.0
    try:
        created = datetime.datetime.strptime(meta["created"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
        if "ended_at" in df and df["ended_at"].notna().any():
            elapsed = max(0.0, float(df["ended_at"].max()) - created)
    except (KeyError, ValueError):
        pass
    return progress(df, meta["objectives"], int(meta.get("trials", 0)), running, elapsed)
