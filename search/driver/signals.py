"""Ctrl-C during a sweep: the driver stops at once, as if it were killed (the study keeps the
running trials RUNNING, so ``slimtune resume`` reruns them)."""

from __future__ import annotations

import signal
import threading

#: Set by Ctrl-C during a sweep. The KeyboardInterrupt is raised at once; the results
#: callback raises it again at the next step in case a library swallowed the first one.
INTERRUPTED = threading.Event()


def raise_if_interrupted() -> None:
    """Module-level (pickled by reference with the callback that calls it; an Event cannot be)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def catch_sigint():
    """Install the Ctrl-C handler (main thread only); the handler it replaced, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigint(signum, frame) -> None:
        INTERRUPTED.set()
        raise KeyboardInterrupt

    return signal.signal(signal.SIGINT, on_sigint)


def restore_sigint(previous) -> None:
    """Put back the handler :func:`catch_sigint` replaced (None: it replaced none)."""
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
