"""Sweeps as Ray jobs: submit, watch, stop, list (thin over ``JobSubmissionClient``).

A sweep id is also the job's submission id, and the job's metadata carries the sweep's storage
(a folder or an ``s3://`` / ``gs://`` URI, never credentials), so any client that reaches the
cluster can find a sweep; this client also records it under
``$SLIMTUNE_HOME/sweeps/`` so ``slimtune results <id>`` works without asking the cluster.
"""

from __future__ import annotations

import os
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

from slimtune.cluster import _auth, _state
from slimtune.spaces import RunError, SpecError, load_spec, require_search

#: Job states after which nothing changes (Ray's JobStatus values).
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: Left out of the uploaded working dir: never needed by a sweep, often large.
EXCLUDES = [".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".hypothesis", "runs", "*.slim"]


def _address(address: str | None, record: dict[str, Any] | None = None) -> tuple[str, dict[str, Any] | None]:
    """The Jobs API address and the recorded head it belongs to (if any).

    ``--address``, else the address the sweep was submitted to, else ``RAY_ADDRESS``, else the
    head that ``cluster up`` recorded.
    """
    head = _state.read_head()
    chosen = address or (record or {}).get("address") or os.environ.get("RAY_ADDRESS") or (head or {}).get("dashboard")
    if not chosen:
        raise SpecError("address", "must name a Ray cluster", None,
                        "pass --address http://HEAD:8265, set RAY_ADDRESS, or run `slimtune cluster up`")
    chosen = chosen.rstrip("/")
    ours = head if head and head.get("dashboard", "").rstrip("/") == chosen else None
    return chosen, ours


def client(address: str | None = None, record: dict[str, Any] | None = None):
    """A connected ``JobSubmissionClient``, with the cluster's token (see :mod:`cluster._auth`)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    chosen, head = _address(address, record)
    _probe(chosen)
    try:
        return JobSubmissionClient(chosen, headers=_auth.headers((head or {}).get("token")))
    except AuthenticationError:
        raise SpecError("token", "the cluster must accept this client's token", chosen,
                        "set RAY_AUTH_TOKEN_PATH to the cluster's token file, or copy it to ~/.ray/auth_token"
                        ) from None
    except (ConnectionError, OSError, ValueError, RuntimeError) as exc:
        raise RunError(f"address {chosen}", f"the Ray dashboard (Jobs API) did not answer: {type(exc).__name__}: {exc}",
                       "is the cluster up? (`slimtune cluster up`)") from None


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes, when an http(s) address does not answer at all."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(address)
    if url.scheme not in ("http", "https"):
        return  # ray:// or host:port: Ray resolves those itself
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as exc:
        raise RunError(f"address {address}", f"the Ray dashboard (Jobs API) did not answer: {exc.strerror or exc}",
                       "is the cluster up? (`slimtune cluster up`)") from None


def storage_uri(storage: str | os.PathLike, check_local: bool = False) -> str:
    """``storage`` as it is recorded: an absolute folder, or an ``s3://`` / ``gs://`` URI without credentials.

    A URI that carries credentials or has an unknown scheme, a missing bucket, refused credentials
    or an unreachable store are one-line errors (SpecError) before anything starts. A folder is
    checked only with ``check_local`` (it may be a mount that exists on the cluster's nodes only).
    """
    from slimtune.search.storage import Storage  # pyarrow: loaded only by the commands that need it

    store = Storage.open(storage, field="storage")
    if store.local_path is None or check_local:
        store.check(field="storage")
    return store.uri


def _storage(storage: str | None, head: dict[str, Any] | None) -> str:
    """Where this job's sweeps go: ``--storage``, else the storage recorded with the cluster."""
    if storage is None:
        if head and head.get("storage"):
            return head["storage"]
        raise SpecError("storage", "is required for a cluster that `slimtune cluster up` did not start here", None,
                        "pass --storage s3://bucket/sweeps (or gs://..., or a folder mounted on every node)")
    return storage_uri(storage)


def submit(spec: str, *, address: str | None = None, storage: str | None = None,
           working_dir: str | None = None) -> dict[str, Any]:
    """Submit ``spec``'s sweep as a Ray job; returns its record (``id``, ``job_id``, ``out``, ...).

    The driver runs ``slimtune sweep <spec> --out <storage>/<id>`` on the cluster; the spec's
    folder (or ``working_dir``) travels as the job's ``working_dir``, so relative data paths
    and ``module:function`` code in it reach the driver and every trial.
    """
    spec_path = Path(spec).expanduser().resolve()
    parsed = load_spec(spec_path)  # bad spec: one line, exit 2, nothing submitted
    require_search(parsed)
    wd = Path(working_dir).expanduser().resolve() if working_dir else spec_path.parent
    if not wd.is_dir():
        raise SpecError("working_dir", "must be a folder", str(wd))
    if not spec_path.is_relative_to(wd):
        raise SpecError("working_dir", "must contain the spec", str(wd), f"the spec is {spec_path}")
    from slimtune.search.task.data import check_no_shadow

    check_no_shadow(wd)  # Ray puts the working_dir first on the path of the job's driver and workers
    chosen, head = _address(address)
    jobs = client(chosen)
    base = _storage(storage, head)
    sweep_id = f"{parsed.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    from slimtune.search.storage import Storage

    out = Storage.open(base, field="storage").child(sweep_id).uri  # a folder or a URI, never credentials
    rel = spec_path.relative_to(wd).as_posix()
    entrypoint = f"slimtune sweep {shlex.quote(rel)} --out {shlex.quote(out)}"
    meta = {"slimtune_sweep": sweep_id, "slimtune_out": out, "slimtune_spec": rel,
            "slimtune_trials": str(parsed.search.trials)}
    # Only the code travels with the job. Credentials reach the nodes from their own environment
    # (instance role, workload identity, AWS_* set where the node starts), never as runtime_env
    # env_vars: those show in the dashboard and in every client's job info.
    job_id = jobs.submit_job(entrypoint=entrypoint, submission_id=sweep_id, metadata=meta,
                             runtime_env={"working_dir": str(wd), "excludes": EXCLUDES})
    record = {"id": sweep_id, "job_id": job_id, "address": chosen, "out": out, "spec": str(spec_path),
              "trials": parsed.search.trials, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _state.write_sweep(record)
    return record


def _find(sweep_id: str, address: str | None = None):
    """(record, client) for a sweep id: this client's record, else the job's metadata on the cluster."""
    record = _state.read_sweep(sweep_id)
    jobs = client(address, record)
    if record is None:
        info = _job_info(jobs, sweep_id)
        md = info.metadata or {}
        record = {"id": sweep_id, "job_id": info.submission_id or sweep_id, "out": md.get("slimtune_out"),
                  "trials": int(md["slimtune_trials"]) if md.get("slimtune_trials") else None}
    return record, jobs


def _job_info(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except RuntimeError:  # the Jobs API answers 404 as RuntimeError
        raise SpecError("sweep", "must be a sweep id known to this client or the cluster", job_id,
                        "see `slimtune list`") from None


def progress(out: str | None, budget: int | None = None):
    """The sweep's progress (:class:`search.Progress`) from its results folder, or None when
    none is readable yet."""
    if not out:
        return None
    from slimtune.search import sweep_progress
    from slimtune.search.storage import Storage

    try:
        if not Storage.open(out).is_file("sweep.json"):
            return None
    except OSError:  # an object store that does not answer now: no progress to show, not an error
        return None

    return sweep_progress(out)


def status(sweep_id: str, address: str | None = None) -> dict[str, Any]:
    """The sweep's job status, message, and (when results exist) its trial counts."""
    record, jobs = _find(sweep_id, address)
    info = _job_info(jobs, record["job_id"])
    return {"id": sweep_id, "status": str(getattr(info.status, "value", info.status)),
            "message": info.message, "out": record.get("out"),
            "progress": progress(record.get("out"), record.get("trials"))}


def logs(sweep_id: str, address: str | None = None, follow: bool = False, write=print) -> None:
    """The driver's output so far; with ``follow``, stream it until the job ends."""
    record, jobs = _find(sweep_id, address)
    _job_info(jobs, record["job_id"])
    if not follow:
        write(jobs.get_job_logs(record["job_id"]))
        return
    import asyncio

    async def tail() -> None:
        async for chunk in jobs.tail_job_logs(record["job_id"]):
            write(chunk)

    asyncio.run(tail())


def stop(sweep_id: str, address: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Stop the sweep's driver (its trials end with it); results written so far stay readable."""
    record, jobs = _find(sweep_id, address)
    jobs.stop_job(record["job_id"])
    deadline = time.monotonic() + timeout
    while True:
        st = status(sweep_id, address)
        if st["status"] in TERMINAL or time.monotonic() > deadline:
            return st
        time.sleep(0.5)


def list_sweeps(address: str | None = None) -> list[dict[str, Any]]:
    """Every slimtune sweep the cluster knows, oldest first."""
    jobs = client(address)
    rows = []
    for info in sorted(jobs.list_jobs(), key=lambda j: j.start_time or 0):
        md = info.metadata or {}
        if "slimtune_sweep" not in md:
            continue
        trials = int(md["slimtune_trials"]) if md.get("slimtune_trials") else None
        rows.append({"id": md["slimtune_sweep"], "status": str(getattr(info.status, "value", info.status)),
                     "out": md.get("slimtune_out"), "progress": progress(md.get("slimtune_out"), trials),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((info.start_time or 0) / 1000))})
    return rows


def resolve_results_path(id_or_path: str) -> str:
    """The results folder or URI for a sweep folder, a URI or a sweep id (for ``slimtune results``).

    A path or URI (anything that exists, or holds a ``/``) is returned unchanged; a sweep id is looked
    up in this client's records, then in the job metadata of the cluster it would talk to.
    """
    s = str(id_or_path)
    if "://" in s or Path(s).expanduser().exists() or "/" in s or os.sep in s:
        return s
    record = _state.read_sweep(s)
    if record and record.get("out"):
        return record["out"]
    try:
        record, _ = _find(s)
    except SpecError:
        record = None
    if record and record.get("out"):
        return record["out"]
    raise SpecError("path", "must be a sweep folder or a sweep id from `slimtune submit`", s, "see `slimtune list`")
