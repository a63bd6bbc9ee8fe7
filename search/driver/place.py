"""Where a sweep's record lives while its driver runs: the lease on the folder or URI, the
driver-local SQLite study and its snapshots, and the actor that writes a local folder's artifacts.

A sweep lives in a local folder or at a URI (``s3://``, ``gs://``). In a local folder the study
is ``study.db`` there (optuna-dashboard can watch it live). At a URI the SQLite study lives on
the driver's disk and a consistent snapshot of it (SQLite's backup API, then one atomic upload)
goes to the storage after every finished trial; resume restores it.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from slimtune.search.lease import Lease
from slimtune.search.results.table import STUDY, write_results
from slimtune.search.storage import AWS_KEY_VARS, Storage

LOCK = ".lock"


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
def aws_keys_hidden():
    """While Tune runs: the AWS key variables out of this process's environment, so Ray Tune does
    not copy them into every trial actor's ``runtime_env`` (shown by the dashboard). Trials get
    credentials from their node's own environment or profile; the driver's storage holds its keys
    (:meth:`Storage.holding_env_keys`)."""
    saved = {k: os.environ.pop(k) for k in AWS_KEY_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def artifact_sink(storage: Storage):
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
    """Writes artifact bytes into the sweep folder on the driver's machine, and reads them back
    for trials that need one (a distilling trial's teacher), run as a Ray actor."""

    def __init__(self, folder: str) -> None:
        self.storage = Storage.open(folder)

    def put(self, rel: str, blob: bytes) -> int:
        self.storage.makedirs(rel.rpartition("/")[0])
        self.storage.write_atomic(rel, blob)
        return self.storage.size(rel)

    def get(self, rel: str) -> bytes:
        return self.storage.read_bytes(rel)
