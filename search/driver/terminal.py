"""What a sweep's driver lets Ray print, through Ray's documented switches only.

slimtune prints its own progress: one line per ended trial, a failed one with its error and the
file that keeps its whole traceback (``errors/trial-<n>.txt`` in the sweep folder). What Ray
prints besides is set here, by environment variables read before Ray is imported or Tune runs:

* ``RAY_COLOR_PREFIX=0``: the ``(_trainable pid=...)`` prefix of forwarded worker output is not
  coloured (Ray colours it even when stderr is a file).
* ``RAY_DEDUP_LOGS=0`` when stdout or stderr is not a terminal (or ``NO_COLOR`` is set): Ray's
  log deduplication appends ``[repeated 2x across cluster]`` in ANSI green whatever the stream;
  off, every line is printed once as it came, which is what a log file wants.
* ``TUNE_PRINT_ALL_TRIAL_ERRORS=0`` unless debugging: Tune does not log each failed trial's
  multi-page traceback (it still writes it to the trial's error file, which we copy).
* ``RAY_AIR_NEW_OUTPUT=0``: with ``verbose=0`` Tune's legacy reporter prints no status tables.

In a trial's worker (:func:`quiet_worker`), Python's "Exception ignored in ..." report of the
``SystemExit`` that Ray's SIGTERM handler raises while the worker is stopped at the sweep's end
is dropped: the worker is being ended on purpose, and the traceback would reach the terminal.

``SLIMTUNE_DEBUG=1`` shows everything: Tune's trial errors, and each trial's traceback as the
worker prints it. A variable the user set is never overridden.
"""

from __future__ import annotations

import os
import re
import sys

#: An ANSI escape sequence (CSI: colours, cursor movement), as Ray's exception strings hold them.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


def debug() -> bool:
    """``SLIMTUNE_DEBUG`` is set (and not ``0``): show tracebacks and all of Ray's output."""
    return os.environ.get("SLIMTUNE_DEBUG", "") not in ("", "0")


def plain_streams() -> bool:
    """stdout or stderr is not a terminal, or ``NO_COLOR`` asks for no colour."""
    ttys = all(bool(getattr(s, "isatty", lambda: False)()) for s in (sys.stdout, sys.stderr))
    return not ttys or bool(os.environ.get("NO_COLOR"))


def quiet_ray() -> None:
    """Set Ray's output switches (module docstring); call before ``import ray`` for the dedup one."""
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if plain_streams():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not debug():
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def quiet_worker() -> None:
    """In a trial's worker process: no "Exception ignored" traceback for a ``SystemExit`` (Ray
    stopping the worker); every other unraisable exception is reported as Python does."""
    if getattr(sys.unraisablehook, "slimtune", False):
        return

    def hook(unraisable) -> None:
        if not issubclass(unraisable.exc_type, SystemExit):
            sys.__unraisablehook__(unraisable)

    hook.slimtune = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def plain_text(text: str) -> str:
    """``text`` without ANSI escape sequences."""
    return ANSI.sub("", text)


def one_line(text: str) -> str:
    """``text`` on one line, without escape sequences: runs of whitespace become one space."""
    return " ".join(plain_text(text).split())
