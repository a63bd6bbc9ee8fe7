"""Ray clusters for sweeps: start one (local nodes or Ray's cluster launcher), submit sweeps as
Ray jobs, and find their results from the client.

Ray is the engine; this package only starts ``ray start``/``ray up`` and talks to the Jobs API.
Token authentication stays on (see :mod:`cluster._auth`). State lives in ``$SLIMTUNE_HOME``
(default ``~/.slimtune``).
"""

from __future__ import annotations

from typing import Any

from slimtune.cluster import _local, _state
from slimtune.cluster._jobs import list_sweeps, logs, progress, resolve_results_path, status, stop, submit

__all__ = ["down", "list_sweeps", "logs", "progress", "recorded", "resolve_results_path", "status", "stop",
           "submit", "up"]


def up(config: str | None = None, **local: Any) -> dict[str, Any]:
    """Start a cluster and record it: local ``ray start`` nodes, or ``ray up -y config``.

    ``local`` holds the options of :class:`cluster._local.LocalCluster` (``workers``, ``num_cpus``,
    ``port``, ``dashboard_port``, ``dashboard_host``, ``storage``, ...); with ``config``, only
    ``storage`` applies. ``storage`` (a folder, ``s3://`` or ``gs://`` URI) is recorded with the
    cluster and is where ``submit`` puts sweeps unless told otherwise.
    """
    if config:
        return _local.launcher_up(config, storage=local.get("storage"))
    return _local.start_local(_local.LocalCluster(**local))


def down() -> dict[str, Any] | None:
    """Stop the recorded cluster (terminate its node processes, or ``ray down -y config``); forget it."""
    record = _state.read_head()
    if record is None:
        return None
    if record.get("kind") == "launcher":
        rc = _local.launcher_down(record)
        if rc != 0:
            from slimtune.spaces import RunError

            raise RunError(f"ray down {record['config']}", f"exited with {rc}", "see its output above")
        record["stopped"] = 1
    else:
        record["stopped"] = _local.stop_local(record)
    _state.clear_head()
    return record


def recorded() -> dict[str, Any] | None:
    """The cluster ``up`` recorded, if any."""
    return _state.read_head()
