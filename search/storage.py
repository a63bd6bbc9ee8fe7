"""Where a sweep lives: a local folder or an object-store URI, through one pyarrow.fs seam.

:class:`Storage` is made from a plain path, ``file://``, ``s3://`` or ``gs://`` and offers what a
sweep needs (read, atomic write, list, sizes). :meth:`Storage.check` proves, before Ray starts and
within a bounded time, that the bucket exists and the credentials are accepted.
:func:`write_local_atomic` is the one atomic write of a local file. The lock over a storage is
:class:`search.lease.Lease`.

Credentials come from the standard chains only (``AWS_*`` variables and profiles, ``AWS_ENDPOINT_URL``
for S3-compatible stores, ``GOOGLE_APPLICATION_CREDENTIALS``); a URI that carries them is refused,
so :attr:`Storage.uri` is always safe to record.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pyarrow.fs as pafs

from slimtune.spaces import SpecError
from slimtune.spaces._errors import closest

#: Seconds a connection attempt may take, attempts per request, and the hard bound on :meth:`Storage.check`.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 20.0
MAX_ATTEMPTS = 3
GCS_RETRY_LIMIT = 8.0
CHECK_DEADLINE = 30.0

SCHEMES = ("file", "s3", "gs")
#: URI query options a user may give, per scheme (none of them secret).
OPTIONS = {"s3": ("region", "endpoint_override", "scheme"), "gs": ("endpoint_override", "scheme", "project_id")}
SECRET_KEYS = ("access_key", "secret_key", "session_token", "access_token", "password", "token", "credentials")


def redact(uri: str) -> str:
    """``uri`` with any user-info and query values hidden, for error messages."""
    parts = urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if "@" in parts.netloc:
        netloc = "***@" + netloc
    query = "&".join(f"{k}=***" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


#: AWS variables Ray Tune copies from the driver's environment into every trial actor's
#: ``runtime_env`` (where the dashboard shows them): the driver hides them while Tune runs.
AWS_KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def _s3_fs(opts: dict[str, str], keys: dict[str, str] | None = None) -> pafs.FileSystem:
    endpoint = opts.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    scheme = opts.get("scheme")
    if endpoint and "://" in endpoint:  # AWS_ENDPOINT_URL is a URL; pyarrow wants host:port + scheme
        ep = urlsplit(endpoint)
        endpoint, scheme = ep.netloc, scheme or ep.scheme
    return pafs.S3FileSystem(
        region=opts.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        endpoint_override=endpoint or None, scheme=scheme or None,
        connect_timeout=CONNECT_TIMEOUT, request_timeout=REQUEST_TIMEOUT,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS), **(keys or {}))


def _gcs_fs(opts: dict[str, str]) -> pafs.FileSystem:
    return pafs.GcsFileSystem(endpoint_override=opts.get("endpoint_override"), scheme=opts.get("scheme"),
                              project_id=opts.get("project_id"),
                              retry_time_limit=timedelta(seconds=GCS_RETRY_LIMIT))


@dataclass(frozen=True)
class Storage:
    """A sweep's folder: ``root`` inside the filesystem ``fs``; ``uri`` names it without credentials.

    Paths given to the methods are relative to the root, with ``/`` separators.
    """

    uri: str
    root: str
    fs: pafs.FileSystem = field(compare=False, repr=False)

    def __reduce__(self):
        # Pickled as its URI: each process opens it with its own credential chain, so a
        # filesystem holding keys (:meth:`holding_env_keys`) never leaves this process.
        return (Storage.open, (self.uri,))

    def holding_env_keys(self) -> Storage:
        """This storage with the AWS keys of this process's environment fixed in its filesystem
        (for a driver that hides them from Ray while Tune runs); itself for anything else."""
        if not self.uri.startswith("s3://") or not os.environ.get("AWS_ACCESS_KEY_ID"):
            return self
        keys = {"access_key": os.environ["AWS_ACCESS_KEY_ID"],
                "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
                "session_token": os.environ.get("AWS_SESSION_TOKEN") or os.environ.get("AWS_SECURITY_TOKEN")}
        opts = dict(parse_qsl(urlsplit(self.uri).query))
        return Storage(uri=self.uri, root=self.root, fs=_s3_fs(opts, {k: v for k, v in keys.items() if v}))

    @classmethod
    def open(cls, where: str | os.PathLike, field: str = "out") -> Storage:
        """The storage at a plain path, ``file://``, ``s3://bucket/prefix`` or ``gs://bucket/prefix``.

        Checks the URI's form only (no network); call :meth:`check` to prove it reachable.
        """
        if isinstance(where, Storage):
            return where
        text = os.fspath(where)
        if "://" not in text:
            path = os.path.abspath(os.path.expanduser(text))
            return cls(uri=path, root=path, fs=pafs.LocalFileSystem())
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        scheme = "gs" if scheme == "gcs" else scheme
        if scheme not in SCHEMES:
            raise SpecError(field, "storage scheme must be one of file://, s3://, gs:// or a local path",
                            redact(text), "mount other stores and give their folder as a path")
        if "@" in parts.netloc or parts.password:
            raise SpecError(field, "a storage URI must not carry credentials", redact(text),
                            "remove them from the URI; set AWS_* / GOOGLE_APPLICATION_CREDENTIALS instead")
        if scheme == "file":
            if parts.netloc not in ("", "localhost") or parts.query:
                raise SpecError(field, "a file:// URI must be file:///absolute/path", redact(text))
            return cls.open(parts.path or "/", field)
        opts = dict(parse_qsl(parts.query, keep_blank_values=True))
        for key in opts:
            if key.lower() in SECRET_KEYS or "secret" in key.lower() or "key" in key.lower():
                raise SpecError(field, "a storage URI must not carry credentials", redact(text),
                                "remove them from the URI; set AWS_* / GOOGLE_APPLICATION_CREDENTIALS instead")
            if key not in OPTIONS[scheme]:
                raise SpecError(field, f"unknown {scheme}:// option {key!r} ({closest(key, OPTIONS[scheme])})",
                                redact(text))
        bucket, prefix = parts.netloc, parts.path.strip("/")
        if not bucket:
            raise SpecError(field, f"a {scheme}:// URI must name a bucket ({scheme}://bucket/prefix)", redact(text))
        fs = _s3_fs(opts) if scheme == "s3" else _gcs_fs(opts)
        root = f"{bucket}/{prefix}" if prefix else bucket
        query = f"?{urlencode(sorted(opts.items()), safe=':/')}" if opts else ""
        return cls(uri=f"{scheme}://{root}{query}", root=root, fs=fs)

    # --- where ---------------------------------------------------------------------------

    @property
    def local_path(self) -> Path | None:
        """The folder on this machine's disk, or None for an object store."""
        return Path(self.root) if isinstance(self.fs, pafs.LocalFileSystem) else None

    @property
    def bucket(self) -> str | None:
        return None if self.local_path is not None else self.root.split("/", 1)[0]

    def join(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root (for ``fs`` and pyarrow readers)."""
        rel = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    def child(self, *parts: str) -> Storage:
        """The storage of a sub-folder."""
        rel = "/".join(p.strip("/") for p in parts if p.strip("/"))
        base, _, query = self.uri.partition("?")
        uri = f"{base.rstrip('/')}/{rel}" + (f"?{query}" if query else "")
        return Storage(uri=uri, root=self.join(rel), fs=self.fs)

    # --- reading -------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        return self.fs.get_file_info(self.join(rel)).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        return self.fs.get_file_info(self.join(rel)).type == pafs.FileType.File

    def size(self, rel: str) -> int:
        """The length in bytes of the file ``rel`` (FileNotFoundError when there is none)."""
        info = self.fs.get_file_info(self.join(rel))
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(f"{self.uri_of(rel)} is not a file")
        return int(info.size)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.join(rel)) as f:
            return f.read()

    def uri_of(self, rel: str) -> str:
        base, _, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{rel.strip('/')}" + (f"?{query}" if query else "")

    # --- writing -------------------------------------------------------------------------

    def makedirs(self, rel: str = "") -> None:
        """Create the folder (a no-op on object stores, which have no folders)."""
        if self.local_path is not None:
            os.makedirs(self.join(rel), exist_ok=True)

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Write ``data`` so that readers see the old object or the new one, never half.

        Locally: a temporary file, fsync, rename. On an object store one PUT is atomic.
        """
        if self.local_path is not None:
            write_local_atomic(Path(self.join(rel)), data)
            return
        with self.fs.open_output_stream(self.join(rel)) as f:
            f.write(data)

    def delete(self, rel: str) -> None:
        """Remove the file ``rel`` if it is there."""
        try:
            self.fs.delete_file(self.join(rel))
        except FileNotFoundError:
            pass

    # --- validation ----------------------------------------------------------------------

    def check(self, field: str = "out", deadline: float = CHECK_DEADLINE) -> Storage:
        """Prove the storage usable before anything runs: one-line SpecError otherwise, within ``deadline`` s.

        Local: the folder's nearest existing ancestor is a writable folder. Object store: the
        bucket exists and the credentials are accepted (pyarrow checks neither at construction).
        """
        if self.local_path is not None:
            _check_local(self.local_path, field)
            return self
        box: dict[str, Any] = {}

        def probe() -> None:
            try:
                box["info"] = self.fs.get_file_info(self.bucket)
            except BaseException as exc:  # noqa: BLE001 - reported to the caller's thread below
                box["error"] = exc

        worker = threading.Thread(target=probe, daemon=True, name="storage-check")
        worker.start()
        worker.join(deadline)
        if worker.is_alive():
            raise SpecError(field, f"storage must answer within {deadline:.0f} s", self.uri,
                            "check the network, the endpoint (AWS_ENDPOINT_URL) and the region")
        if "error" in box:
            raise _access_error(field, self.uri, box["error"])
        if box["info"].type == pafs.FileType.NotFound:
            raise SpecError(field, f"bucket {self.bucket!r} must exist", self.uri,
                            "create it first, or fix the bucket name")
        return self


def _check_local(path: Path, field: str) -> None:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise SpecError(field, "must be a folder (or a path inside a folder)", str(path), f"{probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise SpecError(field, "folder must be writable", str(path), f"no write permission on {probe}")


def _access_error(field: str, uri: str, exc: BaseException) -> SpecError:
    text = " ".join(str(exc).split())
    if any(s in text for s in ("ACCESS_DENIED", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                               "PERMISSION_DENIED", "UNAUTHENTICATED")):
        return SpecError(field, "the storage must accept the credentials", uri,
                         f"refused ({text[:200]}); check AWS_* / GOOGLE_APPLICATION_CREDENTIALS")
    if any(s in text for s in ("OAuth2 access token", "Unable to locate credentials", "No credentials")):
        return SpecError(field, "credentials for the storage must be found", uri,
                         f"none found ({text[:200]}); set AWS_* / GOOGLE_APPLICATION_CREDENTIALS")
    return SpecError(field, "storage must be reachable", uri, f"{type(exc).__name__}: {text[:240]}")


def write_local_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to the local ``path`` through a temporary file, fsync and rename (mode 0o666 & ~umask)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
